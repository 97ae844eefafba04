"""benchmarks/common.py (the docs/DESIGN.md §7 report) and the pieces of benchmarks/throughput.py that run without a
server under load: the tiny bundle it builds, the manifest bump its reloads publish, and its naive baseline server.
The benchmark itself (minutes of load) runs as `python -m benchmarks.throughput --quick`, not here.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.common import Target, benchmark_parser, format_table, report_dict, write_report


def test_target_pass_fail_and_bad_op():
    assert Target("ratio", 6.5, ">=", 6.0, "x").passed
    assert not Target("ratio", 5.9, ">=", 6.0, "x").passed
    assert Target("errors", 0.0, "<=", 0.0).passed
    assert not Target("missing", None, "<=", 1.0).passed
    assert not Target("nan", math.nan, "<=", 1.0).passed
    with pytest.raises(ValueError):
        Target("x", 1.0, "==", 1.0)


def test_report_has_design_shape_and_is_strict_json(tmp_path):
    targets = [Target("a / b", 7.25, ">=", 6.0, "x"), Target("p99 ratio", math.inf, "<=", 1.5, "x")]
    path = tmp_path / "sub" / "r.json"
    write_report(path, "demo", [{"phase": "one", "tok/s": 1.5}], targets)
    data = json.loads(path.read_text())  # strict: inf was written as null
    assert set(data) == {"benchmark", "machine", "results", "targets"}
    assert data["benchmark"] == "demo" and data["results"] == [{"phase": "one", "tok/s": 1.5}]
    assert data["machine"]["cpus_usable"] >= 1 and "python" in data["machine"]
    t0, t1 = data["targets"]
    assert {k: t0[k] for k in ("name", "measured", "op", "target", "unit")} == \
        {"name": "a / b", "measured": 7.25, "op": ">=", "target": 6.0, "unit": "x"}
    assert t0["passed"] is True and t1["measured"] is None and t1["passed"] is False
    assert report_dict("demo", [], [], machine={"m": 1})["machine"] == {"m": 1}


def test_format_table_and_parser():
    text = format_table([{"phase": "a", "tok/s": 1234.5678, "p99": None}, {"phase": "bb", "tok/s": 2.0, "p99": 0.001}])
    lines = text.splitlines()
    assert lines[0].split() == ["phase", "tok/s", "p99"] and "1,234.57" in lines[2] and "-" in lines[2]
    args = benchmark_parser("x").parse_args(["--quick", "--json", "o.json"])
    assert args.quick and args.json == "o.json"


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from benchmarks.bundles import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("bench") / "bundle")


def test_tiny_bundle_loads_and_bump_publishes_next_version(tiny_bundle):
    from benchmarks.bundles import bump_manifest
    from brainstacks.bundle import load_bundle, read_manifest

    v = read_manifest(tiny_bundle).version
    assert bump_manifest(tiny_bundle) == v + 1
    m = read_manifest(tiny_bundle)
    assert m.version == v + 1 and m.domain_names == ["math", "medical"]
    lb = load_bundle(tiny_bundle, quantize="none")  # still a valid, complete bundle
    assert lb.stacked.domains == ["math", "medical"] and lb.router is not None


def test_naive_server_generates_exactly_max_tokens_deterministically(tiny_bundle):
    from fastapi.testclient import TestClient

    from benchmarks.servers import make_naive_app

    client = TestClient(make_naive_app(str(tiny_bundle), quantize="none"))
    body = {"model": "brainstacks", "prompt": "what is two plus two", "max_tokens": 12, "temperature": 0}
    a = client.post("/v1/completions", json=body).json()
    b = client.post("/v1/completions", json=body).json()
    assert a["usage"]["completion_tokens"] == 12  # EOS is pinned low in the tiny base: full-length generations
    assert a["usage"]["prompt_tokens"] > 0
    assert a["choices"][0]["text"] == b["choices"][0]["text"]  # greedy
