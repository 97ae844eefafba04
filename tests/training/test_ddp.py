"""Data parallel training, checked (issue 13 item 5).

1. Two gloo processes (spawned here, 127.0.0.1, a free port) run the project's own step (training.boosting.
   train_round, its sharded batches, answer-token loss, average_gradients, clipping) on halves of a global batch;
   their averaged gradients at every step equal one process's on the whole batch (allclose). Without the averaging
   each rank keeps its own half's gradient and the comparison fails.
2. Ranks holding different answer-token counts: `average_gradients(params, tokens=n)` equals the global batch's
   token-mean gradient; the plain average of per-rank means does not (shown, so the check is sensitive).
3. barrier() waits on a group of its own with BRAINSTACKS_BARRIER_TIMEOUT (rank 0 saving or training the router
   must not time the others out at the default group's 30/10 minutes); NCCL selects the rank's GPU first.
4. `brainstacks train --nproc 2` (torchrun, gloo) produces a bundle that loads and generates.

The comparison turns two things off that are per-shard by design: the noisy gate's noise (each rank draws its own,
as any data-parallel MoE does) and the load-balancing loss (a product of batch means, so per shard it is not the
global batch's; aux_loss_coef = 0 here).
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from brainstacks.bundle import load_bundle, read_manifest
from brainstacks.tiny_models import tiny_base
from tests.toy_recipes import write_toy_recipe as write_recipe

WORLD, PER_RANK = 2, 4  # the global batch is WORLD * PER_RANK sequences


def _no_noise_logits(self, x):
    return F.linear(x, self.W)


def _model(base: str):
    from brainstacks.base import load_base
    from brainstacks.config import StackConfig
    from brainstacks.moe_lora import MoELoRA
    from brainstacks.stacks import StackedModel
    from training.tokenization import pad_id_of

    MoELoRA.logits = _no_noise_logits  # in the spawned ranks; the parent test uses monkeypatch
    lb = load_base(base, quantize="nf4", for_training=True)
    sm = StackedModel(lb.model, StackConfig(experts=4, top_k=2, rank=4, alpha=8, aux_loss_coef=0.0))
    sm.add_domain("math")
    return sm, lb.tokenizer, pad_id_of(lb.tokenizer)


def _data(tok, ragged: bool):
    """Toy math records: equal answer lengths, or (ragged) answers of 1..8 words, shortest first."""
    from training.data_files import Record
    from training.tokenization import DomainData, tokenize_records

    r = random.Random(0)
    recs = []
    for i in range(32):
        words = " ".join(["plus"] * (1 + i % 8)) if ragged else str(r.randint(1, 9))
        recs.append(Record(Path("<toy>"), i + 1, {"prompt": f"what is {r.randint(1, 9)} plus {r.randint(1, 9)} ?",
                                                  "completion": f"answer {words}"}))
    if ragged:
        recs.sort(key=lambda rec: len(rec.data["completion"]))
    ex = tokenize_records(tok, recs, "prompt_completion", 32)
    return DomainData("math", "prompt_completion", ex, ex[:8], recs, recs[:8])


def _round_grads(sm, data, pad, batch_size: int) -> list[list[torch.Tensor]]:
    """train_round for 3 steps; the gradients right after average_gradients at each step."""
    from training import boosting
    from training.config import TrainConfig

    captured: list[list[torch.Tensor]] = []
    real = boosting.average_gradients

    def spy(params, *a, **k):
        real(params, *a, **k)
        captured.append([p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params])

    cfg = TrainConfig(steps_per_round=3, max_rounds=1, lr=1e-2, batch_size=batch_size, seq_len=32, eval_every=3,
                      max_eval_batches=1, seed=0)
    boosting.average_gradients = spy
    try:
        boosting.train_round(sm, data, cfg, 0, pad_id=pad, progress=False)
    finally:
        boosting.average_gradients = real
    sm.discard_active()
    return captured


def _ragged_grads(sm, examples, pad, weighted: bool) -> list[torch.Tensor]:
    """One step's gradients of a random (non-zero B) stack on `examples`, averaged (token-weighted or not)."""
    from training.distributed import average_gradients
    from training.losses import answer_ce
    from training.tokenization import Collator

    torch.manual_seed(1)
    params = sm.start_stack("math")
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 0.05)
    sm.model.train()
    b = Collator(pad)(examples)
    sums, counts = answer_ce(sm.model, b["input_ids"], b["attention_mask"], b["labels"])
    (sums.sum() / counts.sum().clamp_min(1)).backward()
    average_gradients(params, tokens=counts.sum() if weighted else None)
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    sm.discard_active()
    return grads


