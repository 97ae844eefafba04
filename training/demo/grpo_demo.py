"""GRPO on the real base: a stage "grpo" stack on top of the demo bundle's math SFT stack (docs/SCIENCE.md, GRPO).

    python -m training.demo.grpo_demo --threads 1 --out build/grpo_demo      # about 15 minutes of one CPU thread

SmolLM2-135M-Instruct (the demo's base, 4-bit NF4) with the shipped math stack (stacks/math/0, trained by SFT on
the math training templates) loaded and frozen; the other domains are left out, so the policy is exactly "the
model below the new stack" (base + math SFT) plus the new stack, and the reference is base + math SFT. Prompts come
from training.demo.math_data's training templates (training.demo.sampling split "train"); accuracy is measured
before and after on held-out templates (split "test", the wording no stack was trained on), greedily, scored as the
demo's evidence scores math (training.demo.answers.check_answer) and with the GRPO reward (exact_answer). Writes
OUT/grpo_math.json (config, accuracy before/after, per-step history, CPU seconds) and OUT/reward_math.png. The
shipped bundle is only read.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch

from brainstacks.base import load_base
from brainstacks.bundle import read_manifest, read_stacks
from brainstacks.config import StackConfig
from brainstacks.files import write_json
from brainstacks.stacks import StackedModel
from brainstacks.text import eos_token_ids
from training.config import GRPOConfig, TrainConfig
from training.demo.answers import check_answer
from training.demo.sampling import generate
from training.grpo import completion_texts, sample, train_grpo
from training.reports import plot_reward_curve
from training.rewards import exact_answer
from training.tokenization import prompt_text

DOMAIN = "math"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def math_rows(tok, split: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Demo math rows as GRPO records: the chat-rendered prompt (what the server renders) and the answer."""
    return [{"prompt": prompt_text(tok, r, "messages"), "answer": r["answer"], "template": r["template"]}
            for r in generate(DOMAIN, split, n, seed, completions=False)]


def accuracy(sm: StackedModel, tok, rows: list[dict[str, Any]], max_new_tokens: int, batch: int = 16
             ) -> dict[str, Any]:
    """Greedy completions of held-out rows: share right by the evidence's scorer and by the exact_answer reward."""
    eos = sorted(eos_token_ids(sm.model, tok))
    texts: list[str] = []
    for s in range(0, len(rows), batch):
        ids, _, cmask = sample(sm, tok, [r["prompt"] for r in rows[s : s + batch]], max_new_tokens, None, eos)
        texts += completion_texts(tok, ids[:, -cmask.shape[1]:], cmask)
    ev = [check_answer(DOMAIN, t, r["answer"]) for t, r in zip(texts, rows, strict=True)]
    ex = [exact_answer(t, r) for t, r in zip(texts, rows, strict=True)]
    return {"prompts": len(rows), "accuracy": sum(ev) / len(rows), "exact_answer": sum(ex) / len(rows),
            "examples": [{"answer": r["answer"], "completion": t} for r, t in zip(rows[:3], texts[:3], strict=True)]}


def main(argv: list[str] | None = None) -> int:
    from brainstacks.demo import DEMO_BUNDLE

    p = argparse.ArgumentParser(prog="python -m training.demo.grpo_demo", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=str(DEMO_BUNDLE))
    p.add_argument("--out", default="build/grpo_demo")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (not measured here)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--kl-coef", type=float, default=0.02)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--eval-prompts", type=int, default=48)
    p.add_argument("--train-prompts", type=int, default=400)
    p.add_argument("--dense-base", choices=["on", "off"], default="on",
                   help="on: a float32 copy of the 4-bit base for every call (brainstacks/dense_base.py): the same "
                        "weights bitsandbytes dequantizes in each call of a base loaded for training, done once, so "
                        "rollouts run ~2x faster at 4 bytes per base weight")
    p.add_argument("--quick", action="store_true", help="a pipeline check: 2 steps, 4 eval prompts, 32 tokens")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.eval_prompts, a.max_new_tokens, a.group_size, a.prompts_per_step = 2, 4, 32, 4, 2
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()

    bundle = Path(a.bundle)
    manifest = read_manifest(bundle)
    base = load_base(manifest.base["path"], "nf4", "float32", a.device, for_training=True)
    cfg = StackConfig.from_dict(manifest.stack_config)
    sm = StackedModel(base.model, cfg)
    stacks = read_stacks(bundle, manifest, base.fingerprint)
    sm.commit(sm.prepare({DOMAIN: [t for t, _ in stacks[DOMAIN]]}, cfg.frozen_dtype))
    sm.model.eval()
    if a.dense_base == "on":
        from brainstacks.dense_base import attach_dense_copies

        mib = attach_dense_copies(sm, torch.float32, every_call=True) / 2**20
        print(f"dense float32 copy of the 4-bit base: {mib:.0f} MiB", flush=True)
    tok = base.tokenizer
    train = math_rows(tok, "train", a.train_prompts, seed=7)
    held_out = math_rows(tok, "test", a.eval_prompts, seed=0)

    t = time.perf_counter()
    before = accuracy(sm, tok, held_out, a.max_new_tokens)
    eval_s = time.perf_counter() - t
    print(f"before: {before['accuracy']:.1%} (exact_answer {before['exact_answer']:.1%}) on {len(held_out)} "
          f"held-out prompts ({eval_s:.0f}s)", flush=True)
    g = GRPOConfig(group_size=a.group_size, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                   kl_coef=a.kl_coef, steps=a.steps, prompts_per_step=a.prompts_per_step, eval_prompts=0,
                   eval_every=10**9)
    g.validate()
    res = train_grpo(sm, DOMAIN, train, [], tok, g, TrainConfig(lr=a.lr), freeze=False,
                     log=lambda s: print(s, flush=True))
    after = accuracy(sm, tok, held_out, a.max_new_tokens)
    print(f"after: {after['accuracy']:.1%} (exact_answer {after['exact_answer']:.1%})", flush=True)
    report = {
        "command": "python -m training.demo.grpo_demo "
                   + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "bundle_version": manifest.version, "config": {**g.to_dict(), "lr": a.lr, "threads": a.threads,
                                                       "device": a.device, "train_prompts": a.train_prompts,
                                                       "dense_base": a.dense_base},
        "before": before, "after": after,
        "delta_points": (after["accuracy"] - before["accuracy"]) * 100,
        "delta_exact_answer_points": (after["exact_answer"] - before["exact_answer"]) * 100,
        "cpu_seconds": cpu_seconds() - cpu0, "wall_seconds": time.perf_counter() - wall0,
        "grpo_seconds": res.seconds, "eval_seconds_each": eval_s,
        "history": res.history, "generate_calls": res.generate_calls, "rollout_rows": res.rollout_rows,
    }
    write_json(out / "grpo_math.json", report)
    evals = [{"step": 0, "reward": before["exact_answer"]}, {"step": res.steps, "reward": after["exact_answer"]}]
    plot_reward_curve(out / "reward_math.png", f"GRPO on {DOMAIN} (SmolLM2-135M + math SFT stack)", res.history,
                      evals)
    print(json.dumps({k: report[k] for k in ("delta_points", "delta_exact_answer_points", "cpu_seconds",
                                             "wall_seconds")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
