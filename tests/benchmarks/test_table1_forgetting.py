"""benchmarks.table1 and benchmarks.forgetting on a tiny random base (seconds): the reports' shape, the parameter
match of the two Table 1 methods, the lockstep curves and PNG, and the exactness of the fp32 null-space fold. The
figures on the real base are the benchmarks' own (docs/SCIENCE.md), not asserted here."""

from __future__ import annotations

import json

from benchmarks.forgetting import main as forgetting_main
from benchmarks.table1 import main as table1_main


def test_table1_tiny(tmp_path):
    out = tmp_path / "t1.json"
    assert table1_main(["--tiny", "--threads", "1", "--work", str(tmp_path), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    summary = data["results"][0]["summary"]
    sweep = data["results"][1]["sweep"]
    assert abs(summary["param_ratio"] - 1.0) <= 0.10
    assert {r["method"] for r in sweep} == {"moe 4x r16 top-2", "lora r64"} and len(sweep) == 4
    assert sum(r["best_lr"] for r in sweep) == 2  # one best learning rate per method
    curves = data["results"][2]["curves"]
    assert [c["step"] for c in curves] == [0, 2, 4]
    assert all(r["final_val"] < r["start_val"] for r in sweep)
    assert summary["wall_clock_ratio"] > 0 and out.with_suffix(".png").stat().st_size > 1000


def test_forgetting_tiny(tmp_path):
    out = tmp_path / "f.json"
    assert forgetting_main(["--tiny", "--threads", "1", "--work", str(tmp_path), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    table = data["results"][1]["table"]
    assert [(r["null_space"], r["after"]) for r in table] == [("off", "medical"), ("off", "reasoning"),
                                                              ("8 x 4", "medical"), ("8 x 4", "reasoning")]
    assert {"math", "medical", "reasoning", "forget_math", "forget_medical"} <= set(table[1])
    targets = {t["name"]: t for t in data["targets"]}
    assert targets["fold residual, frozen_dtype float32 (max over layers)"]["passed"]
    stacks = data["results"][2]["stacks"]
    assert all(s["overlap_median"] is not None for s in stacks)
