"""Template-held-out sampling and JSONL output for the demo domains.

Every domain module exposes `KINDS` ({kind: (problem, phrasings)}) and `render(kind, phrasing, rng) -> dict`.
A **template** is one phrasing of one kind, e.g. "math/add/2". The last phrasing of every kind is **held out**:
training rows come only from the other templates; validation and test rows come only from held-out templates
(split between them by a hash of the prompt text). So every figure measured on valid or test is on wordings the
stacks and the router never trained on. Valid serves the stacks' early stopping and the router's best epoch; test
is touched only by the evidence.

Rows are chat exchanges (format "messages"), as the instruct base is used:
    {"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "template": "math/add/2", "answer": "42"}
Code rows carry "tests" (assertions the function must pass) instead of an exact answer; chat rows carry the
expected reply as "answer". Loaders ignore extra keys.

In the domains of MIXED_FRAMING_DOMAINS a share (COMPLETION_SHARE) of the *training* rows is a raw completion
instead, framed as people send `/v1/completions` (training.demo.surface.completion_framing):
    {"prompt": "Q: Nina had 95 stickers. ...\nA:", "completion": "\nGiven away: ...\nAnswer: 50",
     "question": "Nina had 95 stickers. ...", "template": ..., "answer": "50"}
Those domains' train and valid files are written as format "prompt_completion" (`as_prompt_completion` renders
the chat rows through the base's chat template: the same tokens and labels as format "messages"), so one stack
learns both framings. Valid and test rows stay chat exchanges, comparable with every earlier figure.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from brainstacks.errors import ConfigError
from training.demo import chat_data, code_data, math_data, medical_data, reasoning_data
from training.demo.surface import completion_framing, system_turn

DOMAINS: tuple[str, ...] = ("chat", "code", "math", "medical", "reasoning")
SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Domains scored by exact answer (training.demo.answers); code is scored by running tests (training.rewards).
ANSWER_DOMAINS: tuple[str, ...] = ("chat", "math", "medical", "reasoning")

MODULES: dict[str, ModuleType] = {
    "chat": chat_data, "code": code_data, "math": math_data, "medical": medical_data, "reasoning": reasoning_data,
}  # fmt: skip


@dataclass(frozen=True)
class Template:
    domain: str
    kind: str
    phrasing: int
    held_out: bool

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.kind}/{self.phrasing}"


def templates(domain: str) -> list[Template]:
    """Every template of a domain; the last phrasing of each kind (with at least two) is held out."""
    out = []
    for kind, (_, phrasings) in MODULES[domain].KINDS.items():
        n = len(phrasings)
        out += [Template(domain, kind, i, n > 1 and i == n - 1) for i in range(n)]
    return out


@dataclass
class DemoDataConfig:
    """Defaults for the demo data set: one seed, the number of rows per split (the same for every domain), and the
    router-only prompts per domain (`training.demo.router_prompts`; each is written chat-rendered and raw)."""

    seed: int = 0
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 1200, "valid": 64, "test": 100})
    router_prompts: int = 160


def prompt_key(example: Mapping) -> str:
    """The text that identifies an example for de-duplication (the user turns)."""
    if "messages" in example:
        return "\n".join(m["content"] for m in example["messages"] if m["role"] != "assistant")
    return example["prompt"]


def split_of(key: str) -> str:
    """valid or test for a held-out prompt, from a stable hash of its text (independent of seeds and sizes)."""
    bucket = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:4], "big") % 100
    return "valid" if bucket < 40 else "test"


# Domains whose training rows sometimes carry a system message (training.demo.surface.system_turn), so the stacks
# also answer under other assistants' framings than the chat template's default one.
SYSTEM_TURN_DOMAINS: tuple[str, ...] = ("math", "medical", "reasoning")

# Domains whose training rows are sometimes raw completions (module doc), and that share of their training rows.
MIXED_FRAMING_DOMAINS: tuple[str, ...] = ("math", "medical", "reasoning")
COMPLETION_SHARE = 0.3


def _row(t: Template, rng: random.Random, split: str = "train", completions: bool = True) -> dict:
    ex = MODULES[t.domain].render(t.kind, t.phrasing, rng)
    if completions and split == "train" and t.domain in MIXED_FRAMING_DOMAINS and rng.random() < COMPLETION_SHARE:
        prompt, lead = completion_framing(ex["prompt"], rng)
        row = {"prompt": prompt, "completion": lead + ex["completion"], "question": ex["prompt"], "template": t.name}
    else:
        msgs = [{"role": "user", "content": ex["prompt"]}, {"role": "assistant", "content": ex["completion"]}]
        if split == "train" and t.domain in SYSTEM_TURN_DOMAINS and (system := system_turn(rng)) is not None:
            msgs.insert(0, {"role": "system", "content": system})
        row = {"messages": msgs, "template": t.name}
    for key in ("answer", "tests", "entry"):
        if key in ex:
            row[key] = ex[key]
    return row


def generate(domain: str, split: str, n: int, seed: int = 0, completions: bool = True) -> list[dict]:
    """`n` distinct rows of `domain` for `split`; identical for identical arguments (see the module doc).
    `completions=False`: chat exchanges only (no raw completion rows), for code that wants format "messages"."""
    if domain not in MODULES:
        raise ConfigError(f"unknown demo domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if n < 0:
        raise ConfigError(f"number of examples must be >= 0, got {n}")
    pool = [t for t in templates(domain) if t.held_out == (split != "train")]
    rng = random.Random(f"brainstacks-demo/{domain}/{split}/{seed}")  # str seeds hash with SHA-512: stable
    seen: set[str] = set()
    rows: list[dict] = []
    attempts, limit = 0, 200 * n + 10_000
    while len(rows) < n:
        attempts += 1
        if attempts > limit:
            raise ConfigError(f"demo domain {domain!r} ran out of distinct {split} prompts after {len(rows)} of {n}")
        row = _row(rng.choice(pool), rng, split, completions)
        key = prompt_key(row)
        if key in seen or (split != "train" and split_of(key) != split):
            continue
        seen.add(key)
        rows.append(row)
    return rows


def domain_format(domain: str, split: str) -> str:
    """The recipe format of a domain's split file as the build writes it (module doc)."""
    return "prompt_completion" if domain in MIXED_FRAMING_DOMAINS and split != "test" else "messages"


