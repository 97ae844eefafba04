"""Data files: reading and validating the JSONL formats of docs/DESIGN.md §5 (FORMATS), and the deterministic
train/validation split.

    records = read_jsonl(path, "messages")           # validates every line first: DataError("file:line: reason")
    fmt, records = read_jsonl_any(path)              # format taken from the first line ([[router.mixed]] files)
    train, valid = split_records(records, fmt, fraction=0.1, seed=0)

One JSON object per line; blank lines are skipped; keys other than the format's own are ignored (so files can carry
ids, sources or metadata):

    prompt_completion  {"prompt": str, "completion": str}           loss on the completion (+ EOS)
    messages           {"messages": [{"role", "content"}, ...]}     loss on every assistant turn (+ its end marker)
    text               {"text": str}                                loss on every token (+ EOS)
    preference         {"prompt": str, "chosen": str, "rejected": str}   DPO pairs (loss on the responses)
    prompt_answer      {"prompt": str, "answer": str}  or  {"prompt": str, "tests": [str, ...]}
                       GRPO prompts: the reference answer (reward exact_answer) or the assertions their code must
                       pass (reward python_tests); the recipe's [grpo] reward decides which key every line needs

With no `valid` file, a deterministic share of examples (a hash of the seed and the example's prompt, so duplicates of
a prompt land on the same side and the split does not depend on line order) is held out for validation.
Tokenization, packing and batching of these records: training/tokenization.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainstacks.errors import BrainstacksError
from training.config import FORMATS

ROLES = ("system", "user", "assistant", "tool")


class DataError(BrainstacksError, ValueError):
    """A data file is unreadable or one of its lines is malformed; the message is 'file:line: reason'."""


@dataclass
class Record:
    """One validated JSONL line."""

    path: Path
    line: int
    data: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"



def line_error(obj: Any, fmt: str) -> str | None:
    """Reason the object is not a valid line of format `fmt`, or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"

    def need_str(key: str, allow_empty: bool = False) -> str | None:
        if key not in obj:
            return f"missing key {key!r} (format {fmt!r})"
        v = obj[key]
        if not isinstance(v, str):
            return f"{key!r} must be a string, got {type(v).__name__}"
        if not allow_empty and not v.strip():
            return f"{key!r} is empty"
        return None

    if fmt == "prompt_completion":
        return need_str("prompt", allow_empty=True) or need_str("completion")
    if fmt == "text":
        return need_str("text")
    if fmt == "preference":
        reason = need_str("prompt", allow_empty=True) or need_str("chosen") or need_str("rejected")
        if reason is None and obj["chosen"] == obj["rejected"]:
            return "'chosen' and 'rejected' are identical"
        return reason
    if fmt == "prompt_answer":
        reason = need_str("prompt")
        if reason:
            return reason
        if "answer" in obj:
            ok = isinstance(obj["answer"], str) and obj["answer"].strip()
            return None if ok else "'answer' must be a non-empty string"
        tests = obj.get("tests")
        if tests is None:
            return "missing key 'answer' or 'tests' (format 'prompt_answer')"
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
            return "'tests' must be a non-empty list of non-empty strings (Python assertions)"
        return None
    if fmt == "messages":
        msgs = obj.get("messages")
        if msgs is None:
            return "missing key 'messages' (format 'messages')"
        if not isinstance(msgs, list) or not msgs:
            return "'messages' must be a non-empty list"
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                return f"messages[{i}] must be an object with 'role' and 'content'"
            if m.get("role") not in ROLES:
                return f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.get('role')!r}"
            if not isinstance(m.get("content"), str):
                return f"messages[{i}].content must be a string, got {type(m.get('content')).__name__}"
        if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
            return "no non-empty assistant message to learn from"
        return None
    raise ValueError(f"unknown format {fmt!r}")


