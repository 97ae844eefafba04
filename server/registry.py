"""What is being served: loading the bundle (or a bare base) into a runner, describing it, and hot-reloading it.

Reload (POST /admin/reload, or --watch on manifest change) is transactional, in two phases:
  1. off the serving path (a worker thread): read the manifest, validate the base fingerprint, every stack file
     (sha256, names, shapes, dtype = the bundle's stack dtype, finite values) and the router (which must score
     exactly the manifest's domains, in order), all through brainstacks.bundle; then build the new packed tensors
     to the side (StackedModel.prepare) and move the router to the device. Nothing serving is touched, so any
     failure here (an out-of-memory error while packing too) refuses the whole version, and the old one keeps
     serving bit-identical; the HTTP answer is 409 with the reasons and `brainstacks_reloads{result="refused"}`
     counts it;
  2. on the model thread, between decode steps (Engine.call_async, bounded by engine_call_timeout so a stuck engine
     cannot hold the reload lock forever): a pointer exchange (StackedModel.commit, the router, the version).
     Running rows keep their {domain: weight}; a domain they never named weighs 0 for them.
Only paths inside the bundle directory are ever read (brainstacks.bundle.safe_path refuses anything else).
A versioned bundle (BUNDLE/CURRENT -> versions/<n>, brainstacks/versions.py) is read at the version its pointer
names, at start and on every reload, so a server given BUNDLE follows the pointer.

--watch compares a content hash (manifest.json plus the stack.json and router.json files it names, which record
their tensors' sha256; snapshot taken when the served version was read, before warm-up), so it notices any rewrite.
A change is reloaded once it has settled (the same content on two checks in a row), and a refused version is tried
again as soon as that content changes again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.engine import Engine
from server.genrequest import EngineStoppedError, EngineTimeoutError
from server.metrics import Metrics
from server.runner import ModelRunner
from server.settings import ServerSettings

log = logging.getLogger("brainstacks.server")


def _device(settings: ServerSettings) -> str:
    if settings.device != "auto":
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def serve_dtype(settings: ServerSettings) -> str:
    """The compute dtype `--dtype` names; auto: bfloat16 on CUDA (half the bytes per weight read, tensor cores),
    float32 on CPU (where the fused path's small calls run in float32 anyway)."""
    if settings.dtype != "auto":
        return settings.dtype
    return "bfloat16" if _device(settings) == "cuda" else "float32"


def _dense_prefill(settings: ServerSettings, sm) -> int:
    """--dense-prefill: dense copies of the 4-bit base projections for multi-token calls; the bytes they take."""
    from brainstacks.dense_base import attach_dense_copies
    from brainstacks.stacks import cpu_has_fast_bf16

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
    from brainstacks.versions import resolve_bundle_dir

    root = bundle
    bundle = resolve_bundle_dir(root)  # a versioned bundle: the version BUNDLE/CURRENT names (brainstacks/versions.py)
    seen = manifest_sha256(bundle)  # before loading: a manifest replaced meanwhile is noticed by --watch
    b = load_bundle(bundle, base=settings.base, quantize=settings.quantize, dtype=serve_dtype(settings),
                    device=_device(settings))
    runner = ModelRunner(b.base.model, b.base.tokenizer, stacked=b.stacked, router=b.router,
                       bundle_version=b.manifest.version, bundle_dir=str(b.bundle_dir), manifest=b.manifest,
                       fingerprint=b.base.fingerprint)
    runner.stack_meta = b.stack_meta
    runner.dense_bytes = _dense_prefill(settings, b.stacked)
    runner.route_tokens = settings.router_tokens
    runner.router_meta = _router_meta(b.bundle_dir, b.manifest)
    runner.manifest_sha256 = seen
    runner.bundle_root = str(Path(root).resolve())  # where reloads look for the next version (following CURRENT)
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


def manifest_sha256(bundle_dir: Path | str | None) -> str | None:
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


def _router_meta(bundle_dir: Path, manifest: Any) -> dict[str, Any] | None:
    """router.json's recorded sha256 (load_router verified the file against it) and the file size."""
    if manifest.router is None:
        return None
    from brainstacks.bundle import ROUTER_META, ROUTER_TENSORS, safe_path

    d = safe_path(bundle_dir, manifest.router)
    meta = json.loads((d / ROUTER_META).read_text(encoding="utf-8"))
    return {"sha256": meta.get("sha256"), "bytes": (d / ROUTER_TENSORS).stat().st_size}


@dataclass
class ReloadResult:
    result: str  # ok | unchanged | refused
    bundle_version: int
    reasons: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class Registry:
    """Describes and reloads the served bundle. One reload at a time."""

    def __init__(self, runner: ModelRunner, engine: Engine, metrics: Metrics | None = None,
                 call_timeout: float = ServerSettings.model_fields["engine_call_timeout"].default):
        self.runner = runner
        self.engine = engine
        self.metrics = metrics
        self.call_timeout = call_timeout
        self._lock = asyncio.Lock()
        self._thread_lock = threading.Lock()
        self.last_reload: ReloadResult | None = None
        # the manifest content the served version came from (--watch's starting point; taken before warm-up)
        self.seen_manifest = getattr(runner, "manifest_sha256", None) or manifest_sha256(self.bundle_dir)

    @property
    def bundle_dir(self) -> Path | None:
        return Path(self.runner.bundle_dir) if self.runner.bundle_dir else None

    @property
    def bundle_root(self) -> Path | None:
        """The directory the server was given: a single-directory bundle, or a versioned one whose CURRENT pointer
        names the version to load (brainstacks/versions.py)."""
        root = getattr(self.runner, "bundle_root", None) or self.runner.bundle_dir
        return Path(root) if root else None

    def source_dir(self) -> Path | None:
        """Where the next version is read: the version CURRENT names (a versioned bundle), else the directory
        itself. Raises BundleError on a malformed pointer."""
        from brainstacks.versions import resolve_bundle_dir

        root = self.bundle_root
        return resolve_bundle_dir(root) if root is not None else None

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """Domains, stacks, sizes and content hashes of what is being served (GET /admin/stacks).

        Hashes are those verified when the version was loaded (not re-read from disk), so they describe the weights
        in memory even while a writer is preparing the next version next to them.
        """
        r = self.runner
        m = r.manifest
        out: dict[str, Any] = {"object": "bundle", "bundle_dir": str(self.bundle_dir) if self.bundle_dir else None,
                               "bundle_version": r.bundle_version, "domains": [], "router": None, "stacks_loaded": 0}
        if m is None:
            return out
        metas = getattr(r, "stack_meta", None) or {}
        for d in m.domains:
            stacks = []
            for i, rel in enumerate(d.stacks):
                meta = metas.get(d.name, [])
                meta = meta[i] if i < len(meta) else {}
                stacks.append({"path": rel, "bytes": meta.get("bytes"), "sha256": meta.get("sha256"),
                               "parameters": meta.get("parameters"), "dtype": meta.get("dtype")})
            out["domains"].append({"name": d.name, "stacks": stacks})
            out["stacks_loaded"] += len(stacks)
        if m.router is not None:
            out["router"] = {"path": m.router, "domains": r.router_domains, **(getattr(r, "router_meta", None) or {})}
            # the serving policy: weights <= min_weight are cut to 0, then floors
            cfg = getattr(r.router, "config", None)
            if cfg is not None:
                out["router"].update(min_weight=cfg.min_weight, floors=dict(cfg.floors or {}))
        return out

    def manifest_stamp(self) -> str | None:
        """The bundle's content hash (manifest_sha256), for --watch: content, not size/mtime or version alone. A
        versioned bundle is hashed at the version its pointer names, so switching CURRENT counts as a change."""
        from brainstacks.errors import BundleError

        try:
            return manifest_sha256(self.source_dir())
        except BundleError:
            return None

    # ------------------------------------------------------------------ reload
    def _validate(self) -> tuple[Any, dict, Any, Any, Any, Path] | ReloadResult:
        """Phase 1 (worker thread): everything read, checked and packed to the side; returns what phase 2 swaps in,
        or a refusal. Nothing that serves is modified here."""
        from brainstacks.bundle import load_router, read_manifest, read_stacks
        from brainstacks.errors import BrainstacksError

        r = self.runner
        bdir = self.bundle_dir
        try:
            bdir = self.source_dir()
            m = read_manifest(bdir)
            if m.version == r.bundle_version:
                return ReloadResult("unchanged", r.bundle_version)
            if m.version < r.bundle_version:
                raise_reason = (f"{bdir / 'manifest.json'}: version {m.version} is older than the served "
                                f"{r.bundle_version}")
                return ReloadResult("refused", r.bundle_version, [raise_reason])
            if r.manifest is not None and m.stack_config != r.manifest.stack_config:
                return ReloadResult("refused", r.bundle_version, [
                    f"{bdir / 'manifest.json'}: stack_config differs from the served bundle's; restart to change it"])
            fp = self._fingerprint()
            stacks = read_stacks(bdir, m, fp)
            router, rmeta = None, None
            if m.router is not None:
                router = load_router(bdir, m.router, fp.get("hidden_size"), m.domain_names)
                rmeta = _router_meta(bdir, m)
        except BrainstacksError as e:
            reasons = list(getattr(e, "reasons", None) or [str(e)])
            return ReloadResult("refused", r.bundle_version, reasons)
        except (OSError, ValueError) as e:
            return ReloadResult("refused", r.bundle_version, [f"{bdir}: {type(e).__name__}: {e}"])
        try:  # the new packed tensors, built next to the serving ones (memory permitting)
            prepared = r.stacked.prepare({name: [t for t, _ in items] for name, items in stacks.items()})
            if router is not None:
                router = router.to(r.device).eval()
        except Exception as e:  # out of memory, or a bug: the serving version is untouched
            log.exception("packing the new stacks failed")
            return ReloadResult("refused", r.bundle_version,
                                [f"{bdir / 'manifest.json'}: version {m.version}: packing the stacks failed: "
                                 f"{type(e).__name__}: {e}"])
        return m, stacks, prepared, router, rmeta, bdir

    def _fingerprint(self) -> dict[str, Any]:
        from brainstacks.base import compute_fingerprint

        if getattr(self.runner, "fingerprint", None):
            return self.runner.fingerprint
        if getattr(self, "_fp", None) is None:
            with self._thread_lock:
                # the served model's own fingerprint (computed once; the stacked wrappers report their base layers)
                self._fp = compute_fingerprint(self.runner.model)
        return self._fp

    def _install(self, m: Any, stacks: dict, prepared: Any, router: Any, rmeta: dict | None,
                 bdir: Path | None = None) -> ReloadResult:
        """Phase 2 (model thread, between steps): pointer assignments only."""
        r = self.runner
        if bdir is not None:
            r.bundle_dir = str(bdir)  # a versioned bundle: the version directory now served
        before = set(r.domains)
        r.stacked.commit(prepared)
        r.stacks_changed()  # the fused decoder re-reads the packed stacks; batches rebuild their routing
        r.router = router
        r.manifest = m
        r.stack_meta = {name: [meta for _, meta in items] for name, items in stacks.items()}
        r.router_meta = rmeta
        r.bundle_version = m.version
        after = set(r.domains)
        return ReloadResult("ok", m.version, added=sorted(after - before), removed=sorted(before - after))

    async def reload(self) -> ReloadResult:
        if self.bundle_dir is None or self.runner.stacked is None:
            res = ReloadResult("refused", self.runner.bundle_version,
                               ["no bundle is being served (started with --base only)"])
            self._record(res)
            return res
        async with self._lock:
            checked = await asyncio.to_thread(self._validate)
            if isinstance(checked, ReloadResult):
                res = checked
            else:
                try:
                    res = await self.engine.call_async(lambda: self._install(*checked), self.call_timeout)
                except (EngineTimeoutError, EngineStoppedError) as e:
                    res = ReloadResult("refused", self.runner.bundle_version, [f"the swap did not run: {e}"])
            self._record(res)
            return res

    def _record(self, res: ReloadResult) -> None:
        self.last_reload = res
        if res.result == "refused":
            log.warning("reload refused: %s", "; ".join(res.reasons))
        elif res.result == "ok":
            log.info("reloaded bundle version %d (added %s, removed %s)", res.bundle_version, res.added, res.removed)
        if self.metrics is not None:
            self.metrics.reloads.labels(result=res.result).inc()
            self.update_gauges()

    def update_gauges(self) -> None:
        if self.metrics is None:
            return
        r = self.runner
        self.metrics.bundle_version.set(r.bundle_version)
        self.metrics.domains_loaded.set(len(r.domains))
        n = len(r.stacked.stacks) if r.stacked is not None else 0
        self.metrics.stacks_loaded.set(n)


async def watch(registry: Registry, interval: float, stop: asyncio.Event) -> None:
    """--watch: reload whenever the bundle's content (manifest_sha256) changes. The starting point is the content the
    served version was read from. A change is acted on once it has settled, i.e. the same new content is seen on two
    checks in a row (one interval apart): a writer that rewrites several named files in place (a stack, then the
    router, then the manifest) is not caught half-way and refused for a state it never meant to publish. A refused
    version is retried when the content changes again."""
    last = registry.seen_manifest
    pending = None  # a new content seen once, waiting to be seen again unchanged
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
            return
        except asyncio.TimeoutError:
            pass
        stamp = await asyncio.to_thread(registry.manifest_stamp)
        if stamp is None or stamp == last:
            pending = None
            continue
        if stamp != pending:
            pending = stamp  # changed since the last check: wait one more interval for the writer to finish
            continue
        last, pending = stamp, None
        try:
            await registry.reload()
        except Exception:  # keep watching whatever happened
            log.exception("watch reload failed")
