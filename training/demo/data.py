"""Split-safe sampling and JSONL output for the demo domains.

Every domain module exposes `sample(rng) -> dict`, one random example. `generate` draws from it with a
`random.Random` seeded by (domain, split, seed) and keeps an example only if its prompt hashes into the requested
split (80 / 10 / 10 buckets of a SHA-1 of the prompt text). The split of a prompt therefore never depends on the
seed or on how many rows are asked for: train, valid and test never share a prompt, for any seeds and sizes.
Duplicate prompts inside a split are dropped too.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from brainstacks.errors import ConfigError
from training.demo import chat_data, code_data, math_data, medical_data, reasoning_data

DOMAINS: tuple[str, ...] = ("chat", "code", "math", "medical", "reasoning")
SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Domains whose test rows keep the "answer" key (exact-answer accuracy).
ANSWER_DOMAINS: tuple[str, ...] = ("math", "medical", "reasoning")

_SAMPLERS: dict[str, Callable[[random.Random], dict]] = {
    "chat": chat_data.sample,
    "code": code_data.sample,
    "math": math_data.sample,
    "medical": medical_data.sample,
    "reasoning": reasoning_data.sample,
}

# Hash buckets (out of 100) owned by each split.
_BUCKETS: dict[str, range] = {"train": range(0, 80), "valid": range(80, 90), "test": range(90, 100)}


@dataclass
class DemoDataConfig:
    """Defaults for the demo data set: one seed and the number of rows per split (the same for every domain)."""

    seed: int = 0
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 2000, "valid": 200, "test": 200})


def prompt_key(example: Mapping) -> str:
    """The text that identifies an example for de-duplication and splitting (the prompt or first user turn)."""
    if "messages" in example:
        return "\n".join(m["content"] for m in example["messages"] if m["role"] != "assistant")
    return example["prompt"]


def split_of(key: str) -> str:
    """The split a prompt belongs to, from a stable hash of its text (independent of seeds and sizes)."""
    bucket = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:4], "big") % 100
    for split, owned in _BUCKETS.items():
        if bucket in owned:
            return split
    raise AssertionError(bucket)  # the buckets cover 0..99


def generate(domain: str, split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` distinct examples of `domain` whose prompts belong to `split`; identical for identical arguments."""
    if domain not in _SAMPLERS:
        raise ConfigError(f"unknown demo domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    if split not in _BUCKETS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if n < 0:
        raise ConfigError(f"number of examples must be >= 0, got {n}")
    sample = _SAMPLERS[domain]
    rng = random.Random(f"brainstacks-demo/{domain}/{split}/{seed}")  # str seeds hash with SHA-512: stable
    keep_answer = split == "test" and domain in ANSWER_DOMAINS
    seen: set[str] = set()
    rows: list[dict] = []
    attempts, limit = 0, 200 * n + 10_000
    while len(rows) < n:
        attempts += 1
        if attempts > limit:
            raise ConfigError(
                f"demo domain {domain!r} ran out of distinct {split} prompts after {len(rows)} of {n} examples"
            )
        example = sample(rng)
        key = prompt_key(example)
        if key in seen or split_of(key) != split:
            continue
        seen.add(key)
        if not keep_answer:
            example.pop("answer", None)
        rows.append(example)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write one JSON object per line (UTF-8, no ASCII escaping, so the files stay readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_demo_data(
    out_dir: str | Path,
    seed: int | None = None,
    sizes: Mapping[str, int] | None = None,
    domains: tuple[str, ...] = DOMAINS,
) -> dict[str, dict[str, Path]]:
    """Write `<out_dir>/<domain>/{train,valid,test}.jsonl`; returns {domain: {split: path}}.

    `seed` and `sizes` ({split: rows}) default to `DemoDataConfig`; a partial `sizes` overrides only the splits it names.
    """
    defaults = DemoDataConfig()
    seed = defaults.seed if seed is None else seed
    merged = dict(defaults.sizes)
    for split, n in (sizes or {}).items():
        if split not in _BUCKETS:
            raise ConfigError(f"sizes: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        merged[split] = int(n)
    out = Path(out_dir)
    paths: dict[str, dict[str, Path]] = {}
    for domain in domains:
        paths[domain] = {}
        for split in SPLITS:
            path = out / domain / f"{split}.jsonl"
            write_jsonl(path, generate(domain, split, merged[split], seed))
            paths[domain][split] = path
    return paths
