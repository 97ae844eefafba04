"""Synthetic data for the embedded demo: five domains, generated deterministically, with held-out templates.

    from training.demo import DOMAINS, generate, write_demo_data, check_answer
    rows = generate("math", "test", n=50, seed=0)           # chat rows from held-out templates only
    paths = write_demo_data("out/demo_data")                  # <out>/<domain>/{train,valid,test}.jsonl
    check_answer("math", model_completion, rows[0]["answer"])

Every row is a chat exchange ("messages" format) with its "template"; math, medical, reasoning and chat rows carry
"answer", code rows "tests" and "entry". Train rows come from training templates only; valid and test rows from the
held-out templates (the last phrasing of every kind): see `training.demo.data`.
"""

from __future__ import annotations

from training.demo.answers import check_answer, extract_answer
from training.demo.data import DOMAINS, SPLITS, DemoDataConfig, generate, split_of, write_demo_data

__all__ = [
    "DOMAINS",
    "SPLITS",
    "DemoDataConfig",
    "check_answer",
    "extract_answer",
    "generate",
    "split_of",
    "write_demo_data",
]
