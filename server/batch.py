"""The running batch's tensors (server/engine.py schedules it): the rows, their left-padded KV cache, attention mask
and positions; joining, leaving and trimming; and the per-row helpers the engine runs on them (building the
newcomers' batch after a prefill, sampling every row with a failing row isolated, sending the tokens).

Masked columns get exactly zero attention, so a row's tokens do not depend on its batch mates (up to float summation
order).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from brainstacks.text import pad_batch
from server.genrequest import Event, GenRequest
from server.sampling import Logprob, make_generator, sample_batch

log = logging.getLogger("brainstacks.engine")


@dataclass
class Row:
    req: GenRequest
    index: int
    gen: torch.Generator
    n_out: int = 0
    history: list[int] = field(default_factory=list)  # tokens generated so far (presence/frequency penalties)


class Batch:
    """The running rows and their left-padded KV cache."""

    def __init__(self, cache, rows: list[Row], mask: torch.Tensor, pos: torch.Tensor, last: torch.Tensor):
        self.cache = cache  # layers[i].keys/values: (B, H, L, Dh)
        self.rows = rows
        self.mask = mask  # (B, L) long, 1 = real token
        self.pos = pos  # (B,) next position of each row
        self.last = last  # (B,) token each row feeds next

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, keep: list[int]) -> None:
        """Keep only rows `keep` (indices into the batch), then trim all-padding columns."""
        idx = torch.tensor(keep, dtype=torch.long)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx.to(layer.keys.device))
            layer.values = layer.values.index_select(0, idx.to(layer.values.device))
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask.index_select(0, idx)
        self.pos = self.pos.index_select(0, idx)
        self.last = self.last.index_select(0, idx)
        self._trim()

    def _trim(self) -> None:
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else self.mask.shape[1]
        if start > 0:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:, :]
                layer.values = layer.values[:, :, start:, :]
            self.mask = self.mask[:, start:]

    def extend(self, other: Batch) -> None:
        """Append other's rows, left-padding whichever side is shorter. Every new tensor is built before any is
        assigned, so a failure part-way (e.g. out of memory) leaves this batch exactly as it was."""
        a, b = self.mask.shape[1], other.mask.shape[1]
        width = max(a, b)
        if len(self.cache.layers) != len(other.cache.layers):
            raise ValueError(f"cannot merge caches of {len(self.cache.layers)} and {len(other.cache.layers)} layers")
        kv = [(torch.cat([lpad(la.keys, width), lpad(lb.keys, width)], dim=0),
               torch.cat([lpad(la.values, width), lpad(lb.values, width)], dim=0))
              for la, lb in zip(self.cache.layers, other.cache.layers, strict=True)]
        mask = torch.cat([lpad(self.mask, width), lpad(other.mask, width)], dim=0)
        pos = torch.cat([self.pos, other.pos])
        last = torch.cat([self.last, other.last])
        for la, (k, v) in zip(self.cache.layers, kv, strict=True):  # from here on: assignments only
            la.keys, la.values = k, v
        self.mask, self.pos, self.last = mask, pos, last
        self.rows = self.rows + other.rows

    def decode(self, runner: Any) -> torch.Tensor:
        """One decode step for every row (each its last token, at its next position, with its own weights): the
        (B, V) logits; the cache grows by one column."""
        B = len(self)
        self.mask = torch.cat([self.mask, torch.ones((B, 1), dtype=torch.long)], dim=1)  # (B, L+1)
        weights = runner.weights_tensor([row.req.weights for row in self.rows])
        logits = runner.forward(self.last.unsqueeze(1), self.mask, self.pos.unsqueeze(1), self.cache, weights)
        self.pos = self.pos + 1
        return logits

    @property
    def reserved_width(self) -> int:
        """The widest KV reservation among the rows (prompt + max_tokens), an upper bound on the cache width."""
        return max((row.req.reserved_tokens for row in self.rows), default=0)


def lpad(x: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence axis (-2 for (B, H, L, Dh) caches, -1 for (B, L) masks) with zeros to `width`."""
    axis = -1 if x.dim() == 2 else -2
    short = width - x.shape[axis]
    if short == 0:
        return x
    shape = list(x.shape)
    shape[axis] = short
    return torch.cat([x.new_zeros(shape), x], dim=axis)



