"""Ray Serve scale-out (server/ray_serve.py) against a local Ray on 127.0.0.1: 2 replicas x 1 CPU of a tiny bundle.

One Ray instance and one Serve app for the module (Ray's start is the expensive part); the tests run in order on the
same versioned bundle: the real openai client through Ray's HTTP proxy, /admin/stacks and /metrics per replica, a
rollout under load, a corrupt version refused everywhere, then one replica's process killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time

import httpx
import pytest

from .conftest import add_domain, build_bundle

if os.environ.get("CI"):
    import ray  # noqa: F401 - CI installs the [ray] extra: a missing Ray fails here rather than skipping
else:
    pytest.importorskip("ray", reason="Ray Serve is the optional extra: pip install -e .[ray]")

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, core_base_dir):
    import ray
    from ray import serve

    from brainstacks.versions import publish_version
    from server import ray_serve
    from server.rollout import NAMESPACE
    from server.settings import ServerSettings

    root = tmp_path_factory.mktemp("ray_bundle")
    work, shared = root / "work", root / "shared"
    build_bundle(work, core_base_dir, version=1)
    publish_version(shared, src=work)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing outside can be reached anyway
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=NAMESPACE,
             object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    port = _free_port()
    settings = ServerSettings(bundle=str(shared), quantize="none", replicas=2, ray_num_cpus=1, host="127.0.0.1",
                              port=port, max_tokens_limit=64)
    try:
        ray_serve.start(settings)
        yield {"url": f"http://127.0.0.1:{port}", "work": work, "shared": shared, "root": root, "settings": settings}
    finally:
        ray_serve.stop()
        serve.shutdown()
        ray.shutdown()


def stacks(url: str) -> dict:
    r = httpx.get(url + "/admin/stacks", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


class Load:
    """`workers` threads sending completions (every third one streamed) until stopped; counts outcomes and, per
    success, (time sent, bundle_version answered)."""

    def __init__(self, url: str, workers: int = 2):
        self.url, self.stop_ev = url, threading.Event()
        self.ok, self.failed, self.versions = 0, [], []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(workers)]

    def run(self, i: int) -> None:
        n = 0
        with httpx.Client(timeout=60) as c:
            while not self.stop_ev.is_set():
                n += 1
                started = time.monotonic()
                body = {"model": "brainstacks", "prompt": f"two plus two {i} {n}", "max_tokens": 4}
                try:
                    if n % 3 == 0:
                        with c.stream("POST", self.url + "/v1/completions", json={**body, "stream": True}) as r:
                            text = "".join(r.iter_text())
                        good = r.status_code == 200 and text.rstrip().endswith("data: [DONE]") and '"error"' not in text
                        version = None
                    else:
                        r = c.post(self.url + "/v1/completions", json=body)
                        good = r.status_code == 200
                        version = r.json()["brainstacks"]["bundle_version"] if good else None
                except httpx.HTTPError as e:
                    good, version, r = False, None, e
                with self.lock:
                    if good:
                        self.ok += 1
                        self.versions.append((started, version))  # when it was sent
                    else:
                        self.failed.append(getattr(r, "status_code", repr(r)))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=120)


def test_openai_client_through_the_proxy(cluster):
    from openai import OpenAI

    client = OpenAI(base_url=cluster["url"] + "/v1", api_key="unused", max_retries=0, timeout=60)
    out = client.completions.create(model="brainstacks", prompt="two plus two", max_tokens=5)
    assert out.choices[0].finish_reason in ("length", "stop") and out.usage.completion_tokens >= 1
    assert out.model_extra["brainstacks"]["bundle_version"] == 1
    chunks = list(client.completions.create(model="brainstacks:math", prompt="hello world", max_tokens=5, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")
    chat = client.chat.completions.create(model="brainstacks",
                                          messages=[{"role": "user", "content": "the quick brown fox"}], max_tokens=5)
    assert chat.choices[0].message.role == "assistant"
    assert chat.model_extra["brainstacks"]["bundle_version"] == 1


def test_every_replica_reports_its_version_and_metrics(cluster):
    from prometheus_client.parser import text_string_to_metric_families

    s = stacks(cluster["url"])
    ids = {r["replica"] for r in s["replicas"]}
    assert len(ids) == 2 and s["replica"] in ids
    assert all(r["bundle_version"] == 1 and r["ready"] for r in s["replicas"])
    assert all(r["bundle_dir"].endswith("versions/1") for r in s["replicas"])
    text = httpx.get(cluster["url"] + "/metrics", timeout=30).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    labelled = {smp.labels.get("replica") for smp in fams["brainstacks_bundle_version"].samples}
    assert labelled == ids  # every replica's series, each with its replica label
    assert all(smp.value == 1 for smp in fams["brainstacks_bundle_version"].samples)


def test_rollout_under_load_fails_no_request(cluster):
    from brainstacks.versions import publish_version

    url = cluster["url"]
    with Load(url) as load:
        while load.ok < 4:  # traffic flowing before the new version lands
            time.sleep(0.05)
        assert add_domain(cluster["work"], "chat", seed=5) == 2
        publish_version(cluster["shared"], src=cluster["work"])
        t0 = time.monotonic()
        r = httpx.post(url + "/admin/reload", timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["result"] == "ok" and body["added"] == ["chat"]
        assert len(body["replicas"]) == 2 and all(v["bundle_version"] == 2 for v in body["replicas"].values())
        done = time.monotonic()
        assert done - t0 < 30
        while sum(1 for t, v in load.versions if t > done and v is not None) < 6:
            time.sleep(0.05)
    assert load.failed == []
    after = [v for t, v in load.versions if t > done and v is not None]
    assert set(after) == {2}, after  # a request sent after the reload returned is answered by the new version
    assert all(r["bundle_version"] == 2 for r in stacks(url)["replicas"])


def test_corrupt_version_is_refused_by_every_replica(cluster):
    import json

    from brainstacks.bundle import resolve_bundle_dir
    from brainstacks.versions import publish_version, write_pointer

    url, shared = cluster["url"], cluster["shared"]
    bad = cluster["root"] / "bad"
    shutil.copytree(resolve_bundle_dir(shared), bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["version"] = 3
    (bad / "manifest.json").write_text(json.dumps(m))
    f = bad / m["domains"][0]["stacks"][0] / "stack.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-8:] = b"\xff" * 8
    f.write_bytes(bytes(raw))
    publish_version(shared, src=bad)
    r = httpx.post(url + "/admin/reload", timeout=120)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "bundle_refused" and len(err["replicas"]) == 2
    for v in err["replicas"].values():
        assert v["result"] == "refused" and v["bundle_version"] == 2
        assert any("corrupt or truncated" in why for why in v["reasons"])
    assert all(x["bundle_version"] == 2 for x in stacks(url)["replicas"])
    out = httpx.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 3}, timeout=60).json()
    assert out["brainstacks"]["bundle_version"] == 2
    write_pointer(shared, 2)  # the operator points CURRENT back: a replica (re)starting loads CURRENT


def test_rollout_survives_a_restart_of_the_rollout_actor(cluster):
    """Ray restarts the rollout actor with its state lost: the replicas register again and the next rollout still
    reaches both."""
    import ray

    from brainstacks.bundle import read_manifest, write_manifest
    from brainstacks.versions import publish_version
    from server import ray_serve, rollout

    url, work = cluster["url"], cluster["work"]
    actor = ray.get_actor(rollout.rollout_actor_name(ray_serve.APP_NAME), namespace=rollout.NAMESPACE)
    ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + 60
    # both registered again with the restarted actor (each polls every POLL_S seconds). Asked of the actor itself:
    # /admin/stacks always lists the replica that answers, known to the actor or not
    def known_to_actor() -> int:
        try:
            return len(ray.get(actor.snapshot.remote(), timeout=30))
        except ray.exceptions.RayError:  # still restarting
            return 0

    while known_to_actor() < 2:
        assert time.monotonic() < deadline, "replicas did not register with the restarted rollout actor"
        time.sleep(0.2)
    assert len(stacks(url)["replicas"]) == 2
    m = read_manifest(work)
    m.version = 4  # past the refused version 3, which stays published
    write_manifest(work, m)
    publish_version(cluster["shared"], src=work)
    r = httpx.post(url + "/admin/reload", timeout=120)
    assert r.status_code == 200, r.text
    assert len(r.json()["replicas"]) == 2 and all(v["bundle_version"] == 4 for v in r.json()["replicas"].values())


def test_killed_replica_is_restarted_and_requests_keep_succeeding(cluster):
    url = cluster["url"]
    before = {r["replica"]: r["pid"] for r in stacks(url)["replicas"]}
    victim, pid = next(iter(before.items()))
    with Load(url) as load:
        while load.ok < 4:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = {r["replica"] for r in stacks(url)["replicas"]}
            if victim not in now and len(now) == 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"replica {victim} was not replaced within 120 s")
        restarted = time.monotonic()
        while sum(1 for t, _ in load.versions if t > restarted) < 6:
            time.sleep(0.05)
    # only requests in flight on the killed replica may fail: at most one per load worker
    assert len(load.failed) <= 2, load.failed
    assert load.ok >= 10
    assert all(r["bundle_version"] == 4 for r in stacks(url)["replicas"])  # the new one loaded what CURRENT names


def test_deploy_files_parse_and_build():
    """deploy/serve_config.yaml and the RayService's serveConfigV2 are valid Serve configs whose app builds."""
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from server.ray_serve import build_app, deployment_options
    from server.settings import ServerSettings

    root = Path(__file__).resolve().parents[2] / "deploy"
    service = yaml.safe_load((root / "rayservice.yaml").read_text())
    for doc in (yaml.safe_load((root / "serve_config.yaml").read_text()),
                yaml.safe_load(service["spec"]["serveConfigV2"])):
        cfg = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else \
            ServeDeploySchema.parse_obj(doc)
        app = cfg.applications[0]
        assert app.import_path == "server.ray_serve:build_app"
        build_app(dict(app.args))  # every arg is a ServerSettings field within its bounds
        opts = deployment_options(ServerSettings(**app.args))
        assert opts["autoscaling_config"]["max_replicas"] == 8 and opts["ray_actor_options"]["num_gpus"] == 1


