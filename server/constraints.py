"""Constrained decoding for `response_format` (docs/DESIGN.md §6): `json_object` and `json_schema` become a grammar
that every sampled token of the row must follow, so the output always parses (and, with a schema, validates), or
the row ends with finish_reason "length".

The grammar engine is llguidance (the one vLLM, SGLang and llama.cpp's server use): a single abi3 wheel with no
dependencies, so it installs on any CPU; it compiles a JSON schema lazily (no up-front automaton over the vocabulary,
as outlines-core builds) and computes one row's next-token mask in tens of microseconds. xgrammar was the other
candidate; its wheel requires torch, transformers and triton, which would fight the pinned CPU torch.

    grammars = Grammars(tokenizer, vocab_size, stop_ids)      # one per loaded tokenizer (building it takes ~0.3 s)
    factory = grammars.compile(response_format)              # None for "text"; raises invalid(...) on a bad schema
    matcher = factory()                                      # one per row (each sample of n has its own)
    refuse = constrain_rows(matchers, selection_logits)      # per step: masks the constrained rows in place

JSON is generated compactly (no free whitespace between tokens): a small model offered free whitespace can spend its
whole budget on newlines.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from server.errors import invalid

JSON_OPTIONS = {"whitespace_flexible": False}  # compact JSON: `{"a":1}`
OBJECT_SCHEMA = {"type": "object"}  # what json_object means: any JSON object


def _llguidance():
    try:
        import llguidance
        import llguidance.hf
    except ImportError as e:  # a declared dependency; this is for a broken install
        raise invalid("response_format needs the llguidance package, which is not installed on this server.",
                      "response_format", "unsupported_parameter") from e
    return llguidance


class Grammars:
    """Grammar compilation against one tokenizer. The llguidance view of the tokenizer is built on first use."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: frozenset[int]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = sorted(stop_ids)
        self._lltok = None
        self._lock = threading.Lock()

    def lltokenizer(self):
        """The llguidance view of the tokenizer (byte-level BPE, SentencePiece-style byte fallback: what real
        checkpoints use). A tokenizer it cannot map to bytes (e.g. WordPiece) makes response_format a 400."""
        with self._lock:
            if self._lltok is None:
                llg = _llguidance()
                try:
                    # the stop tokens are the grammar's EOS: allowed exactly when the output is complete
                    self._lltok = llg.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size,
                                                        eos_token=self.stop_ids or None)
                except (ValueError, TypeError, AttributeError) as e:
                    self._lltok = e
            if isinstance(self._lltok, Exception):
                raise invalid(f"response_format is not available with this model's tokenizer: {self._lltok}",
                              "response_format", "unsupported_parameter")
            return self._lltok

    def compile(self, response_format: Any) -> Callable[[], Any] | None:
        """A factory of fresh matchers for the request's response_format, or None when unconstrained. An invalid or
        unsupported schema is a 400 naming response_format."""
        if response_format is None or response_format.type == "text":
            return None
        if response_format.type == "json_object":
            return self.compile_schema(OBJECT_SCHEMA, "response_format")
        schema = response_format.json_schema.schema_
        # OpenAI: a json_schema without a schema constrains to an object
        return self.compile_schema(OBJECT_SCHEMA if schema is None else schema, "response_format.json_schema.schema")

    def compile_schema(self, schema: Any, param: str) -> Callable[[], Any]:
        """A factory of matchers for JSON that validates against `schema` (a forced tool call's arguments too);
        400 invalid_schema naming `param` when llguidance cannot use it."""
        llg = _llguidance()
        try:
            grammar = llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_OPTIONS)
        except (ValueError, TypeError) as e:
            raise invalid(f"{param}: not a JSON schema: {e}", param, "invalid_schema") from e
        tok = self.lltokenizer()
        err = llg.LLMatcher.validate_grammar(grammar, tok)
        if err:
            raise invalid(f"{param}: the schema cannot be used: {err}", param, "invalid_schema")

        def matcher():
            return llg.LLMatcher(tok, grammar, log_level=0)

        return matcher


def allowed_mask(matcher: Any, width: int) -> torch.Tensor:
    """(width,) bool: the tokens the matcher allows next (bit i of 32-bit word j is token 32 j + i)."""
    words = torch.empty((1, (width + 31) // 32), dtype=torch.int32)
    matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * 4)
    bits = np.unpackbits(words.numpy().view(np.uint8), bitorder="little")[:width]
    return torch.from_numpy(bits.astype(bool))


def constrain_rows(matchers: list[Any], sel: torch.Tensor) -> dict[int, str]:
    """Mask the constrained rows of the (B, V) selection logits in place (-inf outside the grammar); the rows
    without a matcher are not touched. Returns {row: reason} for rows whose grammar is in an error state or allows
    no token: those rows fail alone."""
    failed: dict[int, str] = {}
    for i, m in enumerate(matchers):
        if m is None:
            continue
        if m.is_error():
            failed[i] = m.get_error() or "the grammar is in an error state"
            continue
        ok = allowed_mask(m, sel.shape[-1])
        if not bool(ok.any()):
            failed[i] = "the grammar allows no next token"
            continue
        sel[i].masked_fill_(~ok.to(sel.device), float("-inf"))
    return failed
