"""Configuration dataclasses for the library: the single source of truth for every default.

The recipe parser (training/recipe.py), the CLI and the docs read their defaults from here. Bounds are declared
once, on the field (`bounded(default, lo, hi)`): `validate()` and the recipe parser both check them with
`check_field`, so the library and the recipe accept the same values. Each dataclass round-trips through plain dicts
(`to_dict` / `from_dict`) so it can live in JSON manifests and TOML recipes; `from_dict` refuses unknown keys with an
error naming them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from brainstacks.errors import ConfigError

TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# "int8" is a storage format for frozen stacks (brainstacks.int8_storage): int8 with per-row scales on disk,
# bfloat16 in memory, so it parses to bfloat16.
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.bfloat16}
DTYPES: tuple[str, ...] = tuple(_DTYPES)  # frozen stacks' storage
COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")  # what a model computes in ([base] dtype)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map "float32" | "bfloat16" | "float16" | "int8" (or a torch.dtype) to the in-memory torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[str(name).replace("torch.", "")]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def bounded(default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose kind (the default's type) and bounds are declared once, for `check_field`.

    `lo`/`hi` are inclusive unless `lo_open`/`hi_open`; `choices` lists the allowed strings."""
    meta = {"min": lo, "max": hi, "min_open": lo_open, "max_open": hi_open, "choices": choices}
    return field(default=default, metadata=meta)


def check_field(f: dataclasses.Field, value: Any) -> Any:
    """`value` checked against field `f`'s declaration (see `bounded`); returns it (a float field's int as a float).

    Raises ValueError("must be ..., got ...") for the caller to prefix with where the value came from."""
    kind, m = type(f.default), f.metadata
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        value = float(value)
    if kind is str and not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    choices = m.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"must be one of {', '.join(repr(o) for o in choices)}, got {value!r}")
    lo, hi = m.get("min"), m.get("max")
    if lo is not None and (value <= lo if m.get("min_open") else value < lo):
        raise ValueError(f"must be {'>' if m.get('min_open') else '>='} {lo}, got {value!r}")
    if hi is not None and (value >= hi if m.get("max_open") else value > hi):
        raise ValueError(f"must be {'<' if m.get('max_open') else '<='} {hi}, got {value!r}")
    return value


def declared_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of config class `cls` declared with `bounded`, by name."""
    return {f.name: f for f in dataclasses.fields(cls) if "min" in f.metadata}


class ConfigBase:
    """What every config dataclass shares: dict round trip and the check of its `bounded` fields."""

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

    def check_declared(self, where: str = "") -> None:
        """Raise ConfigError naming the first field whose value its declaration refuses."""
        ctx = f"{where}: " if where else ""
        for name, f in declared_fields(type(self)).items():
            try:
                check_field(f, getattr(self, name))
            except ValueError as e:
                raise ConfigError(f"{ctx}{name} {e}") from None

    def validate(self, where: str = "") -> None:
        self.check_declared(where)


@dataclass
class StackConfig(ConfigBase):
    """One MoE-LoRA stack: `experts` LoRA experts of rank `rank` per target projection, top-k noisy gating.

    scale = alpha / sqrt(rank) with rsLoRA (default), alpha / rank otherwise.
    """

    experts: int = bounded(4, 1, 64)
    top_k: int = bounded(2, 1, 64)  # and <= experts
    rank: int = bounded(16, 1, 1024)
    alpha: float = bounded(16.0, 0.0, lo_open=True)
    rslora: bool = bounded(True)
    targets: tuple[str, ...] = TARGETS
    aux_loss_coef: float = bounded(0.01, 0.0)
    # storage dtype of frozen stacks (compact; the delta is computed in it)
    frozen_dtype: str = bounded("bfloat16", choices=DTYPES)

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def validate(self, where: str = "") -> None:
        ctx = f"{where}: " if where else ""
        self.check_declared(where)
        if self.top_k > self.experts:
            raise ConfigError(f"{ctx}top_k must be <= experts ({self.experts}), got {self.top_k!r}")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"{ctx}targets must be distinct names from {list(TARGETS)}, got {list(self.targets)}")


FLOOR = bounded(0.0, 0.0, 1.0)  # the declaration every RouterConfig.floors value is checked against


@dataclass
class RouterConfig(ConfigBase):
    """The sigmoid meta-router's architecture and serving policy (docs/DESIGN.md §2)."""

    router_tokens: int = bounded(256, 1, 65536)  # prompt tokens the router reads; the same in training and serving
    mid_weight: float = 0.45  # features = mid_weight * h[mid layer] + last_weight * h[last layer]
    last_weight: float = 0.55
    hidden: int = bounded(512, 1)  # width of the projected token features and of the queries
    mlp_hidden: int = bounded(512, 1)  # MLP 2*hidden -> mlp_hidden -> hidden
    dropout: float = bounded(0.1, 0.0, 1.0, hi_open=True)
    # Std of the learned pooling queries at init. Token features are LayerNorm'd (entries ~1), so queries ~N(0, 0.02)
    # score every token alike: each domain's pool is the same mean and training sits on a plateau (measured on a
    # tiny base, 120 prompts of 3 domains, lr 8e-4: 67% / 72% validation top-1 after 8 / 16 epochs with 0.02,
    # 89% / 100% with 1.0).
    query_init_std: float = 1.0
    min_temperature: float = bounded(0.3, 0.0, lo_open=True)
    max_temperature: float = bounded(3.0, 0.0, lo_open=True)  # and >= min_temperature
    # serving: a weight <= min_weight becomes 0 (domain skipped); below 1, since a sigmoid never reaches 1
    min_weight: float = bounded(0.12, 0.0, 1.0, hi_open=True)
    floors: dict[str, float] = field(default_factory=dict)  # serving: per-domain lower bounds (paper: chat 0.2)

    def validate(self, where: str = "") -> None:
        ctx = f"{where}: " if where else ""
        self.check_declared(where)
        if not isinstance(self.floors, dict):
            raise ConfigError(f"{ctx}floors must be a table of domain = weight, got {self.floors!r}")
        for name, v in self.floors.items():
            try:
                check_field(FLOOR, v)
            except ValueError as e:
                raise ConfigError(f"{ctx}floors.{name} {e}") from None
        if self.min_temperature > self.max_temperature:
            raise ConfigError(f"{ctx}temperature range [{self.min_temperature}, {self.max_temperature}] is empty")


@dataclass
class NullspaceConfig(ConfigBase):
    """Null-space projection against earlier domains (docs/DESIGN.md §2)."""

    enabled: bool = bounded(True)
    samples: int = bounded(400, 1)  # sample inputs whose frozen-stack output deltas are collected
    directions: int = bounded(64, 1)  # K: top right singular vectors kept per projection
