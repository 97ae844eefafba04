"""Token ids → text for one choice: incremental detokenization and stop strings across token boundaries.

`ChoiceText.add(token_id)` decodes only a short window of recent ids (a byte-level token may end mid-character, which
decodes to U+FFFD; such text is held until the character completes). Stop strings are searched in the text as it
grows, so a stop split over several tokens is found; `ready()` returns the text that can be sent now: everything up to
the first stop, minus any tail that could still become a stop (held back while streaming).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenInfo:
    token_id: int
    text: str
    logprob: float
    top: list[tuple[int, float]] | None
    offset: int  # character offset of this token's text in the choice's text


@dataclass
class ChoiceText:
    tokenizer: object
    stops: list[str]
    skip_ids: frozenset[int] = frozenset()  # e.g. EOS: counted, never shown
    keep_tokens: bool = True  # record TokenInfo per token (for logprobs)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    n_tokens: int = 0
    sent: int = 0  # characters of `text` already handed out
    finish_reason: str | None = None
    _prefix: int = 0
    _read: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def add(self, token_id: int, logprob: float = 0.0, top: list[tuple[int, float]] | None = None) -> bool:
        """Append one token; returns True when a stop string was found (the choice is then finished)."""
        if self.done:
            return False
        self.n_tokens += 1
        if token_id in self.skip_ids:
            return False
        self.ids.append(token_id)
        before = len(self.text)
        delta = self._decode_delta()
        if self.keep_tokens:  # per-token text costs a decode each: only when logprobs are returned
            self.tokens.append(TokenInfo(token_id, self._piece(token_id), logprob, top, before))
        if not delta:
            return False
        self.text += delta
        if self.stops:
            longest = max(len(s) for s in self.stops)
            start = max(0, before - longest + 1)
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.finish_reason = "stop"
                return True
        return False

    def _decode_delta(self) -> str:
        dec = self.tokenizer.decode
        prefix_text = dec(self.ids[self._prefix : self._read], skip_special_tokens=True)
        new_text = dec(self.ids[self._prefix :], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason

    def ready(self) -> str:
        """Text not yet handed out that is safe to send (all of it once finished)."""
        end = len(self.text)
        if not self.done and self.stops:
            end -= _held(self.text, self.stops)
        out = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out


def _held(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
