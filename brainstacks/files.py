"""Files on disk, written safely: atomic replacement (temp file + fsync + rename, umask permissions), strict JSON
(NaN/inf as null), sha256, and validated reads of JSON objects and safetensors files (errors name the file).

    write_json(path, obj)             # the one JSON writer of bundles, training reports and benchmark reports
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from brainstacks.errors import BundleError


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread writes files
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _umask_mode() -> int:
    """The permissions a plain new file gets under the process umask (0644 under the usual 022)."""
    return 0o666 & ~_UMASK


def atomic_write(path: Path, write) -> None:
    """Write through a temp file, fsync, rename. The file ends with the umask's permissions, not mkstemp's 0600, so
    a server running as another user (a container, a service account) can read the bundle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _umask_mode())  # after writing: safetensors' save_file leaves its file 0600 too
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN/±Infinity (which JSON lacks) as None and every dict key as a string."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (json_safe, indent 2), written atomically (atomic_write); the one JSON writer of bundles, training
    reports and benchmark reports. Returns the path."""
    path = Path(path)
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"

    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, w)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; BundleError naming the file when it is missing, corrupt or not an object."""
    if not path.is_file():
        raise BundleError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: corrupt JSON: {e}") from e
    if not isinstance(data, dict):
        raise BundleError(f"{path}: must hold a JSON object")
    return data


def read_tensors(path: Path, expected_sha: Any) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file whose sha256 must equal `expected_sha` (never unpickles)."""
    if not path.is_file():
        raise BundleError(f"{path}: missing")
    if not isinstance(expected_sha, str):
        raise BundleError(f"{path}: its metadata JSON has no sha256")
    actual = sha256_file(path)
    if actual != expected_sha:
        raise BundleError(f"{path}: corrupt or truncated (sha256 {actual[:12]}… != recorded {expected_sha[:12]}…)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {n: f.get_tensor(n) for n in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers and short files
        raise BundleError(f"{path}: not a readable safetensors file: {e}") from e
