"""Per-row token sampling: greedy, temperature, top-k, top-p, each row with its own torch.Generator.

A row's generator is seeded from the request's seed (or a random one), so a seeded sampled completion draws the same
tokens whatever its batch mates are. Logprobs are those of the model's distribution (the raw logits, before
penalties, temperature and truncation), as OpenAI reports them.

`logit_bias` (token id, bias) pairs are added to the row's logits before selection (OpenAI's definition), for every
row at once in one scatter; the rows of a `response_format` request are masked to their grammar (server/
constraints.py) the same way, in the selection logits only.

Presence and frequency penalties follow OpenAI's definition over the tokens this row has generated so far (c[j] times
token j was sampled): `logit[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty`, before greedy or
sampled selection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

HOST_SYNC = [0.0]  # seconds spent copying sampled ids / logprobs to the host (model thread only; server/steptimer.py)


def to_host(t: torch.Tensor) -> list:
    """t.tolist(), timed into HOST_SYNC: the only device-to-host copies sampling makes."""
    t0 = time.perf_counter()
    out = t.tolist()
    HOST_SYNC[0] += time.perf_counter() - t0
    return out


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples; bounds are checked by the API layer before it gets here."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    logprobs: int | None = None  # None = off; k >= 0 = chosen token's logprob plus k alternatives
    stop_token_ids: frozenset[int] = frozenset()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), ids inside the vocabulary

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


GREEDY_BELOW = 1e-5  # a temperature this small is argmax (dividing by it would overflow to inf/nan)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return g


def _sample_tensor(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator) -> torch.Tensor:
    """One token id, as a 1-element tensor on the logits' device, from a row's (V,) float32 logits. No host sync:
    a row whose distribution is not finite falls back to its argmax on the device."""
    if p.temperature < GREEDY_BELOW:
        return torch.argmax(logits).reshape(1)
    x = (logits - logits.max()) / p.temperature  # <= 0 everywhere: no overflow for small temperatures
    if p.top_k and p.top_k < x.shape[-1]:
        kth = torch.topk(x, p.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_x, idx = torch.sort(x, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= p.top_p
        drop[0] = False  # top_p = 0 still keeps the most likely token
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(0, idx, sorted_x)
    probs = torch.softmax(x, dim=-1)
    # defensive: one row's bad numbers must not fail its batch mates; a one-hot on its argmax samples the argmax
    ok = torch.isfinite(probs).all()
    best = torch.argmax(logits)
    onehot = torch.zeros_like(probs).scatter_(0, best.reshape(1), 1.0)
    return torch.multinomial(torch.where(ok, probs, onehot), 1, generator=gen)


def sample_row(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator) -> int:
    """Pick one token from a row's logits (V,) float32."""
    return int(_sample_tensor(logits, p, gen))


def apply_penalties(logits: torch.Tensor, p: SamplingParams, history: list[int]) -> torch.Tensor:
    """A row's (V,) logits with OpenAI's presence/frequency penalties over its generated tokens `history`."""
    if not p.penalized or not history:
        return logits
    V = logits.shape[-1]
    ids = torch.tensor([t for t in history if 0 <= t < V], dtype=torch.long, device=logits.device)
    counts = torch.bincount(ids, minlength=V).to(logits.dtype)  # (V,)
    return logits - counts * p.frequency_penalty - (counts > 0).to(logits.dtype) * p.presence_penalty


Logprob = tuple[float, "list[tuple[int, float]] | None"]  # the chosen token's logprob, its top alternatives


def bias_logits(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """The (B, V) logits with every row's logit_bias added (one scatter for the batch); `logits` itself when no row
    has a bias."""
    rows = [i for i, p in enumerate(params) if p.logit_bias]
    if not rows:
        return logits
    r = [i for i in rows for _ in params[i].logit_bias]
    c = [t for i in rows for t, _ in params[i].logit_bias]
    v = [b for i in rows for _, b in params[i].logit_bias]
    dev = logits.device
    return logits.index_put((torch.tensor(r, device=dev), torch.tensor(c, device=dev)),
                            torch.tensor(v, dtype=logits.dtype, device=dev), accumulate=True)


def sample_batch(
    logits: torch.Tensor, params: list[SamplingParams], gens: list[torch.Generator],
    histories: list[list[int]] | None = None, select: torch.Tensor | None = None,
) -> tuple[list[int], list[Logprob]]:
    """Sample every row of (B, V) logits on their device; returns the tokens and each row's (logprob, top) of the
    raw logits (0.0 and None when that row asked for no logprobs). `histories[i]`: the tokens row i generated so
    far, for its penalties.

    The logits stay where they are (the GPU when serving on one): greedy rows take one batched argmax, only the
    rows that sample or are penalized are handled one by one, the log-softmax is computed only for the rows that
    asked for logprobs, and what comes to the host is the B token ids and those logprobs (one copy each).

    `select`: the (B, V) logits to choose from when they differ from the model's (grammar masks: -inf outside);
    each row's logit_bias is added to them here."""
    logits = logits.float()
    sel = bias_logits(logits if select is None else select.float(), params)
    tokens = torch.argmax(sel, dim=-1)  # (B,): every greedy row at once
    for i, p in enumerate(params):
        penalized = histories is not None and p.penalized and histories[i]
        if p.temperature < GREEDY_BELOW and not penalized:
            continue
        row = apply_penalties(sel[i], p, histories[i]) if penalized else sel[i]
        tokens[i : i + 1] = _sample_tensor(row, p, gens[i])
    ids = to_host(tokens)  # the one host sync for the tokens
    return ids, batch_logprobs(logits, tokens, [p.logprobs for p in params])


def batch_logprobs(logits: torch.Tensor, tokens: torch.Tensor, ks: list[int | None]) -> list[Logprob]:
    """(logprob of the chosen token, its k most likely alternatives or None) per row, from the raw (B, V) logits;
    rows with k None get (0.0, None) and cost nothing."""
    out: list[Logprob] = [(0.0, None)] * len(ks)
    rows = [i for i, k in enumerate(ks) if k is not None]
    if not rows:
        return out
    idx = torch.tensor(rows, dtype=torch.long, device=logits.device)
    logp = torch.log_softmax(logits.index_select(0, idx), dim=-1)  # (R, V)
    chosen = to_host(logp.gather(1, tokens.index_select(0, idx).unsqueeze(1)).squeeze(1))
    kmax = min(max(ks[i] for i in rows), logp.shape[-1])
    if kmax:
        vals, tids = torch.topk(logp, kmax, dim=-1)
        vals, tids = to_host(vals), to_host(tids)
    for r, i in enumerate(rows):
        k = ks[i]
        top = list(zip(tids[r][:k], vals[r][:k], strict=True)) if k else None
        out[i] = (chosen[r], top)
    return out
