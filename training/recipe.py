"""The training recipe (docs/DESIGN.md §5): a TOML file, parsed and validated in full before any work starts.

    recipe = load_recipe("recipes/demo.toml")     # raises ConfigError naming the file, key and value at fault
    recipe.stack          # brainstacks.config.StackConfig
    recipe.train          # training.config.TrainConfig
    recipe.router         # brainstacks.config.RouterConfig (serving-side: router_tokens, min_weight, floors)
    recipe.router_train   # training.config.RouterTrainConfig
    recipe.grpo           # training.config.GRPOConfig (stage "grpo")
    recipe.domains        # [DomainSpec(name, train, valid, format, stage, later)], in curriculum order
    recipe.mixed          # [MixedSet(file, domains)]

A domain with several stages is written as consecutive [[domains]] entries of the same name (e.g. "sft" on
prompt_completion data, then "dpo" on preference pairs or "grpo" on prompt_answer data): the first entry is the
DomainSpec, the others its `later` stages, each adding stacks of that same domain on top of its earlier ones.

Sections and keys are exactly docs/DESIGN.md §5's; any other key is an error
(`recipe.toml: [train] unknown key 'stpes'`). Every value is type- and range-checked against its field's declaration
(`brainstacks.config.bounded`), so the recipe accepts exactly what the library does; files named by the recipe are
resolved relative to the recipe file and must exist. Omitted keys take the defaults of the config dataclasses
(StackConfig, RouterConfig, NullspaceConfig from `brainstacks.config`; TrainConfig, RouterTrainConfig, GRPOConfig,
BaseSpec from `training.config`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from brainstacks.config import FLOOR, TARGETS, NullspaceConfig, RouterConfig, StackConfig, check_field, declared_fields
from brainstacks.errors import ConfigError
from brainstacks.stacks import DOMAIN_NAME
from training.config import (
    FORMATS,
    STAGE_FORMATS,
    STAGES,
    BaseSpec,
    DomainSpec,
    GRPOConfig,
    MixedSet,
    RouterTrainConfig,
    TrainConfig,
)


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
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)

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


def _declared(cls: type, *names: str) -> dict[str, Callable[[Any], Any]]:
    """Checkers for recipe keys that are fields of `cls`, read from the fields' own declarations."""
    fields = declared_fields(cls)
    return {n: partial(check_field, fields[n]) for n in names}


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
    if not isinstance(v, list) or not v or not all(isinstance(t, str) for t in v):
        raise ValueError(f"must be a non-empty list of projection names, got {v!r}")
    bad = [t for t in v if t not in TARGETS]
    if bad:
        raise ValueError(f"has unknown projection {bad[0]!r} (known: {', '.join(TARGETS)})")
    if len(set(v)) != len(v):
        raise ValueError(f"lists a projection twice: {v!r}")
    return tuple(v)


# The contract key set (docs/DESIGN.md §5) with each key's checker, derived from the config fields' declarations.
_BASE_KEYS = {"model": _str, **_declared(BaseSpec, "quantize", "dtype")}
_STACK_KEYS = {
    **_declared(StackConfig, "experts", "top_k", "rank", "alpha", "rslora", "aux_loss_coef", "frozen_dtype"),
    "targets": _targets,
}
_TRAIN_KEYS = _declared(TrainConfig, "steps_per_round", "max_rounds", "min_improvement", "lr", "batch_size",
                        "grad_accum", "seq_len", "eval_every", "seed")
_NULLSPACE_KEYS = _declared(NullspaceConfig, "enabled", "samples", "directions")
_ROUTER_SERVING = ("router_tokens", "min_weight")  # RouterConfig's keys; the rest of [router] is RouterTrainConfig's
_ROUTER_KEYS = {
    **_declared(RouterTrainConfig, "enabled", "oracle_samples", "epochs", "lr"),
    **_declared(RouterConfig, *_ROUTER_SERVING),
    "floors": None,  # checked against the domain list below
}
_GRPO_KEYS = _declared(GRPOConfig, "group_size", "max_new_tokens", "temperature", "kl_coef", "clip", "steps", "reward")
_DOMAIN_KEYS = {"name", "train", "valid", "format", "stage"}
_MIXED_KEYS = {"file", "domains"}
_TOP_KEYS = {"base", "stack", "train", "nullspace", "router", "domains", "grpo"}


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
    ctx = _Ctx(path)
    root = path.parent
    for key in doc:
        if key not in _TOP_KEYS:
            raise ctx.err("", f"unknown section or key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})")

    base_raw = _section(ctx, doc, "base", _BASE_KEYS)
    if "model" not in base_raw:
        raise ctx.err("[base]", "missing required key 'model'")
    model = _resolve_base(ctx, base_raw["model"], root, check_files)
    base = _make(ctx, "base", BaseSpec, {**base_raw, "model": model})

    stack_raw = _section(ctx, doc, "stack", _STACK_KEYS)
    stack = _make(ctx, "stack", StackConfig, stack_raw)  # validate() checks top_k <= experts

    train = _make(ctx, "train", TrainConfig, _section(ctx, doc, "train", _TRAIN_KEYS))
    nullspace = _make(ctx, "nullspace", NullspaceConfig, _section(ctx, doc, "nullspace", _NULLSPACE_KEYS))
    grpo = _make(ctx, "grpo", GRPOConfig, _section(ctx, doc, "grpo", _GRPO_KEYS))

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
                floors[dom] = check_field(FLOOR, w)
            except ValueError as e:
                raise ctx.err(f"[router] floors.{dom}", str(e)) from None
        router_raw["floors"] = dict(floors)
    serving = {k: v for k, v in router_raw.items() if k in (*_ROUTER_SERVING, "floors")}
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
        grpo=grpo,
    )


