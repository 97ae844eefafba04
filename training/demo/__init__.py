"""Synthetic data for the embedded demo: five small domains, generated deterministically from a seed.

    from training.demo import DOMAINS, generate, write_demo_data, check_answer
    rows = generate("math", "test", n=50, seed=0)           # list of JSONL-ready dicts (DESIGN §5 formats)
    paths = write_demo_data("out/demo_data")                  # <out>/<domain>/{train,valid,test}.jsonl
    check_answer("math", model_completion, rows[0]["answer"])

The domains (and their §5 format): chat ("messages"), code, math, medical and reasoning ("prompt"/"completion").
Test rows of math, medical and reasoning carry an extra key "answer" (a string) for exact-answer accuracy;
loaders ignore extra keys. Texts are short because the demo base model is tiny.
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
