"""Per-row token sampling: greedy, temperature, top-k, top-p, each row with its own torch.Generator.

A row's generator is seeded from the request's seed (or a random one), so a seeded sampled completion draws the same
tokens whatever its batch mates are. Logprobs are those of the model's distribution (the raw logits, before
penalties, temperature and truncation), as OpenAI reports them.

Presence and frequency penalties follow OpenAI's definition over the tokens this row has generated so far (c[j] times
token j was sampled): `logit[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty`, before greedy or
sampled selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def sample_row(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator) -> int:
    """Pick one token from a row's logits (V,) float32."""
    if p.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
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
    if not bool(torch.isfinite(probs).all()):  # defensive: one row's bad numbers must not fail its batch mates
        return int(torch.argmax(logits))
    return int(torch.multinomial(probs, 1, generator=gen))


def apply_penalties(logits: torch.Tensor, p: SamplingParams, history: list[int]) -> torch.Tensor:
    """A row's (V,) logits with OpenAI's presence/frequency penalties over its generated tokens `history`."""
    if not p.penalized or not history:
        return logits
    V = logits.shape[-1]
    ids = torch.tensor([t for t in history if 0 <= t < V], dtype=torch.long)
    counts = torch.bincount(ids, minlength=V).to(logits.dtype)  # (V,)
    return logits - counts * p.frequency_penalty - (counts > 0).to(logits.dtype) * p.presence_penalty


def sample_batch(
    logits: torch.Tensor, params: list[SamplingParams], gens: list[torch.Generator],
    histories: list[list[int]] | None = None,
) -> tuple[list[int], torch.Tensor]:
    """Sample every row of (B, V) logits; returns the tokens and the (B, V) log-softmax for logprobs (of the raw
    logits). `histories[i]`: the tokens row i generated so far, for its penalties."""
    logits = logits.float().cpu()
    tokens = []
    for i in range(logits.shape[0]):
        row = logits[i] if histories is None else apply_penalties(logits[i], params[i], histories[i])
        tokens.append(sample_row(row, params[i], gens[i]))
    return tokens, torch.log_softmax(logits, dim=-1)
