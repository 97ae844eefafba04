"""Data parallel training: 2 CPU processes (torchrun, gloo) produce a bundle that loads and generates."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from brainstacks.bundle import load_bundle, read_manifest
from brainstacks.testing import tiny_base
from tests.toy_recipes import write_toy_recipe as write_recipe


def test_two_process_training(tmp_path):
    base = tiny_base(tmp_path / "base")
    recipe = write_recipe(tmp_path, base, ["math", "medical"], steps_per_round=6, max_rounds=1, eval_every=3)
    out = tmp_path / "bundle"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "brainstacks_cli",
            "train",
            "--recipe",
            str(recipe),
            "--out",
            str(out),
            "--nproc",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["domains"] == ["math", "medical"]
    m = read_manifest(out)
    assert m.router == "router/v3" and [d.name for d in m.domains] == ["math", "medical"]
    lb = load_bundle(out, quantize="nf4")
    tok = lb.base.tokenizer
    ids = tok("what is 3 plus 4 ?", return_tensors="pt").input_ids
    with lb.stacked.routing(torch.tensor([[1.0, 0.0]])):
        gen = lb.base.model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] == ids.shape[1] + 4
