"""Stage 3 of `brainstacks demo build` (training.demo.build): the demo's data files, written with the base's
tokenizer, and the check that the recipe's formats match them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from brainstacks.errors import ConfigError
from training.demo.router_prompts import write_router_files
from training.demo.sampling import (
    COMPLETION_SHARE,
    DOMAINS,
    MIXED_FRAMING_DOMAINS,
    SPLITS,
    DemoDataConfig,
    domain_format,
    raw_question_rows,
    split_rows,
    write_if_changed,
)


def build_data(work: Path, cfg: DemoDataConfig, tokenizer, log: Callable[[str], None],
               router_examples: int) -> dict[str, dict[str, Path]]:
    """WORK/data/<domain>/<split>.jsonl, each in its `domain_format` (the base's `tokenizer` renders the chat rows of
    the mixed-framing domains). The rows are generated every run (seconds) and a file is rewritten only when
    its content changed, so a changed generator can never leave stale data behind an unchanged stamp (and training
    refuses to resume a domain whose data changed: the stack records its data's sha256)."""
    root = work / "data"
    paths: dict[str, dict[str, Path]] = {}
    changed = []
    for domain in DOMAINS:
        paths[domain] = {}
        for split in SPLITS:
            rows = split_rows(domain, split, cfg.sizes[split], cfg.seed, tokenizer)
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            path = root / domain / f"{split}.jsonl"
            paths[domain][split] = path
            if write_if_changed(path, text):
                changed.append(f"{domain}/{split}")
    write_router_files(root / "router", cfg.router_prompts, cfg.seed)
    n_twins = round(router_examples * (1 - COMPLETION_SHARE))  # the chat rows among the router's picks
    for domain in MIXED_FRAMING_DOMAINS:
        rows = raw_question_rows(domain, n_twins, cfg.seed, cfg.sizes["train"])
        write_if_changed(root / "router" / f"{domain}_questions.jsonl",
                         "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    log(f"[demo] data: {root} ({cfg.sizes} rows per domain, {cfg.router_prompts} router-only prompts per domain, "
        f"seed {cfg.seed}); " + (f"wrote {', '.join(changed)}" if changed else "unchanged"))
    return paths


def check_formats(recipe) -> None:
    """Each demo domain's recipe format is the one its files are written in (training.demo.sampling.domain_format)."""
    for spec in recipe.domains:
        if spec.name in DOMAINS and spec.format != domain_format(spec.name, "train"):
            raise ConfigError(f"recipe domain {spec.name!r} has format {spec.format!r}; the demo writes its data as "
                              f"{domain_format(spec.name, 'train')!r}")


def load_tokenizer(base_dir: Path):
    """The tokenizer of the (converted) base directory, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