def _rank_main(rank: int, port: int, base: str, out: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), BRAINSTACKS_BARRIER_TIMEOUT="3")
    from training import distributed

    distributed.init_from_env("cpu")
    sm, tok, pad = _model(base)
    res: dict = {"round": _round_grads(sm, _data(tok, ragged=False), pad, PER_RANK)}
    ragged = _data(tok, ragged=True).train
    mine = [ragged[rank * 8 + 2 * i] for i in range(PER_RANK)]  # rank 0: short answers, rank 1: long ones
    res["weighted"] = _ragged_grads(sm, mine, pad, weighted=True)
    res["plain"] = _ragged_grads(sm, mine, pad, weighted=False)
    res["tokens"] = sum(sum(1 for t in e.labels if t != -100) for e in mine)
    # barrier: rank 0 late by 1 s (< 3 s timeout) passes; late by 8 s times rank 1 out at about 3 s
    if rank == 0:
        time.sleep(1.0)
    distributed.barrier()
    t0 = time.perf_counter()
    if rank == 0:
        time.sleep(8.0)
    try:
        distributed.barrier()
        res["late_barrier"] = "passed"
    except Exception as e:  # noqa: BLE001 - the timeout's type differs across torch versions
        res["late_barrier"] = type(e).__name__
    res["late_wait_s"] = time.perf_counter() - t0
    torch.save(res, Path(out) / f"rank{rank}.pt")
    os._exit(0)  # the group is broken by the timeout: skip teardown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(a, b, strict=True))


def test_two_rank_gradients_equal_one_process(tmp_path, monkeypatch):
    import multiprocessing as mp

    from brainstacks.moe_lora import MoELoRA

    base = tiny_base(tmp_path / "base")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # the ranks import this module
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(base), str(tmp_path))) for r in range(WORLD)]
    for p in procs:
        p.start()
    monkeypatch.setattr(MoELoRA, "logits", _no_noise_logits)
    sm, tok, pad = _model(str(base))  # one process, meanwhile
    ref_round = _round_grads(sm, _data(tok, ragged=False), pad, WORLD * PER_RANK)
    ragged = _data(tok, ragged=True).train
    both = [ragged[r * 8 + 2 * i] for r in range(WORLD) for i in range(PER_RANK)]
    ref_ragged = _ragged_grads(sm, both, pad, weighted=False)  # the global batch's token mean
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, f"rank exited with {p.exitcode}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    assert len(ref_round) == 3 and any(g.abs().sum() > 0 for step in ref_round for g in step)
    for r in ranks:
        for step, (mine, ref) in enumerate(zip(r["round"], ref_round, strict=True)):
            assert _close(mine, ref), f"step {step + 1}: averaged gradients differ from one process's"
    assert ranks[0]["tokens"] != ranks[1]["tokens"]  # the ragged split really is uneven
    for r in ranks:
        assert _close(r["weighted"], ref_ragged)
        assert not _close(r["plain"], ref_ragged)  # the mean of per-rank means is another gradient
    # barrier timeout: the configured one, not the default group's 30 minutes
    assert ranks[1]["late_barrier"] != "passed" and 2.0 < ranks[1]["late_wait_s"] < 7.5


def test_nccl_selects_the_rank_device_before_joining(monkeypatch):
    from training import distributed

    calls: list = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **k: calls.append(("init", backend)))
    monkeypatch.setattr(distributed.dist, "new_group", lambda **k: calls.append(("wait_group", k)) or "G")
    distributed.init_from_env("cuda")
    assert calls[:2] == [("set_device", 1), ("init", "nccl")]
    assert calls[2][1]["backend"] == "gloo" and calls[2][1]["timeout"] == distributed.barrier_timeout()
    assert distributed.local_device("cuda") == "cuda:1"
    distributed._wait_group = None


def test_barrier_timeout_setting(monkeypatch):
    from training import distributed

    monkeypatch.delenv("BRAINSTACKS_BARRIER_TIMEOUT", raising=False)
    assert distributed.barrier_timeout().total_seconds() == distributed.BARRIER_TIMEOUT_S >= 6 * 3600
    monkeypatch.setenv("BRAINSTACKS_BARRIER_TIMEOUT", "90")
    assert distributed.barrier_timeout().total_seconds() == 90


def test_two_process_training(tmp_path):
    base = tiny_base(tmp_path / "base")
    recipe = write_recipe(tmp_path, base, ["math", "medical"], steps_per_round=6, max_rounds=1, eval_every=3)
    out = tmp_path / "bundle"
    proc = subprocess.run(
        [sys.executable, "-m", "brainstacks_cli", "train", "--recipe", str(recipe), "--out", str(out),
         "--nproc", "2", "--quiet"],
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