def as_prompt_completion(rows: list[dict], tokenizer) -> list[dict]:
    """Rows in format "prompt_completion": a chat row's prompt is its conversation before the reply, rendered with
    the generation prompt through `tokenizer`'s chat template, and its completion is the reply as the template
    writes it (its separators included), less a closing EOS token, which the format appends itself: the same
    tokens and labels as format "messages" (tests/training/test_demo_data.py). Raw completion rows pass through."""
    from training.tokenization import chat_segments

    eos = tokenizer.eos_token or ""
    out = []
    for row in rows:
        if "messages" not in row:
            out.append(row)
            continue
        segments = chat_segments(tokenizer, row["messages"])
        last = max(i for i, (_, is_answer) in enumerate(segments) if is_answer)
        prompt = "".join(text for text, _ in segments[:last])
        reply = segments[last][0].rstrip()
        if eos and reply.endswith(eos):
            reply = reply[: -len(eos)]
        extra = {k: v for k, v in row.items() if k != "messages"}
        out.append({"prompt": prompt, "completion": reply, "question": row["messages"][-2]["content"], **extra})
    return out


def write_if_changed(path: Path, text: str) -> bool:
    """Write `text` to `path` (temp file + rename) only when the file's content differs; returns whether it wrote.
    An unchanged file keeps its mtime, and a changed generator can never leave stale data behind."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write one JSON object per line (UTF-8, no ASCII escaping, so the files stay readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def split_rows(domain: str, split: str, n: int, seed: int, tokenizer) -> list[dict]:
    """The rows of one split file in its `domain_format` (the chat rows rendered through `tokenizer` where needed)."""
    rows = generate(domain, split, n, seed)
    return as_prompt_completion(rows, tokenizer) if domain_format(domain, split) == "prompt_completion" else rows


def raw_question_rows(domain: str, n: int, seed: int, train_rows: int) -> list[dict]:
    """The user text of the first `n` chat rows among the `train_rows` training rows of `domain`, as raw prompts
    ({"prompt", "completion": "."}).

    A "messages" domain gives the router each chat row's user text as a raw twin (training.router_examples); a
    domain written as "prompt_completion" cannot, so the build hands the router these instead (a [[router.mixed]]
    file per mixed-framing domain), and the raw share of its examples stays what it was."""
    rows = [r for r in generate(domain, "train", train_rows, seed) if "messages" in r]
    return [{"prompt": r["messages"][-2]["content"], "completion": "."} for r in rows[:n]]


def write_demo_data(
    out_dir: str | Path,
    tokenizer,
    seed: int | None = None,
    sizes: Mapping[str, int] | None = None,
    domains: tuple[str, ...] = DOMAINS,
) -> dict[str, dict[str, Path]]:
    """Write `<out_dir>/<domain>/{train,valid,test}.jsonl` in each file's `domain_format`; returns
    {domain: {split: path}}. `tokenizer` is the base's: its chat template renders the chat rows of the
    mixed-framing domains (module doc).

    `seed` and `sizes` ({split: rows}) default to `DemoDataConfig`; a partial `sizes` overrides only the splits it
    names.
    """
    defaults = DemoDataConfig()
    seed = defaults.seed if seed is None else seed
    merged = dict(defaults.sizes)
    for split, n in (sizes or {}).items():
        if split not in SPLITS:
            raise ConfigError(f"sizes: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        merged[split] = int(n)
    out = Path(out_dir)
    paths: dict[str, dict[str, Path]] = {}
    for domain in domains:
        paths[domain] = {}
        for split in SPLITS:
            path = out / domain / f"{split}.jsonl"
            write_jsonl(path, split_rows(domain, split, merged[split], seed, tokenizer))
            paths[domain][split] = path
    return paths
