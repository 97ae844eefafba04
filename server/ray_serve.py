"""Ray Serve deployment of the same FastAPI app (docs/DESIGN.md §5 `serve --ray`, docs/SCALE_OUT.md): N replicas,
one endpoint.

    brainstacks serve --ray --replicas 2 --bundle shared/bundle --port 8000     # local Ray, or --ray-address ADDR
    serve run deploy/serve_config.yaml                                          # the same app from a Serve config

Each replica is `create_app(settings)` (server/app.py) built inside the replica by `@serve.ingress`'s late-bound
builder: one Engine, one Registry, the whole bundle, exactly the single-process server (auth, limits, the playground).
The replica reports ready to Serve only once the bundle is loaded and warmed (so a restarted replica never takes
traffic it would answer 503), and `check_health` fails when the engine is dead, failing or stuck, so Serve replaces it.

Rollout: every replica reads the bundle at the version its pointer names (brainstacks/versions.py). POST /admin/reload
through the proxy lands on one replica; it asks the `Rollout` actor (server/rollout.py: a detached, named Ray actor,
one per Serve app) for a new rollout generation; every replica long-polls that actor and, on a new generation, runs
its own Registry.reload (validated to the side, swapped between decode steps; a refusal keeps the old version on
that replica) and reports the result. The answer lists each replica's result and version; 409 if any refused. A
change of the deployment's `user_config` (`{"reload": <any new value>}`, e.g. in a RayService manifest) triggers the
same reload on every replica through Serve's own `reconfigure`.

/admin/stacks answers for the replica that served it plus `replicas`: every live replica's id and bundle version.
/metrics answers every replica's Prometheus metrics, each sample labelled `replica="<id>"` (the others' as of their
last long-poll, at most `POLL_S` old). Ray's own serve metrics (ray_serve_*) are left on, on Ray's metrics port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from server.registry import ReloadResult
from server.rollout import NAMESPACE, get_rollout, rollout_actor_name
from server.settings import ServerSettings
from server.state import ServerState

log = logging.getLogger("brainstacks.server")

APP_NAME = "brainstacks"
POLL_S = 5.0  # a replica's long-poll on the Rollout actor; also how fresh the others' reported state is


# ---------------------------------------------------------------------------------------------------- replica side
class ClusterReloadResult(ReloadResult):
    """A reload across replicas: the aggregate, with each replica's own result."""

    def __init__(self, result: str, bundle_version: int, reasons: list[str], replicas: dict[str, dict],
                 added: list[str] | None = None, removed: list[str] | None = None):
        super().__init__(result, bundle_version, reasons, added or [], removed or [])
        self.replicas = replicas


def aggregate(results: dict[str, dict], bundle_version: int) -> ClusterReloadResult:
    """ok when no replica refused and one took a new version; refused (409) when any replica refused or did not
    answer; unchanged otherwise."""
    kinds = {r.get("result") for r in results.values()}
    reasons = [f"replica {rid}: {why}" for rid, r in sorted(results.items()) for why in r.get("reasons", [])]
    if kinds & {"refused", "no answer"}:
        result = "refused"
    elif "ok" in kinds:
        result = "ok"
    else:
        result = "unchanged"
    added = sorted({d for r in results.values() for d in r.get("added", [])})
    removed = sorted({d for r in results.values() for d in r.get("removed", [])})
    return ClusterReloadResult(result, bundle_version, reasons, results, added, removed)


