"""Tokenization with answer-only labels, truncation, packing and batching of the records of training/data_files.py.

    data = load_domain(spec, tokenizer, seq_len=512)  # DomainData(train=[...], valid=[...]): SFT or preference examples
    loader = DataLoader(data.train, batch_size=4, collate_fn=Collator(pad_id))

Labels are -100 wherever no loss is taken (prompt, system and user turns, padding). A prompt/completion pair is
tokenized as prompt (with the tokenizer's usual special tokens, e.g. BOS) followed by the completion tokenized on its
own, so the boundary is exactly where generation starts when serving `/v1/completions`.

Chat rendering uses the tokenizer's own chat template (brainstacks.text.render_chat); the rendered conversation gets
the tokenizer's leading special tokens (BOS) as a raw prompt does, unless the template already wrote them
(`brainstacks.text.encode_prompt`). A tokenizer without one gets brainstacks.text.FALLBACK_CHAT_TEMPLATE: every
message as `<|role|>\\n{content}\\n`, an assistant message ending with the EOS token before its newline, and the
generation prompt `<|assistant|>\\n`. Assistant spans are found by rendering successive prefixes of the
conversation, which needs a template whose rendering of a prefix is a prefix of the full rendering (true of common
templates; others fall back with an explicit error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from brainstacks.text import encode_prompt, render_chat
from training.config import TrainConfig
from training.data_files import DataError, Record, read_jsonl, split_records

IGNORE_INDEX = -100


@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass
class PreferenceExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class DomainData:
    name: str
    format: str
    train: list  # list[SFTExample] or list[PreferenceExample]
    valid: list
    train_records: list[Record]
    valid_records: list[Record]


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"]) if text else []


def leading_specials(tokenizer, text: str) -> list[int]:
    """The special ids encode_prompt puts before `text`'s own tokens (BOS for most tokenizers; none if the text
    already starts with it)."""
    w = encode_prompt(tokenizer, text)
    wo = _ids(tokenizer, text, special=False)
    n = len(w) - len(wo)
    return w[:n] if n > 0 and w[n:] == wo else []


def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def chat_segments(tokenizer, messages: Sequence[dict]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_assistant) pieces in order."""
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        after = render_chat(tokenizer, messages[: i + 1])
        if not before.startswith(done) or not after.startswith(before):
            raise DataError(
                "the tokenizer's chat template does not render a conversation's prefix as a prefix of the "
                "conversation, so assistant tokens cannot be located"
            )
        segments.append((before[len(done) :], False))
        segments.append((after[len(before) :], True))
        done = after
    full = render_chat(tokenizer, messages)
    if not full.startswith(done):
        raise DataError("the tokenizer's chat template is not prefix-stable")
    if full[len(done) :]:
        segments.append((full[len(done) :], False))
    return [(t, a) for t, a in segments if t]


def tokenize_sft(tokenizer, rec: Record | dict, fmt: str) -> SFTExample:
    """Token ids and answer-only labels of one prompt_completion / messages / text record (not truncated)."""
    obj = rec.data if isinstance(rec, Record) else rec
    if fmt == "prompt_completion":
        p = encode_prompt(tokenizer, obj["prompt"])
        c = _ids(tokenizer, obj["completion"], special=False) + _eos(tokenizer)
        return SFTExample(p + c, [IGNORE_INDEX] * len(p) + c)
    if fmt == "text":
        ids = encode_prompt(tokenizer, obj["text"]) + _eos(tokenizer)
        return SFTExample(ids, list(ids))
    if fmt == "messages":
        segments = chat_segments(tokenizer, obj["messages"])
        # the same leading special tokens the server's prompt encoding gives the rendered conversation
        ids = leading_specials(tokenizer, segments[0][0]) if segments else []
        labels = [IGNORE_INDEX] * len(ids)
        for text, is_answer in segments:
            seg = _ids(tokenizer, text, special=False)
            ids += seg
            labels += seg if is_answer else [IGNORE_INDEX] * len(seg)
        return SFTExample(ids, labels)
    if fmt in ("preference", "prompt_answer"):  # SFT on the chosen response / the answer (oracle and eval losses)
        if "chosen" not in obj and "answer" not in obj:
            raise DataError("a prompt_answer line with 'tests' and no 'answer' has no text to take a loss on")
        p = encode_prompt(tokenizer, obj["prompt"])
        c = _ids(tokenizer, obj["chosen" if fmt == "preference" else "answer"], special=False) + _eos(tokenizer)
        return SFTExample(p + c, [IGNORE_INDEX] * len(p) + c)
    raise ValueError(f"unknown format {fmt!r}")


