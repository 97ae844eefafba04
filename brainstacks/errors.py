"""Typed errors a user can cause. Each message names the file, field or value at fault.

The convention: anything a request, a file, a recipe or an argument can trigger raises one of these (the CLI turns
them into one line and exit status 2, the server into an OpenAI-shaped 4xx). A plain ValueError or RuntimeError is
left only where a broken internal invariant is a bug, not bad input (two KV caches of different shapes merged, a
warm-up that never finished), so its traceback stays visible.
"""

from __future__ import annotations


class BrainstacksError(Exception):
    """Base class for every error the project raises on purpose (bad input, bad files, bad config)."""


class ConfigError(BrainstacksError, ValueError):
    """A configuration value (recipe key, settings field, argument) is invalid."""


class BaseModelError(BrainstacksError):
    """The base model directory cannot be loaded or has no usable target projections."""


class StackFormatError(BrainstacksError):
    """A stack's tensors or metadata are malformed or do not fit the model."""


class BundleError(BrainstacksError):
    """A bundle on disk is refused: missing/corrupt file, unknown version, fingerprint or shape mismatch, path
    escape."""

    def __init__(self, message: str, reasons: list[str] | None = None):
        super().__init__(message)
        self.reasons = reasons or [message]


class AdapterError(BrainstacksError):
    """An adapter to import (a PEFT LoRA directory, or a stack directory) is refused: unsupported type or option,
    a module we do not wrap, a shape that does not fit the base, a corrupt or non-finite file, a domain that exists."""


class FingerprintMismatch(BundleError):
    """The bundle was built for a different base model."""


class RoutingError(BrainstacksError, ValueError):
    """Domain weights are malformed: unknown domain, wrong shape, or a value that is negative or not finite (weights
    above 1 are accepted: they scale a stack up)."""


class UnsupportedArchitecture(BaseModelError):
    """The base model's architecture has no text decoder layers with the target projections (e.g. GPT-2)."""


def run_command(func, args, prog: str) -> int:
    """The one CLI error handler (`brainstacks ...` and `python -m training ...`): run a subcommand's `func(args)`;
    a typed error is one line on stderr and exit status 2, Ctrl-C is 130, anything else keeps its traceback."""
    import sys

    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrainstacksError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