def read_jsonl(path: str | Path, fmt: str) -> list[Record]:
    """Read and validate every line of a JSONL file. Raises DataError('file:line: reason') at the first bad line."""
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    path = Path(path)
    try:
        fh = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    records: list[Record] = []
    with fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
                reason = line_error(obj, fmt)
                if reason:
                    raise DataError(f"{path}:{lineno}: {reason}")
                records.append(Record(path, lineno, obj))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{len(records) + 1}: not UTF-8 text ({e.reason})") from None
    if not records:
        raise DataError(f"{path}: no examples (file is empty)")
    return records


def detect_format(obj: dict[str, Any]) -> str | None:
    """The format a single object fits (used for [[router.mixed]] files, which may be in any SFT format)."""
    for fmt in ("messages", "prompt_completion", "preference", "text"):
        if line_error(obj, fmt) is None:
            return fmt
    return None


def read_jsonl_any(path: str | Path) -> tuple[str, list[Record]]:
    """Read a file whose format is given by its first line; every line must then fit that format."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            first = next(((i, ln) for i, ln in enumerate(fh, 1) if ln.strip()), None)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if first is None:
        raise DataError(f"{path}: no examples (file is empty)")
    try:
        fmt = detect_format(json.loads(first[1]))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{first[0]}: invalid JSON: {e.msg} (column {e.colno})") from None
    if fmt is None:
        raise DataError(f"{path}:{first[0]}: fits none of the formats {', '.join(FORMATS)}")
    return fmt, read_jsonl(path, fmt)


def split_key(rec: Record | dict, fmt: str) -> str:
    """What identifies 'the same prompt' for splitting."""
    obj = rec.data if isinstance(rec, Record) else rec
    if fmt in ("prompt_completion", "preference", "prompt_answer"):
        return obj["prompt"]
    if fmt == "text":
        return obj["text"]
    msgs = obj["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return json.dumps([[m["role"], m["content"]] for m in msgs[:last]], ensure_ascii=False)


def hash_fraction(key: str, seed: int) -> float:
    """A deterministic number in [0, 1) for `key` under `seed`: where a split puts the key (the same in every run)."""
    h = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_records(records: list[Record], fmt: str, fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Deterministic (train, valid) split by prompt hash; at least one example on each side when there are two."""
    keyed = [(hash_fraction(split_key(r, fmt), seed), r) for r in records]
    valid = [r for b, r in keyed if b < fraction]
    train = [r for b, r in keyed if b >= fraction]
    if len(records) >= 2:
        if not valid:  # a tiny file: hold out the prompt with the smallest hash (and its duplicates)
            low = min(b for b, _ in keyed)
            valid = [r for b, r in keyed if b == low]
            train = [r for b, r in keyed if b != low]
        if not train:
            high = max(b for b, _ in keyed)
            train = [r for b, r in keyed if b == high]
            valid = [r for b, r in keyed if b != high]
    else:
        train, valid = list(records), list(records)
    return train, valid


def validate_recipe_data(recipe) -> dict[str, list[Record]]:
    """Read every data file a recipe names (every stage's train and valid files, mixed sets) before any training
    starts; a grpo stage's lines must carry what the [grpo] reward compares with ("answer" or "tests")."""
    from training.rewards import REFERENCE_KEY

    out: dict[str, list[Record]] = {}
    for dom in recipe.domains:
        for d in dom.stages:
            for path in (d.train, d.valid) if d.valid else (d.train,):
                out[str(path)] = recs = read_jsonl(path, d.format)
                key = REFERENCE_KEY[recipe.grpo.reward]
                bad = next((r for r in recs if key not in r.data), None) if d.stage == "grpo" else None
                if bad is not None:
                    raise DataError(f"{bad.where}: missing key {key!r}, which [grpo] reward "
                                    f"{recipe.grpo.reward!r} compares completions with")
    for m in recipe.mixed:
        fmt, recs = read_jsonl_any(m.file)
        if fmt == "preference":
            raise DataError(f"{m.file}: a mixed set needs prompt/answer data, not preference pairs")
        out[str(m.file)] = recs
    return out
