"""The training recipe (DESIGN §5): a TOML file, parsed and validated in full before any work starts.

    recipe = load_recipe("recipes/demo.toml")     # raises ConfigError naming the file, key and value at fault
    recipe.stack          # brainstacks.config.StackConfig
    recipe.train          # TrainConfig (defined here: the single source of truth for training defaults)
    recipe.router         # brainstacks.config.RouterConfig (serving-side: router_tokens, min_weight, floors)
    recipe.router_train   # RouterTrainConfig (defined here)
    recipe.domains        # [DomainSpec(name, train, valid, format, stage)], in curriculum order
    recipe.mixed          # [MixedSet(file, domains)]

Sections and keys are exactly DESIGN §5's; any other key is an error
(`recipe.toml: [train] unknown key 'stpes'`). Every value is type- and range-checked; files named by the recipe
are resolved relative to the recipe file and must exist. Omitted keys take the defaults of the config dataclasses
(StackConfig, RouterConfig, NullspaceConfig from `brainstacks.config`; TrainConfig, RouterTrainConfig below).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from brainstacks.errors import ConfigError

FORMATS = ("prompt_completion", "messages", "text", "preference")
STAGES = ("sft", "dpo")
QUANTIZE = ("nf4", "fp4", "none")
DTYPES = ("float32", "bfloat16", "float16")
# Used as a directory name inside the bundle (stacks/<domain>/<k>) and as an OpenAI model suffix; mirrors
# brainstacks.stacks.DOMAIN_NAME (checked equal in tests).
DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class TrainConfig:
    """Inner-loop (residual boosting) settings. Recipe keys: everything but the fields marked 'not a recipe key'."""

    steps_per_round: int = 400  # optimizer steps per boosting round
    max_rounds: int = 3  # at most this many stacks per domain
    min_improvement: float = 0.002  # add another round only while validation loss improves by at least this
    lr: float = 2e-4
    batch_size: int = 4  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    seq_len: int = 512  # tokens per training sequence (longer examples are truncated)
    eval_every: int = 50  # optimizer steps between validation passes (best snapshot kept and restored)
    seed: int = 0
    # Not recipe keys (DESIGN §5 fixes the key set); tuned here, read by the loops.
    warmup_frac: float = 0.05  # fraction of steps_per_round spent in linear warmup
    min_lr_frac: float = 0.1  # cosine floor, as a fraction of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    spike_factor: float = 1.5  # stop a round early when validation loss exceeds best * spike_factor
    valid_fraction: float = 0.1  # held-out share when a domain has no valid file
    max_eval_batches: int = 50  # validation batches per evaluation (bounds eval cost)
    dpo_beta: float = 0.1  # DPO temperature (stage = "dpo")


@dataclass
class RouterTrainConfig:
    """Meta-router training (DESIGN §2). Recipe keys: enabled, oracle_samples, epochs, lr."""

    enabled: bool = True
    oracle_samples: int = 200  # prompt/answer pairs per domain scored by the outcome-based oracle
    epochs: int = 8
    lr: float = 8e-4
    # Not recipe keys.
    weight_decay: float = 0.01
    batch_size: int = 16
    oracle_mix: float = 0.8  # target = oracle_mix * oracle + (1 - oracle_mix) * label
    greedy_threshold: float = 0.01  # the oracle adds a domain only if it lowers the loss by more than this
    confidence_coef: float = 0.05  # weight of the confidence penalty mean(max(0, margin - |p - 0.5|))
    confidence_margin: float = 0.3
    valid_fraction: float = 0.15  # share of unique prompts held out to choose the best epoch
    examples_per_domain: int = 400  # examples per domain (the first oracle_samples of them oracle-scored)


@dataclass
class BaseSpec:
    model: Path | str  # absolute path of a HF directory or .gguf file, or "package:<dist>/<file>"
    quantize: str = "nf4"
    dtype: str = "float32"


@dataclass
class DomainSpec:
    name: str
    train: Path
    valid: Path | None = None
    format: str = "prompt_completion"
    stage: str = "sft"


@dataclass
class MixedSet:
    file: Path
    domains: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    path: Path
    base: BaseSpec
    stack: Any  # brainstacks.config.StackConfig
    train: TrainConfig
    nullspace: Any  # brainstacks.config.NullspaceConfig
    router: Any  # brainstacks.config.RouterConfig
    router_train: RouterTrainConfig
    domains: list[DomainSpec]
    mixed: list[MixedSet]

    def domain(self, name: str) -> DomainSpec:
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(name)


# --- value checkers: each returns the (possibly converted) value or raises ConfigError with the full context ----


class _Ctx:
    """Builds error messages: '<file>: [section] key ...'."""

    def __init__(self, path: Path):
        self.path = path

    def err(self, where: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where} {msg}" if where else f"{self.path}: {msg}")


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[Any], Any]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be an integer, got {v!r}")
        if lo is not None and v < lo:
            raise ValueError(f"must be >= {lo}, got {v!r}")
        if hi is not None and v > hi:
            raise ValueError(f"must be <= {hi}, got {v!r}")
        return v

    return check


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[Any], Any]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v!r}")
        v = float(v)
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise ValueError(f"must be {'>' if lo_open else '>='} {lo}, got {v!r}")
        if hi is not None and v > hi:
            raise ValueError(f"must be <= {hi}, got {v!r}")
        return v

    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _choice(options: tuple[str, ...]) -> Callable[[Any], Any]:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError(f"must be one of {', '.join(repr(o) for o in options)}, got {v!r}")
        return v

    return check


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"must be a non-empty string, got {v!r}")
    return v


def _targets(v: Any) -> tuple[str, ...]:
    from brainstacks.config import TARGETS

    if not isinstance(v, list) or not v or not all(isinstance(t, str) for t in v):
        raise ValueError(f"must be a non-empty list of projection names, got {v!r}")
    bad = [t for t in v if t not in TARGETS]
    if bad:
        raise ValueError(f"has unknown projection {bad[0]!r} (known: {', '.join(TARGETS)})")
    if len(set(v)) != len(v):
        raise ValueError(f"lists a projection twice: {v!r}")
    return tuple(v)


# The contract key set (DESIGN §5) with each key's checker.
_BASE_KEYS = {"model": _str, "quantize": _choice(QUANTIZE), "dtype": _choice(DTYPES)}
_STACK_KEYS = {
    "experts": _int(1, 64),
    "top_k": _int(1, 64),
    "rank": _int(1, 1024),
    "alpha": _float(0.0, lo_open=True),
    "rslora": _bool,
    "targets": _targets,
    "aux_loss_coef": _float(0.0),
}
_TRAIN_KEYS = {
    "steps_per_round": _int(1),
    "max_rounds": _int(1, 64),
    "min_improvement": _float(0.0),
    "lr": _float(0.0, 1.0, lo_open=True),
    "batch_size": _int(1),
    "grad_accum": _int(1),
    "seq_len": _int(8),
    "eval_every": _int(1),
    "seed": _int(0),
}
_NULLSPACE_KEYS = {"enabled": _bool, "samples": _int(1), "directions": _int(1)}
_ROUTER_KEYS = {
    "enabled": _bool,
    "router_tokens": _int(1),
    "oracle_samples": _int(1),
    "epochs": _int(1),
    "lr": _float(0.0, 1.0, lo_open=True),
    "min_weight": _float(0.0, 1.0),
    "floors": None,  # checked against the domain list below
}
_DOMAIN_KEYS = {"name", "train", "valid", "format", "stage"}
_MIXED_KEYS = {"file", "domains"}
_TOP_KEYS = {"base", "stack", "train", "nullspace", "router", "domains"}


def _section(ctx: _Ctx, doc: dict, name: str, keys: dict[str, Any]) -> dict[str, Any]:
    """Check one [section]: a table whose keys are all known and whose values pass their checkers."""
    raw = doc.get(name, {})
    if not isinstance(raw, dict):
        raise ctx.err("", f"[{name}] must be a table, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if name == "router" and key == "mixed":
            continue
        if key not in keys:
            raise ctx.err(f"[{name}]", f"unknown key {key!r} (known: {', '.join(sorted(keys))})")
        check = keys[key]
        if check is None:
            out[key] = value
            continue
        try:
            out[key] = check(value)
        except ValueError as e:
            raise ctx.err(f"[{name}] {key}", str(e)) from None
    return out


def _resolve_file(ctx: _Ctx, where: str, value: Any, root: Path, directory: bool = False) -> Path:
    try:
        value = _str(value)
    except ValueError as e:
        raise ctx.err(where, str(e)) from None
    p = Path(value).expanduser()
    p = (p if p.is_absolute() else root / p).resolve()
    if directory:
        if not p.is_dir():
            raise ctx.err(where, f"{value!r}: no such directory ({p})")
    elif not p.is_file():
        raise ctx.err(where, f"{value!r}: no such file ({p})")
    return p


def _resolve_base(ctx: _Ctx, value: Any, root: Path, check_files: bool) -> Path | str:
    """[base] model: a HF directory, a .gguf file (converted once, brainstacks.gguf), or "package:<dist>/<file>"."""
    from brainstacks.errors import BaseModelError
    from brainstacks.gguf import is_gguf, is_package_ref, package_file

    if isinstance(value, str) and is_package_ref(value):
        if check_files:
            try:
                package_file(value)
            except BaseModelError as e:
                raise ctx.err("[base] model", str(e)) from None
        return value
    if not check_files:
        return (root / str(value)).resolve()
    return _resolve_file(ctx, "[base] model", value, root, directory=not (isinstance(value, str) and is_gguf(value)))


def _make(ctx: _Ctx, section: str, cls: type, values: dict[str, Any], rename: dict[str, str] | None = None) -> Any:
    """Instantiate a config dataclass with its defaults overridden by `values` (recipe key -> field)."""
    rename = rename or {}
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, v in values.items():
        fname = rename.get(key, key)
        if fname not in names:  # the recipe contract names a key the config class does not carry
            raise ctx.err(f"[{section}] {key}", f"is not supported by {cls.__name__}")
        kwargs[fname] = v
    try:
        obj = cls(**kwargs)
        if hasattr(obj, "validate"):  # the core config classes check their own invariants too
            obj.validate()
        return obj
    except (TypeError, ValueError) as e:
        raise ctx.err(f"[{section}]", str(e)) from None


def parse_recipe(doc: dict[str, Any], path: Path, check_files: bool = True) -> Recipe:
    """Validate an already-decoded TOML document. `path` is used for messages and relative paths."""
    from brainstacks.config import NullspaceConfig, RouterConfig, StackConfig

    ctx = _Ctx(path)
    root = path.parent
    for key in doc:
        if key not in _TOP_KEYS:
            raise ctx.err("", f"unknown section or key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})")

    base_raw = _section(ctx, doc, "base", _BASE_KEYS)
    if "model" not in base_raw:
        raise ctx.err("[base]", "missing required key 'model'")
    model = _resolve_base(ctx, base_raw["model"], root, check_files)
    base = BaseSpec(model=model, quantize=base_raw.get("quantize", "nf4"), dtype=base_raw.get("dtype", "float32"))

    stack_raw = _section(ctx, doc, "stack", _STACK_KEYS)
    stack = _make(ctx, "stack", StackConfig, stack_raw)
    if stack.top_k > stack.experts:
        raise ctx.err("[stack] top_k", f"must be <= experts ({stack.experts}), got {stack.top_k}")

    train = _make(ctx, "train", TrainConfig, _section(ctx, doc, "train", _TRAIN_KEYS))
    nullspace = _make(ctx, "nullspace", NullspaceConfig, _section(ctx, doc, "nullspace", _NULLSPACE_KEYS))

    domains = _parse_domains(ctx, doc, root, check_files)
    names = [d.name for d in domains]

    router_raw = _section(ctx, doc, "router", _ROUTER_KEYS)
    floors = router_raw.pop("floors", None)
    if floors is not None:
        if not isinstance(floors, dict):
            raise ctx.err("[router] floors", f"must be a table {{domain = weight}}, got {floors!r}")
        for dom, w in floors.items():
            if dom not in names:
                raise ctx.err(f"[router] floors.{dom}", f"names unknown domain {dom!r} (domains: {', '.join(names)})")
            try:
                floors[dom] = _float(0.0, 1.0)(w)
            except ValueError as e:
                raise ctx.err(f"[router] floors.{dom}", str(e)) from None
        router_raw["floors"] = dict(floors)
    serving = {k: v for k, v in router_raw.items() if k in ("router_tokens", "min_weight", "floors")}
    training = {k: v for k, v in router_raw.items() if k not in serving}
    router = _make(ctx, "router", RouterConfig, serving)
    router_train = _make(ctx, "router", RouterTrainConfig, training)

    mixed = _parse_mixed(ctx, doc, root, names, check_files)
    return Recipe(
        path=path,
        base=base,
        stack=stack,
        train=train,
        nullspace=nullspace,
        router=router,
        router_train=router_train,
        domains=domains,
        mixed=mixed,
    )


def _parse_domains(ctx: _Ctx, doc: dict, root: Path, check_files: bool) -> list[DomainSpec]:
    raw = doc.get("domains")
    if raw is None:
        raise ctx.err("", "no [[domains]]: a recipe trains at least one domain")
    if not isinstance(raw, list) or not all(isinstance(d, dict) for d in raw):
        raise ctx.err("", "'domains' must be an array of tables ([[domains]])")
    out: list[DomainSpec] = []
    seen: set[str] = set()
    for i, d in enumerate(raw):
        where = f"[[domains]] #{i + 1}"
        for key in d:
            if key not in _DOMAIN_KEYS:
                raise ctx.err(where, f"unknown key {key!r} (known: {', '.join(sorted(_DOMAIN_KEYS))})")
        for key in ("name", "train"):
            if key not in d:
                raise ctx.err(where, f"missing required key {key!r}")
        name = d["name"]
        if not isinstance(name, str) or not DOMAIN_NAME.match(name):
            raise ctx.err(
                f"{where} name", f"must be 1-64 letters, digits, '_', '.', '-' (not starting with one), got {name!r}"
            )
        if name in seen:
            raise ctx.err(f"{where} name", f"duplicate domain {name!r}")
        seen.add(name)
        where = f"[[domains]] {name!r}"
        try:
            fmt = _choice(FORMATS)(d.get("format", "prompt_completion"))
        except ValueError as e:
            raise ctx.err(f"{where} format", str(e)) from None
        try:
            stage = _choice(STAGES)(d.get("stage", "sft"))
        except ValueError as e:
            raise ctx.err(f"{where} stage", str(e)) from None
        if (stage == "dpo") != (fmt == "preference"):
            raise ctx.err(
                f"{where} stage",
                f"{stage!r} does not fit format {fmt!r}: stage 'dpo' takes format 'preference' data, and only it",
            )

        def file(key: str, _d=d, _where=where) -> Path:
            if check_files:
                return _resolve_file(ctx, f"{_where} {key}", _d[key], root)
            return (root / _d[key]).resolve()

        out.append(
            DomainSpec(
                name=name, train=file("train"), valid=file("valid") if "valid" in d else None, format=fmt, stage=stage
            )
        )
    return out


def _parse_mixed(ctx: _Ctx, doc: dict, root: Path, names: list[str], check_files: bool) -> list[MixedSet]:
    router = doc.get("router", {})
    raw = router.get("mixed", []) if isinstance(router, dict) else []
    if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
        raise ctx.err("", "'router.mixed' must be an array of tables ([[router.mixed]])")
    out = []
    for i, m in enumerate(raw):
        where = f"[[router.mixed]] #{i + 1}"
        for key in m:
            if key not in _MIXED_KEYS:
                raise ctx.err(where, f"unknown key {key!r} (known: {', '.join(sorted(_MIXED_KEYS))})")
        for key in ("file", "domains"):
            if key not in m:
                raise ctx.err(where, f"missing required key {key!r}")
        doms = m["domains"]
        if not isinstance(doms, list) or not doms or not all(isinstance(x, str) for x in doms):
            raise ctx.err(f"{where} domains", f"must be a non-empty list of domain names, got {doms!r}")
        for x in doms:
            if x not in names:
                raise ctx.err(f"{where} domains", f"names unknown domain {x!r} (domains: {', '.join(names)})")
        path = _resolve_file(ctx, f"{where} file", m["file"], root) if check_files else (root / m["file"]).resolve()
        out.append(MixedSet(file=path, domains=list(dict.fromkeys(doms))))
    return out


def load_recipe(path: str | Path, check_files: bool = True) -> Recipe:
    """Read and validate a recipe file. Raises ConfigError (naming file, key and value) on any problem."""
    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read recipe: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_recipe(doc, path, check_files=check_files)
