"""Crash-safe training (issue 9, item 4), with real processes: `brainstacks train` locks --out; a run killed at any
point resumes to a bundle whose router covers every manifest domain; the router lives at a path of its own version;
reports are written atomically; bundle files get the umask's permissions; the loader refuses a partial router."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brainstacks.bundle import load_bundle, load_router, read_manifest
from brainstacks.errors import BundleError
from brainstacks.tiny_models import tiny_base
from tests.toy_recipes import write_toy_recipe

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(steps_per_round=4, max_rounds=1, eval_every=2)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

# A real `brainstacks train` process that SIGKILLs itself at one point of the run (no hook in the product code):
# "router": inside router training; "reports": writing the routing report (router saved, manifest not yet);
# "domain": writing the new domain's stack file.
KILLER = """
import os, signal, sys
point = sys.argv[1]
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
if point == "router":
    import training.router_train as m
    m.fit_router = die
elif point == "reports":
    import training.reports as m
    real = m.write_json
    m.write_json = lambda path, obj: die() if path.name == "routing.json" else real(path, obj)
elif point == "domain":
    import training.curriculum as m
    real_save = m.save_stack
    m.save_stack = lambda out, name, *a, **k: die() if name == "medical" else real_save(out, name, *a, **k)
from brainstacks_cli.main import main
sys.exit(main(["train", "--recipe", sys.argv[2], "--out", sys.argv[3], "--quiet", "--device", "cpu"]))
"""


def train(recipe: Path, out: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "brainstacks_cli", "train", "--recipe", str(recipe), "--out",
                           str(out), "--quiet", "--device", "cpu"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600, **kw)


UMASK = 0o027  # not the usual 022: the bundle's modes must follow it (group-readable, not world-readable)


@pytest.fixture(scope="module")
def one_domain(tmp_path_factory):
    """A bundle trained over math under umask 027 (v2: the domain, then its router), and the recipe that adds
    medical."""
    root = tmp_path_factory.mktemp("crash")
    base = tiny_base(root / "base", hidden=64, layers=2)
    out = root / "bundle"
    p = train(write_toy_recipe(root, base, ["math"], **FAST), out, preexec_fn=lambda: os.umask(UMASK))
    assert p.returncode == 0, p.stderr[-3000:]
    return root, write_toy_recipe(root, base, ["math", "medical"], **FAST), out


def kill_at(point: str, recipe: Path, out: Path) -> None:
    p = subprocess.run([sys.executable, "-c", KILLER, point, str(recipe), str(out)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr[-3000:]  # really killed, at that point
    for f in (out / "reports").glob("*.json"):
        json.loads(f.read_text())  # every report is whole (atomic writes)


def test_a_run_killed_at_any_point_resumes_to_a_router_over_every_domain(one_domain, tmp_path):
    """One bundle through three kills (mid-domain, during router training, while writing the routing report), each
    a rerun of the one before, then a rerun that completes."""
    from brainstacks_cli.main import main as cli

    root, recipe, src = one_domain
    out = tmp_path / "bundle"
    shutil.copytree(src, out)
    v1 = read_manifest(out).version

    kill_at("domain", recipe, out)  # writing medical's stack: the manifest never named the half-written file
    m = read_manifest(out)
    assert m.version == v1 and m.domain_names == ["math"]

    for point in ("router", "reports"):  # medical is in, the router over both is not: the loader refuses the version
        kill_at(point, recipe, out)
        m = read_manifest(out)
        assert m.domain_names == ["math", "medical"] and m.router == f"router/v{v1}" and m.version == v1 + 1
        with pytest.raises(BundleError, match=r"router\.json: router covers only \['math'\], missing \['medical'\]"):
            load_router(out, m.router, None, m.domain_names)
        if (out / "CURRENT").exists():  # a reader of OUT follows the pointer to the last complete version
            assert load_bundle(out, quantize="none").manifest.domain_names == ["math"]
        else:
            with pytest.raises(BundleError, match="missing"):
                load_bundle(out, quantize="none")
    assert (out / f"router/v{v1 + 2}/router.json").is_file()  # the killed run's router, named by no manifest

    stacks = {p: p.read_bytes() for p in (out / "stacks").rglob("*") if p.is_file()}
    assert cli(["train", "--recipe", str(recipe), "--out", str(out), "--quiet"]) == 0  # the rerun resumes
    m = read_manifest(out)
    lb = load_bundle(out, quantize="none")
    assert m.domain_names == ["math", "medical"] and lb.router.domains == ["math", "medical"]
    assert m.version == v1 + 2 and m.router == f"router/v{m.version}"  # the router of that version, its own path
    assert (out / f"router/v{v1}/router.json").is_file()  # the one the older manifests named, untouched
    assert all(p.read_bytes() == b for p, b in stacks.items())  # no stack retrained
    assert set(json.loads((out / "reports/forgetting.json").read_text())["routed"]["medical"]) == {"math", "medical"}


def test_a_second_train_on_the_same_out_is_refused_at_once(tmp_path):
    out = tmp_path / "bundle"
    slow = write_toy_recipe(tmp_path, tiny_base(tmp_path / "base", hidden=64, layers=2), ["math"],
                            steps_per_round=2000, max_rounds=1, eval_every=1000)
    first = subprocess.Popen([sys.executable, "-m", "brainstacks_cli", "train", "--recipe", str(slow), "--out",
                              str(out), "--quiet", "--device", "cpu"], cwd=ROOT, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / ".train.lock"
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().startswith("pid")):  # the first run holds the lock
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        t0 = time.monotonic()
        second = train(slow, out)
        assert second.returncode == 2
        assert f"another writer is writing this bundle (pid {first.pid} (brainstacks train))" in second.stderr
        assert first.poll() is None  # refused while the first still runs, without waiting for it
        assert time.monotonic() - t0 < 60
    finally:
        first.kill()
        first.wait()
    assert not (out / "manifest.json").exists()  # neither wrote a version (the first was killed mid-domain)


def test_bundle_files_get_the_umask_permissions(one_domain):
    root, recipe, out = one_domain
    files = [f for f in out.rglob("*") if f.is_file()]
    names = {f.relative_to(out).as_posix() for f in files}
    assert {"manifest.json", "stacks/math/0/stack.safetensors", "stacks/math/0/stack.json",
            "reports/routing.json", "reports/train_math.json", "reports/loss_math.png"} <= names
    assert {"router/v2/router.safetensors", "router/v2/router.json"} <= names
    modes = {f.relative_to(out).as_posix(): f.stat().st_mode & 0o777 for f in files}
    assert set(modes.values()) == {0o666 & ~UMASK}, modes  # 0640, not mkstemp's or safetensors' 0600


def test_reports_are_written_atomically(tmp_path, monkeypatch):
    from brainstacks.files import write_json
    from training.reports import plot_matrix

    path = write_json(tmp_path / "r" / "a.json", {"x": 1.0})
    assert json.loads(path.read_text()) == {"x": 1.0}

    def fail(src, dst):
        raise OSError("simulated: disk full at rename")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"x": 2.0})
    with pytest.raises(OSError, match="disk full"):
        plot_matrix(tmp_path / "r" / "m.png", ["a"], ["b"], [[1.0]], "t", "x", "y")
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"x": 1.0}  # the old report, whole
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["a.json"]  # no partial file, no temp left
