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
# Nothing is downloaded at run time: the base model comes from the bundle (BUNDLE/base) or a mounted --base.

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
RUN pip install --no-cache-dir /app && useradd --system --no-create-home brainstacks
USER brainstacks
EXPOSE 8000
VOLUME ["/bundle"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
ENTRYPOINT ["brainstacks", "serve"]
CMD []