def test_serve_flags_reach_the_settings_and_deployment():
    """`brainstacks serve --ray --replicas N --ray-address ADDR` and the resource / autoscaling flags."""
    import argparse

    from brainstacks.errors import ConfigError
    from server.cli import register, settings_from_args
    from server.ray_serve import deployment_options, replica_settings

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--ray", "--replicas", "3", "--ray-address", "auto", "--ray-num-cpus", "2",
                              "--ray-num-gpus", "0.5"])
    s = settings_from_args(args)
    assert s.ray and s.replicas == 3 and s.ray_address == "auto"
    opts = deployment_options(s)
    assert opts["num_replicas"] == 3 and "autoscaling_config" not in opts
    assert opts["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.5}
    assert replica_settings(s)["threads"] == 2  # torch threads follow the CPUs reserved, unless --threads says
    pinned = settings_from_args(parser.parse_args(["serve", "--ray", "--ray-num-cpus", "2", "--threads", "1"]))
    assert replica_settings(pinned)["threads"] == 1
    auto = settings_from_args(parser.parse_args(["serve", "--ray", "--replicas", "2", "--ray-max-replicas", "6"]))
    assert deployment_options(auto)["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 6,
                                                              "initial_replicas": 2, "target_ongoing_requests": 8.0}
    bad = settings_from_args(parser.parse_args(["serve", "--ray", "--replicas", "9", "--ray-max-replicas", "4"]))
    with pytest.raises(ConfigError, match="ray_min_replicas <= replicas <= ray_max_replicas"):
        deployment_options(bad)


def test_reconfigure_reloads_what_the_pointer_names():
    """Serve's reconfigure (a new user_config, e.g. {"reload": 2} in a Serve config or RayService) runs the replica's
    transactional reload; before the app is built it does nothing."""
    import asyncio
    from types import SimpleNamespace

    from server.ray_serve import BrainstacksReplica
    from server.registry import ReloadResult

    calls = []

    class Registry:
        async def reload(self):
            calls.append(1)
            return ReloadResult("ok", 7)

    rep = BrainstacksReplica({"bundle": "/nowhere"})
    asyncio.run(rep.reconfigure({"reload": 1}))  # not built yet: nothing to reload
    assert calls == []
    rep.state = SimpleNamespace(registry=Registry())
    asyncio.run(rep.reconfigure({"reload": 2}))
    assert calls == [1] and rep.reload_token == 2
