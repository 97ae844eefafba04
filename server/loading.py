"""Loading what `brainstacks serve` serves, at start-up: a bundle (default: the embedded demo) or a bare base, into a
ModelRunner, with the device, dtype, dense-prefill and decode-path policies the settings name; and the content hash
--watch and reloads compare (server/registry.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from brainstacks.dtypes import auto_device
from server.runner import ModelRunner
from server.served import ServedBundle
from server.settings import ServerSettings

log = logging.getLogger("brainstacks.server")


def _device(settings: ServerSettings) -> str:
    return auto_device() if settings.device == "auto" else settings.device


def serve_dtype(settings: ServerSettings) -> str:
    """The compute dtype `--dtype` names; auto: bfloat16 on CUDA (half the bytes per weight read, tensor cores),
    float32 on CPU (where the fused path's small calls run in float32 anyway)."""
    if settings.dtype != "auto":
        return settings.dtype
    return "bfloat16" if _device(settings) == "cuda" else "float32"


def _dense_prefill(settings: ServerSettings, sm) -> int:
    """--dense-prefill: dense copies of the 4-bit base projections for multi-token calls; the bytes they take."""
    from brainstacks.dense_base import attach_dense_copies
    from brainstacks.dtypes import cpu_has_fast_bf16

    on = settings.dense_prefill == "on" or (settings.dense_prefill == "auto" and sm.device.type == "cpu"
                                            and cpu_has_fast_bf16())
    if not on:
        return 0
    n = attach_dense_copies(sm)
    if n:
        log.info("dense prefill copies of the 4-bit base: %.0f MiB", n / 2**20)
    return n


def load_runner(settings: ServerSettings) -> ModelRunner:
    """Build the runner the settings describe: a bundle (default: the embedded demo), or a bare base with --base
    only."""
    if settings.bundle is None and settings.base is not None:
        from brainstacks.base import load_base

        lb = load_base(settings.base, quantize=settings.quantize, dtype=serve_dtype(settings),
                       device=_device(settings))
        return _decode_path(settings, ModelRunner(lb.model, lb.tokenizer))
    from brainstacks.bundle import load_bundle
    from brainstacks.demo import DEMO_BUNDLE

    bundle = Path(settings.bundle) if settings.bundle is not None else DEMO_BUNDLE
    if settings.bundle is None and not (bundle / "manifest.json").is_file():
        from brainstacks.errors import BundleError

        raise BundleError(f"no --bundle given and the embedded demo bundle ({bundle}) is not built: run "
                          "`brainstacks demo build`, or pass --bundle DIR (or --base DIR for a bare base)")
    from brainstacks.bundle import resolve_bundle_dir

    root = bundle
    bundle = resolve_bundle_dir(root)  # a versioned bundle: the version BUNDLE/CURRENT names (brainstacks/versions.py)
    seen = content_hash(bundle)  # before loading: a manifest replaced meanwhile is noticed by --watch
    b = load_bundle(bundle, base=settings.base, quantize=settings.quantize, dtype=serve_dtype(settings),
                    device=_device(settings))
    served = ServedBundle(dir=str(b.bundle_dir), root=str(Path(root).resolve()), manifest=b.manifest,
                          stack_meta=b.stack_meta,
                          router_meta=router_meta(b.bundle_dir, b.manifest), content_hash=seen,
                          fingerprint=b.base.fingerprint)
    runner = ModelRunner(b.base.model, b.base.tokenizer, stacked=b.stacked, router=b.router, served=served,
                         router_tokens_cap=settings.router_tokens, dense_bytes=_dense_prefill(settings, b.stacked))
    return _decode_path(settings, runner)


def _decode_path(settings: ServerSettings, runner: ModelRunner) -> ModelRunner:
    """--decode-path: build the fused decoder (brainstacks/fastpath.py) unless eager is asked for or the family
    needs it (auto: one warning line, then eager). Build and warm-up happen here, at start-up, and are logged."""
    if settings.decode_path == "eager":
        return runner
    import torch

    from brainstacks.fastpath import FusedDecoder, unsupported_reason

    why = unsupported_reason(runner.model)
    if why is not None:
        if settings.decode_path == "fused":
            from brainstacks.errors import ConfigError

            raise ConfigError(f"--decode-path fused: the fused decoder does not serve {why}; use eager or auto")
        log.warning("decode path: eager (the fused decoder does not serve %s)", why)
        return runner
    t0 = time.perf_counter()
    try:
        dec = FusedDecoder(runner.model, runner.stacked)
    except Exception as e:  # noqa: BLE001 - an unexpected layout: serve eagerly rather than not at all
        if settings.decode_path == "fused":
            raise
        log.warning("decode path: eager (building the fused decoder failed: %s: %s)", type(e).__name__, e)
        return runner
    built = time.perf_counter() - t0
    runner.use_fused(dec)
    t1 = time.perf_counter()
    kv, _ = runner.prefill([[0, 0]], runner.routing(None))
    runner.decode(torch.zeros(1, dtype=torch.long), kv, runner.routing(None))
    log.info("decode path: fused (%s kernel, %.0f MiB of dense weights; built in %.2f s, warmed up in %.2f s)",
             dec.kernel, dec.nbytes / 2**20, built, time.perf_counter() - t1)
    return runner


def content_hash(bundle_dir: Path | str | None) -> str | None:
    """What --watch compares: sha256 over manifest.json's bytes and those of every stack.json and router.json it
    names (each records the sha256 of its tensors file), so a version repaired in place (same manifest, fixed
    stack) counts as a change too. None when the manifest cannot be read."""
    if bundle_dir is None:
        return None
    from brainstacks.bundle import ROUTER_META, STACK_META, safe_path

    root = Path(bundle_dir)
    try:
        raw = (root / "manifest.json").read_bytes()
    except OSError:
        return None
    h = hashlib.sha256(raw)
    try:
        doc = json.loads(raw)
        rels = [(rel, STACK_META) for d in doc.get("domains", []) for rel in d.get("stacks", [])]
        if isinstance(doc.get("router"), str):
            rels.append((doc["router"], ROUTER_META))
    except (ValueError, AttributeError, TypeError):
        return h.hexdigest()  # not a valid manifest: its bytes are the content
    for rel, name in rels:
        try:
            h.update(b"\0" + (safe_path(root, rel) / name).read_bytes())
        except Exception:  # noqa: BLE001 - missing or escaping: the reload names the problem
            h.update(b"\0missing")
    return h.hexdigest()


def router_meta(bundle_dir: Path, manifest: Any) -> dict[str, Any] | None:
    """router.json's recorded sha256 (load_router verified the file against it) and the file size."""
    if manifest.router is None:
        return None
    from brainstacks.bundle import ROUTER_META, ROUTER_TENSORS, safe_path

    d = safe_path(bundle_dir, manifest.router)
    meta = json.loads((d / ROUTER_META).read_text(encoding="utf-8"))
    return {"sha256": meta.get("sha256"), "bytes": (d / ROUTER_TENSORS).stat().st_size}