def _check_keys(ctx: _Ctx, where: str, table: dict, known: set[str], required: tuple[str, ...]) -> None:
    """One [[array]] entry: every key known, every required key present."""
    for key in table:
        if key not in known:
            raise ctx.err(where, f"unknown key {key!r} (known: {', '.join(sorted(known))})")
    for key in required:
        if key not in table:
            raise ctx.err(where, f"missing required key {key!r}")


def _data_file(ctx: _Ctx, where: str, value: Any, root: Path, check_files: bool) -> Path:
    """A data file the recipe names, relative to the recipe; it must exist when check_files."""
    return _resolve_file(ctx, where, value, root) if check_files else (root / value).resolve()


def _fits(stage: str, fmt: str) -> bool:
    """Whether a stage takes data of this format (STAGE_FORMATS; sft takes every format no other stage claims)."""
    if stage in STAGE_FORMATS:
        return fmt in STAGE_FORMATS[stage]
    return all(fmt not in fmts for fmts in STAGE_FORMATS.values())


def _parse_domains(ctx: _Ctx, doc: dict, root: Path, check_files: bool) -> list[DomainSpec]:
    raw = doc.get("domains")
    if raw is None:
        raise ctx.err("", "no [[domains]]: a recipe trains at least one domain")
    if not isinstance(raw, list) or not all(isinstance(d, dict) for d in raw):
        raise ctx.err("", "'domains' must be an array of tables ([[domains]])")
    out: list[DomainSpec] = []
    for i, d in enumerate(raw):
        where = f"[[domains]] #{i + 1}"
        _check_keys(ctx, where, d, _DOMAIN_KEYS, ("name", "train"))
        name = d["name"]
        if not isinstance(name, str) or not DOMAIN_NAME.match(name):
            raise ctx.err(
                f"{where} name", f"must be 1-64 letters, digits, '_', '.', '-' (not starting with one), got {name!r}"
            )
        later = bool(out) and out[-1].name == name  # a further stage of the domain just above
        if not later and any(o.name == name for o in out):
            raise ctx.err(f"{where} name", f"duplicate domain {name!r} (a domain's stages are consecutive entries)")
        where = f"[[domains]] {name!r}" + (f" stage #{len(out[-1].stages) + 1}" if later else "")
        try:
            fmt = _choice(FORMATS)(d.get("format", DomainSpec.format))
        except ValueError as e:
            raise ctx.err(f"{where} format", str(e)) from None
        try:
            stage = _choice(STAGES)(d.get("stage", DomainSpec.stage))
        except ValueError as e:
            raise ctx.err(f"{where} stage", str(e)) from None
        if not _fits(stage, fmt):
            raise ctx.err(
                f"{where} stage",
                f"{stage!r} does not fit format {fmt!r}: stage 'dpo' takes format 'preference' data, 'grpo' takes "
                "'prompt_answer', and 'sft' the others",
            )
        if stage == "grpo" and not later:
            raise ctx.err(f"{where} stage", f"'grpo' trains on top of the domain's earlier stacks: list an 'sft' "
                                            f"(or 'dpo') stage of {name!r} before it (consecutive [[domains]] entries)")

        def file(key: str, _d=d, _where=where) -> Path:
            return _data_file(ctx, f"{_where} {key}", _d[key], root, check_files)

        spec = DomainSpec(name=name, train=file("train"), valid=file("valid") if "valid" in d else None, format=fmt,
                          stage=stage)
        if later:
            out[-1].later.append(spec)
        else:
            out.append(spec)
    return out


def _parse_mixed(ctx: _Ctx, doc: dict, root: Path, names: list[str], check_files: bool) -> list[MixedSet]:
    router = doc.get("router", {})
    raw = router.get("mixed", []) if isinstance(router, dict) else []
    if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
        raise ctx.err("", "'router.mixed' must be an array of tables ([[router.mixed]])")
    out = []
    for i, m in enumerate(raw):
        where = f"[[router.mixed]] #{i + 1}"
        _check_keys(ctx, where, m, _MIXED_KEYS, ("file", "domains"))
        doms = m["domains"]
        if not isinstance(doms, list) or not doms or not all(isinstance(x, str) for x in doms):
            raise ctx.err(f"{where} domains", f"must be a non-empty list of domain names, got {doms!r}")
        for x in doms:
            if x not in names:
                raise ctx.err(f"{where} domains", f"names unknown domain {x!r} (domains: {', '.join(names)})")
        path = _data_file(ctx, f"{where} file", m["file"], root, check_files)
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
