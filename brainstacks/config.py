"""Configuration dataclasses for the library: the single source of truth for every default.

The recipe parser (training/recipe.py), the CLI and the docs read their defaults from here. Each dataclass
round-trips through plain dicts (`to_dict` / `from_dict`) so it can live in JSON manifests and TOML recipes;
`from_dict` refuses unknown keys with an error naming them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from brainstacks.errors import ConfigError

TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map "float32" | "bfloat16" | "float16" (or a torch.dtype) to a torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[str(name).replace("torch.", "")]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class _DictMixin:
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "") -> Any:
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            ctx = f"{where}: " if where else ""
            raise ConfigError(f"{ctx}unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
        obj = cls(**data)
        obj.validate(where)  # type: ignore[attr-defined]
        return obj

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class StackConfig(_DictMixin):
    """One MoE-LoRA stack: `experts` LoRA experts of rank `rank` per target projection, top-k noisy gating.

    scale = alpha / sqrt(rank) with rsLoRA (default), alpha / rank otherwise.
    """

    experts: int = 4
    top_k: int = 2
    rank: int = 16
    alpha: float = 16.0
    rslora: bool = True
    targets: tuple[str, ...] = TARGETS
    aux_loss_coef: float = 0.01
    frozen_dtype: str = "bfloat16"  # storage dtype of frozen stacks (compact; the delta is computed in it)

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def validate(self, where: str = "") -> None:
        ctx = f"{where}: " if where else ""
        if not (isinstance(self.experts, int) and self.experts >= 1):
            raise ConfigError(f"{ctx}experts must be an integer >= 1, got {self.experts!r}")
        if not (isinstance(self.top_k, int) and 1 <= self.top_k <= self.experts):
            raise ConfigError(f"{ctx}top_k must be an integer in [1, experts={self.experts}], got {self.top_k!r}")
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ConfigError(f"{ctx}rank must be an integer >= 1, got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ConfigError(f"{ctx}alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.rslora, bool):
            raise ConfigError(f"{ctx}rslora must be true or false, got {self.rslora!r}")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"{ctx}targets must be distinct names from {list(TARGETS)}, got {list(self.targets)}")
        if not (isinstance(self.aux_loss_coef, (int, float)) and self.aux_loss_coef >= 0):
            raise ConfigError(f"{ctx}aux_loss_coef must be >= 0, got {self.aux_loss_coef!r}")
        parse_dtype(self.frozen_dtype)


@dataclass
class RouterConfig(_DictMixin):
    """The sigmoid meta-router's architecture and serving policy (DESIGN §2)."""

    router_tokens: int = 256  # prompt tokens the router reads; the same in training and serving
    mid_weight: float = 0.45  # features = mid_weight * h[mid layer] + last_weight * h[last layer]
    last_weight: float = 0.55
    hidden: int = 512  # width of the projected token features and of the queries
    mlp_hidden: int = 512  # MLP 2*hidden -> mlp_hidden -> hidden
    dropout: float = 0.1
    # Std of the learned pooling queries at init. Token features are LayerNorm'd (entries ~1), so queries ~N(0, 0.02)
    # score every token alike: each domain's pool is the same mean and training sits on a plateau (measured on a
    # tiny base, 120 prompts of 3 domains, lr 8e-4: 67% / 72% validation top-1 after 8 / 16 epochs with 0.02,
    # 89% / 100% with 1.0).
    query_init_std: float = 1.0
    min_temperature: float = 0.3
    max_temperature: float = 3.0
    min_weight: float = 0.12  # serving: a weight <= min_weight becomes 0 (domain skipped)
    floors: dict[str, float] = field(default_factory=dict)  # serving: per-domain lower bounds (paper: chat 0.2)

    def validate(self, where: str = "") -> None:
        ctx = f"{where}: " if where else ""
        if not (isinstance(self.router_tokens, int) and 1 <= self.router_tokens <= 65536):
            raise ConfigError(f"{ctx}router_tokens must be an integer in [1, 65536], got {self.router_tokens!r}")
        if not (isinstance(self.min_weight, (int, float)) and 0 <= self.min_weight < 1):
            raise ConfigError(f"{ctx}min_weight must be in [0, 1), got {self.min_weight!r}")
        if not isinstance(self.floors, dict):
            raise ConfigError(f"{ctx}floors must be a table of domain = weight, got {self.floors!r}")
        for name, v in self.floors.items():
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ConfigError(f"{ctx}floors.{name} must be in [0, 1], got {v!r}")
        if not (0 < self.min_temperature <= self.max_temperature):
            raise ConfigError(f"{ctx}temperature range [{self.min_temperature}, {self.max_temperature}] is empty")
        for name in ("hidden", "mlp_hidden"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"{ctx}{name} must be a positive integer, got {v!r}")
        if not (0 <= self.dropout < 1):
            raise ConfigError(f"{ctx}dropout must be in [0, 1), got {self.dropout!r}")


@dataclass
class NullspaceConfig(_DictMixin):
    """Null-space projection against earlier domains (DESIGN §2)."""

    enabled: bool = True
    samples: int = 400  # sample inputs whose frozen-stack output deltas are collected
    directions: int = 64  # K: top right singular vectors kept per projection

    def validate(self, where: str = "") -> None:
        ctx = f"{where}: " if where else ""
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"{ctx}enabled must be true or false, got {self.enabled!r}")
        if not (isinstance(self.samples, int) and self.samples >= 1):
            raise ConfigError(f"{ctx}samples must be an integer >= 1, got {self.samples!r}")
        if not (isinstance(self.directions, int) and self.directions >= 1):
            raise ConfigError(f"{ctx}directions must be an integer >= 1, got {self.directions!r}")
