"""The running batch (server/engine.py schedules it): the rows, their KV cache and routing weights; joining and
leaving; and the per-row helpers the engine runs on them (building the newcomers' batch after a prefill, sampling
every row with a failing row isolated, sending the tokens). The cache's layout is brainstacks/kvcache.py's alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from server.constraints import constrain_rows
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
    matcher: Any = None  # response_format: this row's grammar state (server/constraints.py), None = free


class Batch:
    """The running rows, their KV cache (brainstacks/kvcache.py: SlotKV on the fused path, EagerKV on the eager
    one), the token each row feeds next and the rows' routing weights as one (B, D) host tensor, turned into what
    the layers need (runner.routing) once per change of the batch, never per step."""

    def __init__(self, kv, rows: list[Row], last: torch.Tensor, weights: torch.Tensor | None, domains: list[str]):
        self.kv = kv
        self.rows = rows
        self.last = last  # (B,) token each row feeds next
        self.weights = weights  # (B, D) float32 on the host, columns in `domains` order; None without domains
        self.domains = domains
        self._routing: tuple[int, Any] | None = None  # (runner.stacks_version, runner.routing(weights))

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, keep: list[int]) -> None:
        """Keep only rows `keep` (indices into the batch). The cache may reorder them (SlotKV fills holes with the
        last rows); every per-row field follows its order."""
        order = self.kv.select(keep)
        idx = torch.tensor(order, dtype=torch.long)
        self.rows = [self.rows[i] for i in order]
        self.last = self.last.index_select(0, idx)
        self.weights = None if self.weights is None else self.weights.index_select(0, idx)
        self._routing = None

    def extend(self, other: Batch) -> None:
        """Append other's rows. Every new tensor is built before any is assigned (the cache's extend is
        all-or-nothing too), so a failure part-way leaves this batch exactly as it was."""
        last = torch.cat([self.last, other.last])
        if self.weights is None or other.weights is None or self.domains != other.domains:
            weights = _weights([row.req.weights for row in self.rows + other.rows], other.domains)
        else:
            weights = torch.cat([self.weights, other.weights])
        self.kv.extend(other.kv)  # from here on: assignments only
        self.last, self.weights, self.domains = last, weights, list(other.domains)
        self.rows = self.rows + other.rows
        self._routing = None

    def routing(self, runner: Any):
        """runner.routing of this batch's weights, recomputed only after a change of rows or of the stacks (a hot
        reload: the weights are rebuilt from each row's {domain: w} when the domains changed)."""
        if self._routing is None or self._routing[0] != runner.stacks_version:
            if self.domains != runner.domains:
                self.domains = runner.domains
                self.weights = _weights([row.req.weights for row in self.rows], self.domains)
            self._routing = (runner.stacks_version, runner.routing(self.weights))
        return self._routing[1]

    def decode(self, runner: Any) -> torch.Tensor:
        """One decode step for every row (each its last token, at its next position, with its own weights): the
        (B, V) logits; the cache grows by one column."""
        return runner.decode(self.last, self.kv, self.routing(runner))

    @property
    def reserved_width(self) -> int:
        """The widest KV reservation among the rows (prompt + max_tokens), an upper bound on the cache width."""
        return max((row.req.reserved_tokens for row in self.rows), default=0)


def _weights(rows: list[dict[str, float]], domains: list[str]) -> torch.Tensor | None:
    """(B, D) host weights in `domains` order; a domain a row does not name gets 0 (e.g. added by a hot reload)."""
    if not domains:
        return None
    return torch.tensor([[r.get(d, 0.0) for d in domains] for r in rows], dtype=torch.float32)


def prefill(runner: Any, reqs: list[GenRequest]) -> tuple[Batch, torch.Tensor]:
    """One forward over every newcomer's prompt, each row with its own weights: the newcomers' batch and its
    (rows, V) logits. The n samples of a request share its prefill: its cache row and logits are repeated n times,
    each sample with its own generator (seeded seed + j)."""
    doms = runner.domains
    weights = _weights([q.weights for q in reqs], doms)
    kv, logits = runner.prefill([q.prompt_ids for q in reqs], runner.routing(weights))  # (k, V)
    src = [i for i, q in enumerate(reqs) for _ in range(q.n)]
    dev = getattr(runner, "device", "cpu")  # generators live with the logits (sampling stays on the device)
    rows = [Row(q, j, make_generator(None if q.params.seed is None else q.params.seed + j, dev),
                matcher=q.constraint() if q.constraint is not None else None)
            for q in reqs for j in range(q.n)]
    if len(src) != len(reqs):
        kv = kv.take(src)
        logits = logits.index_select(0, torch.tensor(src, device=logits.device))
        weights = None if weights is None else weights.index_select(0, torch.tensor(src))
    return Batch(kv, rows, torch.zeros(len(rows), dtype=torch.long), weights, doms), logits


def sample_rows(b: Batch, logits: torch.Tensor) -> tuple[list[int | None], list[Logprob | None]]:
    """Tokens for every row and their (logprob, top) (None where that row's sampling, logprobs or grammar failed:
    only that row fails). Rows with a response_format grammar (or a forced tool call) choose from their masked rows
    of a selection copy, made only when some row is constrained; the other rows' values are not changed."""
    params, gens = [row.req.params for row in b.rows], [row.gen for row in b.rows]
    hist = [row.history for row in b.rows]
    matchers = [row.matcher for row in b.rows]
    select, failed = None, {}
    if any(m is not None for m in matchers):
        try:
            select = logits.float().clone()
            failed = constrain_rows(matchers, select)
        except Exception as e:  # noqa: BLE001 - the grammar engine failed: the constrained rows fail, not the batch
            log.exception("computing the grammar masks failed")
            failed = {i: f"{type(e).__name__}: {e}" for i, m in enumerate(matchers) if m is not None}
        for i, why in failed.items():
            log.warning("response_format failed for %s: %s", b.rows[i].req.id, why)
    try:
        tokens, lps = sample_batch(logits, params, gens, hist, select)
        out, lps_out = list(tokens), list(lps)
    except Exception:
        log.exception("batched sampling failed; sampling row by row to isolate the failing row")
        out, lps_out = [], []
        for i in range(len(b.rows)):
            try:
                one = None if select is None else select[i : i + 1]
                toks, lp = sample_batch(logits[i : i + 1], params[i : i + 1], gens[i : i + 1], hist[i : i + 1], one)
                out.append(toks[0])
                lps_out.append(lp[0])
            except Exception as e:
                log.warning("sampling failed for %s: %s", b.rows[i].req.id, e)
                out.append(None)
                lps_out.append(None)
    for i in failed:
        out[i] = lps_out[i] = None
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
        elif row.matcher is not None and not row.matcher.consume_token(tok):
            q.fail_row(row.index, f"internal engine error: the grammar refused token {tok}")
        elif row.matcher is not None and row.matcher.is_stopped():
            q.finish(row.index, "stop")  # the output is complete: nothing but EOS could follow
        elif row.n_out >= p.max_tokens:
            q.finish(row.index, "length")
        else:
            keep.append(i)
    return keep
