"""What is being served: describing it, and hot-reloading it (loading at start-up is server/loading.py's).

Reload (POST /admin/reload, or --watch on manifest change) is transactional, in two phases:
  1. off the serving path (a worker thread): read the manifest, validate the base fingerprint, every stack file
     (sha256, names, shapes, dtype = the bundle's stack dtype, finite values) and the router (which must score
     every trained domain of the manifest; imported ones may wait for `train --router-only`), all through
     brainstacks.bundle; then build the new packed tensors to the side (StackedModel.prepare) and move the router
     to the device. Nothing serving is touched, so any
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
import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from server.engine import Engine
from server.genrequest import EngineStoppedError, EngineTimeoutError
from server.loading import content_hash, router_meta
from server.metrics import Metrics
from server.runner import ModelRunner
from server.settings import ServerSettings

log = logging.getLogger("brainstacks.server")
T = TypeVar("T")


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
        self._fp: dict[str, Any] | None = None  # the served model's own fingerprint, when the bundle gave none
        # the manifest content the served version came from (--watch's starting point; taken before warm-up)
        self.seen_manifest = runner.served.content_hash or content_hash(self.bundle_dir)

    @property
    def bundle_dir(self) -> Path | None:
        return Path(self.runner.bundle_dir) if self.runner.bundle_dir else None

    @property
    def bundle_root(self) -> Path | None:
        """The directory the server was given: a single-directory bundle, or a versioned one whose CURRENT pointer
        names the version to load (brainstacks/versions.py)."""
        root = self.runner.served.root or self.runner.bundle_dir
        return Path(root) if root else None

    def source_dir(self) -> Path | None:
        """Where the next version is read: the version CURRENT names (a versioned bundle), else the directory
        itself. Raises BundleError on a malformed pointer."""
        from brainstacks.bundle import resolve_bundle_dir

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
        metas = r.served.stack_meta
        for d in m.domains:
            stacks = []
            for i, rel in enumerate(d.stacks):
                meta = metas.get(d.name, [])
                meta = meta[i] if i < len(meta) else {}
                stacks.append({"path": rel, "bytes": meta.get("bytes"), "sha256": meta.get("sha256"),
                               "parameters": meta.get("parameters"), "dtype": meta.get("dtype")})
            routed = r.router is not None and d.name in r.router_domains
            out["domains"].append({"name": d.name, "stacks": stacks, "routed": routed,
                                   "kind": (metas.get(d.name) or [{}])[0].get("kind", "moe-lora")})
            out["stacks_loaded"] += len(stacks)
        if m.router is not None:
            out["router"] = {"path": m.router, "domains": r.router_domains, **(r.served.router_meta or {})}
            # the serving policy: weights <= min_weight are cut to 0, then floors
            cfg = getattr(r.router, "config", None)
            if cfg is not None:
                out["router"].update(min_weight=cfg.min_weight, floors=dict(cfg.floors or {}))
        return out

    def manifest_stamp(self) -> str | None:
        """The bundle's content hash (content_hash), for --watch: content, not size/mtime or version alone. A
        versioned bundle is hashed at the version its pointer names, so switching CURRENT counts as a change."""
        from brainstacks.errors import BundleError

        try:
            return content_hash(self.source_dir())
        except BundleError:
            return None

    # ------------------------------------------------------------------ reload
    def _validate(self) -> tuple[Any, dict, Any, Any, Any, Path, str | None] | ReloadResult:
        """Phase 1 (worker thread): everything read, checked and packed to the side; returns what phase 2 swaps in,
        or a refusal. Nothing that serves is modified here."""
        from brainstacks.bundle import load_router, read_manifest, read_stacks, unrouted_domains
        from brainstacks.errors import BrainstacksError

        r = self.runner
        bdir = self.bundle_dir
        try:
            bdir = self.source_dir()
            stamp = content_hash(bdir)  # before reading: what this version's description records
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
                router = load_router(bdir, m.router, fp.get("hidden_size"), m.domain_names, unrouted_domains(stacks))
                rmeta = router_meta(bdir, m)
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
        return m, stacks, prepared, router, rmeta, bdir, stamp

    def _fingerprint(self) -> dict[str, Any]:
        from brainstacks.base import compute_fingerprint

        if self.runner.served.fingerprint:
            return self.runner.served.fingerprint
        if self._fp is None:
            with self._thread_lock:
                # the served model's own fingerprint (computed once; the stacked wrappers report their base layers)
                self._fp = compute_fingerprint(self.runner.model)
        return self._fp

    def _install(self, m: Any, stacks: dict, prepared: Any, router: Any, rmeta: dict | None,
                 bdir: Path | None = None, stamp: str | None = None) -> ReloadResult:
        """Phase 2 (model thread, between steps): pointer assignments only."""
        r = self.runner
        before = set(r.domains)
        served = dataclasses.replace(
            r.served, dir=str(bdir) if bdir is not None else r.served.dir, manifest=m,
            stack_meta={name: [meta for _, meta in items] for name, items in stacks.items()}, router_meta=rmeta,
            content_hash=stamp)
        r.stacked.commit(prepared)
        r.stacks_changed()  # the fused decoder re-reads the packed stacks; batches rebuild their routing
        r.router = router
        r.served = served  # the new version's description, in one assignment
        after = set(r.domains)
        return ReloadResult("ok", m.version, added=sorted(after - before), removed=sorted(before - after))

    async def reload(self) -> ReloadResult:
        if self.bundle_dir is None or self.runner.stacked is None:
            res = ReloadResult("refused", self.runner.bundle_version,
                               ["no bundle is being served (started with --base only)"])
            self._record(res)
            return res
        async with self._lock:
            return await self._reload_locked()

    async def _reload_locked(self) -> ReloadResult:
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

    async def write_version(self, write: Callable[[Path], T]) -> tuple[T, ReloadResult | None]:
        """A runtime change of the served bundle (POST/DELETE /admin/stacks): `write(root)` writes a new bundle
        version on a worker thread (brainstacks/adapters.py: validated before its first write), then that version is
        reloaded as POST /admin/reload would, under the same lock, so changes and reloads never interleave. `write`'s
        errors propagate, with nothing on disk or in the server changed."""
        async with self._lock:
            out = await asyncio.to_thread(write, self.bundle_root)
            return out, await self._reload_locked()

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
    """--watch: reload whenever the bundle's content (content_hash) changes. The starting point is the content the
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
