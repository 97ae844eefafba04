"""The demo's router-only prompts: deterministic, distinct, every domain, written as chat and raw files that the
recipe reads, and disjoint from the hand-written evaluation set (which must stay evaluation-only)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from training.data_files import read_jsonl_any
from training.demo.router_prompts import GENERATORS, router_prompts, write_router_files
from training.demo.sampling import DOMAINS

HANDWRITTEN = Path(__file__).resolve().parents[1] / "data" / "handwritten_prompts.jsonl"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def test_every_demo_domain_has_distinct_deterministic_prompts():
    assert set(GENERATORS) == set(DOMAINS)
    for d in DOMAINS:
        rows = router_prompts(d, 120, seed=0)
        assert len(rows) == 120 and len({r["prompt"] for r in rows}) == 120
        assert rows == router_prompts(d, 120, seed=0)
        assert rows != router_prompts(d, 120, seed=1)


def test_handwritten_prompts_are_never_router_training_prompts():
    hand = {_norm(json.loads(line)["prompt"]) for line in HANDWRITTEN.read_text().splitlines() if line.strip()}
    assert len(hand) >= 60
    for d in DOMAINS:
        ours = {_norm(r["prompt"]) for r in router_prompts(d, 400, seed=0)}
        assert not ours & hand, (d, sorted(ours & hand)[:5])


def test_files_are_chat_and_raw_twins_and_rewritten_only_on_change(tmp_path):
    paths = write_router_files(tmp_path, 16, seed=0)
    chat, raw = paths["math"]
    fmt_c, recs_c = read_jsonl_any(chat)
    fmt_r, recs_r = read_jsonl_any(raw)
    assert (fmt_c, fmt_r) == ("messages", "prompt_completion")
    assert [r.data["messages"][0]["content"] for r in recs_c] == [r.data["prompt"] for r in recs_r]
    before = chat.stat().st_mtime_ns
    write_router_files(tmp_path, 16, seed=0)
    assert chat.stat().st_mtime_ns == before