def prefill(runner: Any, reqs: list[GenRequest]) -> tuple[Batch, torch.Tensor]:
    """One left-padded forward over every newcomer's prompt, each row with its own weights: the newcomers' batch and
    its (rows, V) logits. The n samples of a request share its prefill: its cache row, mask row and logits are
    repeated n times, each sample with its own generator (seeded seed + j)."""
    ids, mask = pad_batch([q.prompt_ids for q in reqs], 0, left=True)  # (k, width) each; pad id 0 is masked out
    pos_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # (k, width)
    cache = runner.new_cache()
    logits = runner.forward(ids, mask, pos_ids, cache, runner.weights_tensor([q.weights for q in reqs]))  # (k, V)
    src = [i for i, q in enumerate(reqs) for _ in range(q.n)]
    dev = getattr(runner, "device", "cpu")  # generators live with the logits (sampling stays on the device)
    rows = [Row(q, j, make_generator(None if q.params.seed is None else q.params.seed + j, dev))
            for q in reqs for j in range(q.n)]
    if len(src) != len(reqs):
        idx = torch.tensor(src, dtype=torch.long)
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(0, idx.to(layer.keys.device))
            layer.values = layer.values.index_select(0, idx.to(layer.values.device))
        mask = mask.index_select(0, idx)
        logits = logits.index_select(0, idx.to(logits.device))
    lengths = torch.tensor([len(reqs[i].prompt_ids) for i in src], dtype=torch.long)
    return Batch(cache, rows, mask, lengths.clone(), torch.zeros(len(rows), dtype=torch.long)), logits


def sample_rows(b: Batch, logits: torch.Tensor) -> tuple[list[int | None], list[Logprob | None]]:
    """Tokens for every row and their (logprob, top) (None where that row's sampling or logprobs failed: only that
    row fails)."""
    params, gens = [row.req.params for row in b.rows], [row.gen for row in b.rows]
    hist = [row.history for row in b.rows]
    try:
        tokens, lps = sample_batch(logits, params, gens, hist)
        return list(tokens), list(lps)
    except Exception:
        log.exception("batched sampling failed; sampling row by row to isolate the failing row")
    out: list[int | None] = []
    lps_out: list[Logprob | None] = []
    for i in range(len(b.rows)):
        try:
            toks, lp = sample_batch(logits[i : i + 1], params[i : i + 1], gens[i : i + 1], hist[i : i + 1])
            out.append(toks[0])
            lps_out.append(lp[0])
        except Exception as e:
            log.warning("sampling failed for %s: %s", b.rows[i].req.id, e)
            out.append(None)
            lps_out.append(None)
    return out, lps_out


def emit_tokens(b: Batch, tokens: list[int | None], lps: list[Logprob | None], now: float) -> list[int]:
    """Send every row its sampled token (a row whose sampling or logprobs failed fails alone), finish the rows that
    hit a stop token or max_tokens, and return the indices of the rows that go on."""
    keep: list[int] = []
    for i, (row, tok) in enumerate(zip(b.rows, tokens, strict=True)):
        q, p = row.req, row.req.params
        if q.is_cancelled(row.index):
            q.finish(row.index, "cancelled")
            continue
        if tok is None or lps[i] is None:
            q.fail_row(row.index, "internal engine error: sampling failed")
            continue
        lp, top = lps[i]
        if q.first_token_at is None:
            q.first_token_at = now
        row.n_out += 1
        if p.penalized:
            row.history.append(tok)
        q.sink(Event("token", index=row.index, token_id=tok, logprob=lp, top=top))
        if tok in p.stop_token_ids:
            q.finish(row.index, "stop")
        elif row.n_out >= p.max_tokens:
            q.finish(row.index, "length")
        else:
            keep.append(i)
    return keep