def merge_expositions(texts: list[bytes | str]) -> bytes:
    """Several Prometheus text expositions (each replica's, already labelled) as one: one family per name."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    fams: dict[str, Any] = {}
    for t in texts:
        for f in text_string_to_metric_families(t.decode() if isinstance(t, bytes) else t):
            if f.name in fams:
                fams[f.name].samples.extend(f.samples)
            else:
                fams[f.name] = f

    class _All:
        def collect(self):
            yield from fams.values()

    reg = CollectorRegistry()
    reg.register(_All())
    return generate_latest(reg)


class ClusterView:
    """`ServerState.cluster` on a replica: what /admin/stacks, /admin/reload and /metrics answer for all replicas."""

    def __init__(self, state: ServerState, replica_id: str, rollout: Any, reload_timeout: float):
        self.state = state
        self.replica_id = replica_id
        self.rollout = rollout
        self.reload_timeout = reload_timeout
        self.seen = 0  # the last rollout generation this replica acted on

    def info(self) -> dict[str, Any]:
        r = self.state.runner
        last = self.state.registry.last_reload if self.state.registry is not None else None
        return {"replica": self.replica_id, "pid": os.getpid(),
                "bundle_version": r.bundle_version if r is not None else None,
                "bundle_dir": r.bundle_dir if r is not None else None, "ready": bool(self.state.ready),
                "last_reload": last.result if last is not None else None,
                "metrics": self.state.metrics.render().decode()}

    async def register(self, rejoin: bool = False) -> None:
        import ray

        handle = ray.get_runtime_context().current_actor
        self.seen = await self.rollout.register.remote(self.replica_id, handle, self.info(), rejoin)

    async def follow(self) -> None:
        """Long-poll the Rollout actor; on each new generation reload this replica and report."""
        while True:
            try:
                gen = await self.rollout.poll.remote(self.replica_id, self.seen, self.info(), POLL_S)
                if gen is None:  # the Rollout actor was restarted (Ray restarts it) and lost its state: join it
                    await self.register(rejoin=True)  # again (seen = 0: the next poll answers any rollout since the
                    await self.state.registry.reload()  # restart), and catch up on one lost with the old actor
                    continue
                if gen > self.seen:
                    self.seen = gen
                    res = await self.state.registry.reload()
                    await self.rollout.report.remote(self.replica_id, gen, {
                        "result": res.result, "bundle_version": res.bundle_version, "reasons": res.reasons,
                        "added": res.added, "removed": res.removed}, self.info())
            except asyncio.CancelledError:
                raise
            except Exception:  # the actor restarting, a transient Ray error: keep following
                log.exception("replica %s: rollout poll failed", self.replica_id)
                await asyncio.sleep(1.0)

    async def _snapshot(self) -> dict[str, dict]:
        """The other replicas' last reports; {} while the Rollout actor is unreachable (restarting): /admin/stacks
        and /metrics then answer for this replica alone rather than failing."""
        try:
            return await asyncio.wait_for(self.rollout.snapshot.remote(), 15.0)
        except Exception as e:  # noqa: BLE001 - RayActorError, timeout
            log.warning("replica %s: rollout actor unreachable (%s); answering for this replica only",
                        self.replica_id, type(e).__name__)
            return {}

    async def reload(self) -> ClusterReloadResult:
        rv = self.state.runner.bundle_version
        for attempt in range(5):  # the Rollout actor may be restarting (Ray restarts it within seconds)
            try:
                if not await self.rollout.known.remote(self.replica_id):  # restarted: this replica at least
                    await self.register(rejoin=True)
                gen = await self.rollout.request.remote()
                break
            except Exception as e:  # noqa: BLE001 - RayActorError while it restarts
                if attempt == 4:
                    return ClusterReloadResult("refused", rv, [f"the rollout actor is unreachable: {e}"], {})
                await asyncio.sleep(1.0)
        results = await self.rollout.results.remote(gen, self.reload_timeout)
        return aggregate(results, self.state.runner.bundle_version)

    async def describe(self, local: dict) -> dict:
        snap = await self._snapshot()
        snap[self.replica_id] = self.info()
        local["replica"] = self.replica_id
        local["replicas"] = [{k: v for k, v in info.items() if k != "metrics"} for _, info in sorted(snap.items())]
        return local

    async def metrics(self, own: bytes) -> bytes:
        snap = await self._snapshot()
        others = [info["metrics"] for rid, info in snap.items() if rid != self.replica_id and info.get("metrics")]
        return merge_expositions([own, *others])


class BrainstacksReplica:
    """One Serve replica: the app of server/app.py with its own engine (wrapped by `@serve.ingress` in build())."""

    def __init__(self, settings: dict[str, Any], app_name: str = APP_NAME):
        self.settings = ServerSettings(**settings)
        self.app_name = app_name
        self.state: ServerState | None = None
        self.reload_token: Any = None

    def __serve_build_asgi_app__(self):
        from ray import serve

        from server.app import create_app

        rid = serve.get_replica_context().replica_id.unique_id
        app = create_app(self.settings)
        state = self.state = app.state.bs
        state.metrics.label_all({"replica": rid})
        s = self.settings
        cluster = ClusterView(state, rid, get_rollout(self.app_name),
                              reload_timeout=s.engine_call_timeout + s.request_timeout / 10 + 30)
        inner = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(a):
            async with inner(a) as value:
                # ready for Serve only once loaded and warmed: a (re)started replica takes no traffic before
                await asyncio.to_thread(state.loaded.wait)
                if state.load_error:
                    raise RuntimeError(f"replica {rid}: cannot serve: {state.load_error}")
                await cluster.register()
                state.cluster = cluster
                follower = asyncio.create_task(cluster.follow())
                log.info("replica %s ready: bundle version %d", rid, state.runner.bundle_version)
                try:
                    yield value
                finally:
                    follower.cancel()
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await follower
                    with contextlib.suppress(Exception):
                        await cluster.rollout.unregister.remote(rid)

        app.router.lifespan_context = lifespan
        return app

    async def check_health(self) -> None:
        """Serve's health check: fails when loading failed or the engine is dead, failing or stuck."""
        st = self.state
        if st is None:
            return
        if st.load_error:
            raise RuntimeError(st.load_error)
        if st.ready and st.engine is not None:
            h = st.engine.health()
            if not h["ready"]:
                raise RuntimeError(f"engine not healthy: {h['reason']}")

    async def reconfigure(self, user_config: dict | None) -> None:
        """Serve calls this on every replica when the deployment's user_config changes (e.g. `{"reload": X}` with a
        new X), and once at start: each call reloads what the pointer names ("unchanged" when it is the version
        served, so the call at start costs a manifest read)."""
        self.reload_token = (user_config or {}).get("reload")
        if self.state is None or self.state.registry is None:
            return
        res = await self.state.registry.reload()
        log.info("reconfigure %r: %s (version %d)", self.reload_token, res.result, res.bundle_version)


