"""The `Rollout` actor of `serve --ray` (server/ray_serve.py, docs/SCALE_OUT.md): one detached, named Ray actor per
Serve app holding the rollout generation and what each replica last reported.

POST /admin/reload on any replica asks it for a new generation; every replica long-polls it (`poll`), reloads on a
new generation and reports its result (`report`); the replica that took the request waits for every live replica's
answer (`results`). Replicas that fail DEAD_AFTER liveness pings in a row are forgotten. If Ray restarts the actor
it has lost its state: a replica's poll answers None and the replica registers again (`rejoin`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

NAMESPACE = "brainstacks"
DEAD_AFTER = 3  # failed liveness pings in a row before the Rollout actor forgets a replica


def rollout_actor_name(app_name: str) -> str:
    return f"brainstacks-rollout-{app_name}"


# ---------------------------------------------------------------------------------------------------- Rollout actor
class Rollout:
    """One per Serve app (a detached named actor): the rollout generation, and what each replica last reported."""

    def __init__(self) -> None:
        self.generation = 0
        self.changed = asyncio.Event()
        self.replicas: dict[str, dict[str, Any]] = {}  # id -> {"handle", "info", "joined", "seen"}
        self.reports: dict[int, dict[str, dict[str, Any]]] = {}  # generation -> id -> result

    async def register(self, rid: str, handle: Any, info: dict, rejoin: bool = False) -> int:
        """A replica joins. A new one loaded what the pointer names, so it owes no answer to earlier rollouts; one
        that rejoins (this actor was restarted and lost its state) owes one to every rollout since the restart, which
        it may have missed while it was away."""
        joined = 0 if rejoin else self.generation
        self.replicas[rid] = {"handle": handle, "info": info, "joined": joined, "seen": time.monotonic()}
        return joined

    async def known(self, rid: str) -> bool:
        return rid in self.replicas

    async def unregister(self, rid: str) -> None:
        self.replicas.pop(rid, None)

    async def request(self) -> int:
        """A new rollout: every replica registered before it reloads and reports."""
        self.generation += 1
        self.changed.set()
        self.changed = asyncio.Event()
        return self.generation

    async def poll(self, rid: str, seen: int, info: dict, timeout: float) -> int | None:
        """A replica's long-poll: returns the generation as soon as it is past `seen`, else after `timeout`; None
        when this actor does not know the replica (it was restarted and lost its state): the replica registers
        again."""
        if rid not in self.replicas:
            return None
        self.replicas[rid].update(info=info, seen=time.monotonic())
        if self.generation <= seen:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)
        return self.generation

    async def report(self, rid: str, generation: int, result: dict, info: dict) -> None:
        self.reports.setdefault(generation, {})[rid] = result
        if rid in self.replicas:
            self.replicas[rid].update(info=info, seen=time.monotonic())
        for g in [g for g in self.reports if g < generation - 16]:
            del self.reports[g]

    async def _alive(self, rid: str) -> bool:
        try:
            await asyncio.wait_for(self.replicas[rid]["handle"].__ray_ready__.remote(), 5.0)
            return True
        except Exception:  # noqa: BLE001 - dead, restarting or unreachable
            return False

    async def _prune(self) -> None:
        """Forget replicas that failed DEAD_AFTER pings in a row. One failed ping is not enough: a replica busy
        loading a new version (the very thing a rollout waits for) can miss the 5 s ping under CPU load, and dropping
        it then left the rollout's answer without it."""
        rids = list(self.replicas)
        alive = await asyncio.gather(*(self._alive(r) for r in rids))  # pinged together: one slow replica costs 5 s
        for rid, ok in zip(rids, alive, strict=True):
            if rid not in self.replicas:
                continue
            fails = 0 if ok else self.replicas[rid].get("fails", 0) + 1
            self.replicas[rid]["fails"] = fails
            if fails >= DEAD_AFTER:
                self.replicas.pop(rid, None)

    async def results(self, generation: int, timeout: float) -> dict[str, dict]:
        """Wait until every live replica that joined before `generation` reported it (or `timeout`); id -> result."""
        deadline = time.monotonic() + timeout
        pinged = 0.0
        while True:
            if time.monotonic() - pinged >= 1.0:  # liveness at most once a second, not on every 50 ms check
                await self._prune()
                pinged = time.monotonic()
            got = self.reports.get(generation, {})
            want = [r for r, v in self.replicas.items() if v["joined"] < generation]
            if all(r in got for r in want) or time.monotonic() > deadline:
                out = dict(got)
                for r in want:
                    out.setdefault(r, {"result": "no answer", "bundle_version": self.replicas[r]["info"].get(
                        "bundle_version"), "reasons": [f"replica {r} did not report within {timeout:.0f}s"]})
                return out
            await asyncio.sleep(0.05)

    async def snapshot(self) -> dict[str, dict]:
        """Every live replica's last reported info (id, bundle version, metrics text ...)."""
        await self._prune()
        return {rid: dict(v["info"]) for rid, v in self.replicas.items()}


def get_rollout(app_name: str) -> Any:
    """The app's Rollout actor, created on first use (detached: it outlives the replica that created it)."""
    import ray

    cls = ray.remote(num_cpus=0, max_restarts=-1)(Rollout)
    return cls.options(name=rollout_actor_name(app_name), namespace=NAMESPACE, lifetime="detached",
                       get_if_exists=True).remote()