def tokenize_preference(tokenizer, rec: Record | dict, seq_len: int) -> PreferenceExample:
    """A DPO pair; the prompt is cut from the left and responses from the right to fit seq_len."""
    obj = rec.data if isinstance(rec, Record) else rec
    p = encode_prompt(tokenizer, obj["prompt"])
    ch = _ids(tokenizer, obj["chosen"], special=False) + _eos(tokenizer)
    rj = _ids(tokenizer, obj["rejected"], special=False) + _eos(tokenizer)
    longest = max(len(ch), len(rj))
    if len(p) + longest > seq_len:
        keep = max(seq_len // 2, seq_len - longest)
        if len(p) > keep:
            p = p[:1] + p[len(p) - keep + 1 :] if tokenizer.bos_token_id == p[0] else p[len(p) - keep :]
        room = seq_len - len(p)
        ch, rj = ch[:room], rj[:room]
    return PreferenceExample(p, ch, rj)


def prompt_text(tokenizer, rec: Record | dict, fmt: str) -> str:
    """The text a router sees for this record: the prompt (chat: the conversation up to the last assistant turn,
    rendered with the generation prompt); for plain text, its first half by characters."""
    obj = rec.data if isinstance(rec, Record) else rec
    if fmt in ("prompt_completion", "preference", "prompt_answer"):
        return obj["prompt"]
    if fmt == "messages":
        msgs = obj["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        return render_chat(tokenizer, msgs[:last], add_generation_prompt=True)
    if fmt == "text":
        return obj["text"][: max(1, len(obj["text"]) // 2)]
    raise ValueError(f"unknown format {fmt!r}")


def truncate(ex: SFTExample, seq_len: int) -> SFTExample | None:
    """Cut to seq_len from the right; None when no label token survives."""
    out = SFTExample(ex.input_ids[:seq_len], ex.labels[:seq_len])
    return out if out.n_label_tokens else None


def chunk(ex: SFTExample, seq_len: int) -> list[SFTExample]:
    """Split a long example into consecutive seq_len windows (plain text keeps all its tokens this way)."""
    out = [SFTExample(ex.input_ids[i : i + seq_len], ex.labels[i : i + seq_len]) for i in range(0, len(ex), seq_len)]
    return [e for e in out if e.n_label_tokens and len(e) > 1]


def pack(examples: Sequence[SFTExample], seq_len: int) -> list[SFTExample]:
    """Concatenate examples (labels kept) and cut the stream into full seq_len blocks; the short tail is kept."""
    ids: list[int] = []
    labels: list[int] = []
    for e in examples:
        ids += e.input_ids
        labels += e.labels
    return chunk(SFTExample(ids, labels), seq_len)


def tokenize_records(
    tokenizer, records: Sequence[Record], fmt: str, seq_len: int, stage: str = "sft", packing: bool = False
) -> list:
    """Records -> SFTExample list (truncated, text chunked, optionally packed) or PreferenceExample list (dpo)."""
    if stage == "dpo":
        return [tokenize_preference(tokenizer, r, seq_len) for r in records]
    out: list[SFTExample] = []
    for r in records:
        try:
            ex = tokenize_sft(tokenizer, r, fmt)
        except DataError as e:
            raise DataError(f"{r.where}: {e}") from None
        if fmt == "text" and not packing:
            out += chunk(ex, seq_len)
        elif packing:
            out.append(ex)
        else:
            t = truncate(ex, seq_len)
            if t is not None:
                out.append(t)
    if packing:
        out = pack(out, seq_len)
    return out


def load_domain(
    spec,
    tokenizer,
    seq_len: int,
    packing: bool = False,
    valid_fraction: float = TrainConfig.valid_fraction,
    seed: int = TrainConfig.seed,
    records: tuple[list[Record], list[Record] | None] | None = None,
) -> DomainData:
    """Read, split and tokenize one recipe domain (a training.config.DomainSpec). Validation is never packed."""
    if records is None:
        train_recs = read_jsonl(spec.train, spec.format)
        valid_recs = read_jsonl(spec.valid, spec.format) if spec.valid else None
    else:
        train_recs, valid_recs = records
    if valid_recs is None:
        train_recs, valid_recs = split_records(train_recs, spec.format, valid_fraction, seed)
    stage = getattr(spec, "stage", "sft")
    train = tokenize_records(tokenizer, train_recs, spec.format, seq_len, stage, packing)
    valid = tokenize_records(tokenizer, valid_recs, spec.format, seq_len, stage, packing=False)
    if not train:
        raise DataError(f"{spec.train}: no training example has a label token within seq_len={seq_len}")
    if not valid:
        raise DataError(f"{spec.valid or spec.train}: no validation example fits seq_len={seq_len}")
    return DomainData(spec.name, spec.format, train, valid, train_recs, valid_recs)


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    out = torch.full((len(seqs), n), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


def pad_id_of(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


class Collator:
    """Right-pads SFTExamples to the longest in the batch: input_ids, attention_mask, labels (-100 on padding)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: Sequence[SFTExample]) -> dict[str, torch.Tensor]:
        ids = _pad([e.input_ids for e in batch], self.pad_id)  # (B, T)
        mask = _pad([[1] * len(e) for e in batch], 0)  # (B, T)
        labels = _pad([e.labels for e in batch], IGNORE_INDEX)  # (B, T)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class PreferenceCollator:
    """Stacks chosen and rejected sequences into one batch of 2B rows: rows [0, B) chosen, [B, 2B) rejected."""

    def __init__(self, pad_id: int):
        self.sft = Collator(pad_id)

    def __call__(self, batch: Sequence[PreferenceExample]) -> dict[str, torch.Tensor]:
        rows = [
            SFTExample(e.prompt_ids + e.chosen_ids, [IGNORE_INDEX] * len(e.prompt_ids) + e.chosen_ids) for e in batch
        ]
        rows += [
            SFTExample(e.prompt_ids + e.rejected_ids, [IGNORE_INDEX] * len(e.prompt_ids) + e.rejected_ids)
            for e in batch
        ]
        return self.sft(rows)