# ---------------------------------------------------------------------------------------------------- building
def replica_settings(settings: ServerSettings) -> dict[str, Any]:
    """The settings each replica builds its app from: torch threads sized to the replica's CPUs unless set."""
    d = settings.model_dump()
    if "threads" not in settings.model_fields_set:  # neither --threads nor BRAINSTACKS_THREADS: the replica's
        d["threads"] = max(1, int(settings.ray_num_cpus))  # reserved CPUs are its own, so one thread per CPU
    d["watch"] = settings.watch  # each replica follows the pointer itself
    return d


def deployment_options(settings: ServerSettings, user_config: dict | None = None) -> dict[str, Any]:
    s = settings
    opts: dict[str, Any] = {
        "name": "Brainstacks",
        "ray_actor_options": {"num_cpus": s.ray_num_cpus, "num_gpus": s.ray_num_gpus},
        "max_ongoing_requests": s.ray_max_ongoing_requests,
        "graceful_shutdown_timeout_s": s.drain_timeout + 5,
        "health_check_period_s": 5.0,
        "health_check_timeout_s": max(30.0, s.ready_stuck_seconds),
        "max_constructor_retry_count": 3,  # a bundle that cannot load fails the deployment instead of looping
    }
    if s.ray_max_replicas > 0:
        if not s.ray_min_replicas <= s.replicas <= s.ray_max_replicas:
            from brainstacks.errors import ConfigError

            raise ConfigError(f"autoscaling needs ray_min_replicas <= replicas <= ray_max_replicas, got "
                              f"{s.ray_min_replicas} <= {s.replicas} <= {s.ray_max_replicas}")
        opts["autoscaling_config"] = {"min_replicas": s.ray_min_replicas, "max_replicas": s.ray_max_replicas,
                                      "initial_replicas": s.replicas,
                                      "target_ongoing_requests": s.ray_target_ongoing_requests}
    else:
        opts["num_replicas"] = s.replicas
    if user_config is not None:
        opts["user_config"] = user_config
    return opts


def build(settings: ServerSettings, app_name: str = APP_NAME, user_config: dict | None = None):
    """The Serve application (bind it with serve.run): the ingress deployment of BrainstacksReplica. (From Python,
    every serve.run restarts the replicas; a Serve config deployed again with only a new user_config reconfigures them
    in place.)"""
    from ray import serve

    ingress = serve.ingress()(BrainstacksReplica)
    return serve.deployment(ingress, **deployment_options(settings, user_config)).bind(replica_settings(settings),
                                                                                        app_name)


def build_app(args: dict[str, Any]):
    """Serve's application builder (`serve run server.ray_serve:build_app bundle=... replicas=2`, or import_path in
    deploy/serve_config.yaml): `args` are ServerSettings fields; BRAINSTACKS_* environment variables fill the rest."""
    args = {k.replace("-", "_"): v for k, v in (args or {}).items()}
    app_name = str(args.pop("app_name", APP_NAME))
    return build(ServerSettings(**args), app_name)


def start(settings: ServerSettings, app_name: str = APP_NAME, user_config: dict | None = None):
    """Connect to (or start) Ray, start Serve's proxy at settings.host:port, deploy, and wait until every replica
    is ready. Returns the app's DeploymentHandle."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        if settings.ray_address:
            ray.init(address=settings.ray_address, namespace=NAMESPACE)
        else:
            ray.init(address="local", namespace=NAMESPACE, include_dashboard=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    return serve.run(build(settings, app_name, user_config), name=app_name, route_prefix="/")


def stop(app_name: str = APP_NAME) -> None:
    """Delete the app and its Rollout actor (Serve and Ray themselves are left to the caller)."""
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        serve.delete(app_name)
    with contextlib.suppress(Exception):
        ray.kill(ray.get_actor(rollout_actor_name(app_name), namespace=NAMESPACE))


def serve_forever(settings: ServerSettings) -> int:
    """`brainstacks serve --ray`: deploy, serve until SIGINT/SIGTERM, then tear down what was started."""
    import signal
    import threading

    import ray
    from ray import serve

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    from brainstacks.errors import BrainstacksError, ConfigError

    try:
        try:
            start(settings)  # returns once every replica is loaded and warmed (raises if they cannot be)
        except BrainstacksError:
            raise
        except Exception as e:  # Serve's DeploymentFailed and friends: the replicas' own error is in their logs
            raise ConfigError(f"cannot serve on Ray: {type(e).__name__}: {str(e)[:2000]}") from e
        log.info("Ray Serve: %d replica(s) at http://%s:%d", settings.replicas, settings.host, settings.port)
        done.wait()
    finally:
        stop()
        if not settings.ray_address:  # a cluster we joined keeps its Serve instance (other apps may run there)
            with contextlib.suppress(Exception):
                serve.shutdown()
            ray.shutdown()
    return 0
