"""Bring your own adapters: a PEFT LoRA directory (or a stack directory) becomes a frozen stack of a bundle, written
as a new bundle version; a domain is removed the same way.

    import_adapter("out/bundle", "math", "adapters/math-lora", base="SmolLM2.gguf")  # brainstacks stacks import
    remove_domain_version("out/bundle", "math")                                    # DELETE /admin/stacks/math

What is read from a PEFT directory (`save_pretrained` output):
- adapter_config.json: `peft_type` must be LORA (IA3, LoHa, LoKr, prefix or prompt tuning are refused by name);
  `r`, `lora_alpha`, `use_rslora`, `rank_pattern` and `alpha_pattern` give each module's scale (alpha/r, or
  alpha/sqrt(r) with rsLoRA); `use_dora`, `modules_to_save`, a trained `bias`, `lora_bias` and `fan_in_fan_out`
  are refused with the reason;
- adapter_model.safetensors (never a pickled adapter_model.bin): every `<module>.lora_A.weight` (r, d_in) and
  `<module>.lora_B.weight` (d_out, r); a module must be one of the bundle's wrapped projections, with the base's
  shapes (a mismatch names the module and both shapes); any other tensor (embeddings, DoRA magnitudes) is refused;
  non-finite values are refused.
The stack keeps the LoRA's own form (brainstacks/lora.py), in the bundle's storage dtype, with the scale folded
into B. Projections the adapter leaves out get no delta; ranks may differ from the bundle's and between modules.

A new version is written as `brainstacks train` writes one: the stack files first (under a stack index no manifest
names yet), then the working copy's manifest (atomically), then, with `keep` > 0, the published
versions/<n> and the CURRENT pointer (brainstacks/versions.py). Everything is validated before the first write, so
a refused adapter changes nothing on disk. The router is kept: it scores the domains it was trained on, and an
imported domain weighs 0 from it until `brainstacks train --router-only` retrains it (bundle.load_router).
A directory with no bundle becomes one: its stack config has one expert at the adapter's rank (scale 1), so
imported adapters cost no expert copies.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brainstacks import int8_storage
from brainstacks.bundle import (
    MANIFEST,
    POINTER,
    STACK_META,
    STACK_TENSORS,
    DomainEntry,
    Manifest,
    load_stack,
    read_manifest,
    resolve_bundle_dir,
    save_stack,
    stack_problem,
    wrapped_targets,
    write_manifest,
)
from brainstacks.config import StackConfig, parse_dtype
from brainstacks.errors import AdapterError, BrainstacksError, BundleError
from brainstacks.files import read_json
from brainstacks.lora import A_SUFFIX, B_SUFFIX, KIND, lora_rank
from brainstacks.stacks import DOMAIN_NAME
from brainstacks.versions import (
    KEEP_VERSIONS,
    bundle_files,
    link_or_copy,
    list_versions,
    publish_version,
    writer_lock,
)

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
RESERVED = {"base": "no stacks", "all": "every stack at weight 1"}  # the server's own model names (server/api.py)
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")
_REFUSED_OPTIONS = (("use_dora", "DoRA (use_dora) adds a magnitude vector per module; only plain LoRA is imported"),
                    ("fan_in_fan_out", "fan_in_fan_out adapters target Conv1D layers (GPT-2 style), which are not "
                                       "wrapped"),
                    ("lora_bias", "lora_bias trains a bias on lora_B; plain LoRA has none"))


@dataclass
class ImportResult:
    domain: str
    version: int
    bundle_dir: Path  # the directory of the new version (versions/<n>, or the bundle itself with keep=0)
    rank: int
    modules: int
    parameters: int


# ---- reading --------------------------------------------------------------------------------------------------
def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the module name's end."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_peft_config(adapter_dir: Path) -> dict[str, Any]:
    """adapter_config.json, checked for what a plain LoRA import supports (module docstring); AdapterError else."""
    path = adapter_dir / PEFT_CONFIG
    if not path.is_file():
        raise AdapterError(f"{path}: missing (not a PEFT adapter directory?)")
    try:
        cfg = read_json(path)  # the one JSON reader: names the file when it is corrupt or not an object
    except BundleError as e:
        raise AdapterError(str(e)) from None
    kind = cfg.get("peft_type")
    if kind != "LORA":
        raise AdapterError(f"{path}: field 'peft_type' is {kind!r}: only LoRA adapters (peft_type LORA) are imported, "
                           "not IA3, LoHa, LoKr, AdaLoRA, prefix or prompt tuning")
    for key, why in _REFUSED_OPTIONS:
        if cfg.get(key):
            raise AdapterError(f"{path}: field {key!r} is set: {why}")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"{path}: field 'modules_to_save' lists {cfg['modules_to_save']}: such an adapter "
                           "replaces whole modules, which a stack cannot (a stack only adds deltas); retrain "
                           "without modules_to_save")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"{path}: field 'bias' is {cfg['bias']!r}: trained biases are not imported (use 'none')")
    for key in ("r", "lora_alpha"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise AdapterError(f"{path}: field {key!r} must be a positive number, got {v!r}")
    return cfg


def read_peft_tensors(adapter_dir: Path) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """{module path: {"A", "B"}} from adapter_model.safetensors (PEFT's saved names, adapter name stripped), and the
    names of any other tensors it holds."""
    from safetensors import safe_open

    path = adapter_dir / PEFT_WEIGHTS
    if not path.is_file():
        other = " (adapter_model.bin is pickled and never read: save with safe_serialization=True)" if (
            adapter_dir / "adapter_model.bin").is_file() else ""
        raise AdapterError(f"{path}: missing{other}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = {n: f.get_tensor(n) for n in f.keys()}
    except Exception as e:  # safetensors raises its own types for bad headers and short files
        raise AdapterError(f"{path}: not a readable safetensors file (truncated or corrupt): {e}") from e
    out: dict[str, dict[str, torch.Tensor]] = {}
    others = []
    for name, t in sorted(raw.items()):
        m = _PEFT_KEY.match(name)
        if m is None:
            others.append(name)
            continue
        if not t.is_floating_point():
            raise AdapterError(f"{path}: tensor {name!r} has non-float dtype {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise AdapterError(f"{path}: tensor {name!r} holds non-finite values (NaN or inf)")
        out.setdefault(m.group(1), {})[m.group(2)] = t
    if not out:
        raise AdapterError(f"{path}: holds no LoRA weights")
    return out, others


def read_peft_adapter(adapter_dir: str | os.PathLike, targets: dict[str, tuple[int, int]], dtype: torch.dtype
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A PEFT LoRA directory as a LoRA stack's tensors (brainstacks/lora.py: scale folded into B, in `dtype`) for
    projections `targets` {path: (d_out, d_in)}, and the stack.json fields that describe it."""
    d = Path(adapter_dir)
    cfg = read_peft_config(d)
    mods, others = read_peft_tensors(d)
    weights = d / PEFT_WEIGHTS
    leaves = sorted({p.rsplit(".", 1)[-1] for p in targets})
    for path in mods:
        if path not in targets:
            leaf = path.rsplit(".", 1)[-1]
            if leaf in leaves:  # a wrapped kind of projection, at a path this base does not have
                raise AdapterError(f"{weights}: module {path!r} does not exist in this base (its {len(targets)} "
                                   "wrapped projections have other paths): an adapter for another base, e.g. one "
                                   "with more layers?")
            raise AdapterError(f"{weights}: module {path!r} ({leaf}) is not a projection this bundle wraps "
                               f"(wrapped: {leaves} of the decoder layers)")
    if others:
        raise AdapterError(f"{weights}: tensor {others[0]!r} is not a LoRA A or B weight (embedding LoRA, DoRA "
                           "magnitudes and saved modules are not imported)")
    tensors: dict[str, torch.Tensor] = {}
    for path, pair in mods.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{weights}: module {path!r} has lora_{next(iter(pair))} without its pair")
        A, B = pair["A"], pair["B"]
        d_out, d_in = targets[path]
        if A.dim() != 2 or A.shape[1] != d_in:
            raise AdapterError(f"{weights}: shape mismatch for {path}.lora_A: the adapter has {tuple(A.shape)}, the "
                               f"base needs (r, {d_in}): an adapter for another base?")
        if B.dim() != 2 or B.shape[0] != d_out or B.shape[1] != A.shape[0]:
            raise AdapterError(f"{weights}: shape mismatch for {path}.lora_B: the adapter has {tuple(B.shape)}, the "
                               f"base needs ({d_out}, {A.shape[0]}): an adapter for another base?")
        try:
            r = int(_pattern_value(cfg.get("rank_pattern"), path, cfg["r"]))
            alpha = float(_pattern_value(cfg.get("alpha_pattern"), path, cfg["lora_alpha"]))
        except (AttributeError, TypeError, ValueError, re.error) as e:
            raise AdapterError(f"{d / PEFT_CONFIG}: field 'rank_pattern' or 'alpha_pattern' is malformed: "
                               f"{type(e).__name__}: {e}") from None
        if not (math.isfinite(alpha) and alpha > 0):
            raise AdapterError(f"{d / PEFT_CONFIG}: module {path!r} gets lora_alpha {alpha!r} (from 'alpha_pattern'): "
                               "it must be a positive number")
        if r != A.shape[0]:
            raise AdapterError(f"{d / PEFT_CONFIG}: module {path!r} has rank {A.shape[0]} in {PEFT_WEIGHTS} but "
                               f"{r} in the config ('r' / 'rank_pattern')")
        scale = alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
        tensors[path + A_SUFFIX] = A.to(dtype).contiguous()
        tensors[path + B_SUFFIX] = (B.float() * scale).to(dtype).contiguous()
    meta = {"kind": KIND, "rank": lora_rank(tensors), "modules": len(mods),
            "imported": {"format": "peft", "source": str(d.resolve()), "r": cfg["r"], "lora_alpha": cfg["lora_alpha"],
                         "use_rslora": bool(cfg.get("use_rslora")),
                         "base_model_name_or_path": cfg.get("base_model_name_or_path")}}
    return tensors, meta


def read_source(source: str | os.PathLike, fingerprint: dict[str, Any], config: StackConfig
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A PEFT LoRA directory or a stack directory (stack.json + stack.safetensors, as a bundle holds them), read and
    checked against the bundle's base and stack config; AdapterError naming the file and the reason."""
    d = Path(source).expanduser()
    if not d.is_dir():
        raise AdapterError(f"{d}: not a directory (a PEFT adapter directory or a stack directory)")
    dtype = parse_dtype(config.frozen_dtype)
    if (d / PEFT_CONFIG).is_file():
        return read_peft_adapter(d, wrapped_targets(fingerprint, config), dtype)
    if (d / STACK_META).is_file() and (d / STACK_TENSORS).is_file():
        try:
            tensors, meta = load_stack(d.parent, d.name, fingerprint, config)
        except BrainstacksError as e:
            raise AdapterError(str(e)) from e
        keep = {k: meta[k] for k in ("kind", "rank", "modules", "val_loss", "stage") if k in meta}
        return tensors, {**keep, "imported": {"format": "stack", "source": str(d.resolve())}}
    raise AdapterError(f"{d}: holds neither {PEFT_CONFIG} (a PEFT adapter) nor {STACK_META} + {STACK_TENSORS} "
                       "(a stack directory)")


# ---- writing versions -----------------------------------------------------------------------------------------
def _working_manifest(root: Path) -> tuple[Manifest | None, Path]:
    """The writer's state of ROOT and where its files are: ROOT's own manifest.json (the working copy), else the
    version CURRENT names (its directory), else (None, ROOT). Reads only."""
    if (root / MANIFEST).is_file():
        return read_manifest(root), root
    src = resolve_bundle_dir(root)
    return (None, root) if src == root else (read_manifest(src), src)


def _check_router(src: Path, m: Manifest, new_domain: str | None) -> None:
    """The version about to be written must load: its router (if any) scores every trained domain of `m` (the
    imported ones, `new_domain` among them, may wait). A working copy a `train` run left before its router step
    fails this, naming the domain, so no import publishes a version the loaders would refuse."""
    if m.router is None:
        return
    from brainstacks.bundle import safe_path

    scored = read_json(safe_path(src, m.router) / "router.json").get("domains") or []
    for e in m.domains:
        if e.name == new_domain or e.name in scored:
            continue
        if not all(read_json(safe_path(src, rel) / STACK_META).get("imported") for rel in e.stacks):
            raise AdapterError(f"{src / MANIFEST}: trained domain {e.name!r} is not scored by the bundle's router "
                               f"{m.router} (a `brainstacks train` run stopped before its router step?): rerun it "
                               "first, so this change does not publish a version the loaders refuse")


def _materialise(root: Path, src: Path, m: Manifest) -> None:
    """Make ROOT the working copy of the version in `src` (hard links), so the next manifest names files in ROOT.
    Called only once a change is validated."""
    if src == root:
        return
    for rel in bundle_files(src):
        if not (root / rel).exists():
            link_or_copy(src / rel, root / rel)
    write_manifest(root, m)


def new_bundle_manifest(base: str | os.PathLike, path: str, fp: dict[str, Any], rank: int, frozen_dtype: str
                        ) -> Manifest:
    """Version 0 of a bundle made by an import: the base (`path` and `fp` from brainstacks.base.base_fingerprint,
    no weights read), one expert at `rank`."""
    cfg = StackConfig(experts=1, top_k=1, rank=rank, alpha=float(rank), rslora=False, frozen_dtype=frozen_dtype)
    cfg.validate()
    ref = str(base) if str(base).startswith("package:") else path
    return Manifest(version=0, base={"path": ref, "fingerprint": fp}, stack_config=cfg.to_dict())


def _next_index(root: Path, domain: str) -> int:
    """A stack index under stacks/<domain>/ that no file uses yet (so no file a manifest names is rewritten)."""
    d = root / "stacks" / domain
    used = [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.is_dir() else []
    return max(used, default=-1) + 1


def _next_version(root: Path, m: Manifest) -> int:
    return max([m.version] + list_versions(root)) + 1


def _publish(root: Path, m: Manifest, keep: int) -> Path:
    """The working copy's manifest, then (keep > 0, or a bundle readers already follow through CURRENT) the
    published version."""
    write_manifest(root, m)
    if keep <= 0 and (root / POINTER).is_file():
        keep = 1
    return publish_version(root, keep=keep) if keep > 0 else root


def import_adapter(root: str | os.PathLike, domain: str, source: str | os.PathLike,
                   base: str | os.PathLike | None = None, replace: bool = False, keep: int = KEEP_VERSIONS,
                   frozen_dtype: str = StackConfig.frozen_dtype) -> ImportResult:
    """Import `source` (a PEFT LoRA directory or a stack directory) as domain `domain` of the bundle at `root`, in a
    new version (module docstring). `base` is required when `root` holds no bundle yet; `replace` allows an existing
    domain (its stacks are replaced by this one). Returns where the new version lives."""
    root = Path(root).resolve()
    if not isinstance(domain, str) or not DOMAIN_NAME.match(domain):
        raise AdapterError(f"invalid domain name {domain!r}: use letters, digits, '_', '.', '-' (max 64)")
    if domain in RESERVED:
        raise AdapterError(f"domain name {domain!r} is reserved: model 'brainstacks:{domain}' already means "
                           f"{RESERVED[domain]}")
    if not root.is_dir() and base is None:
        raise AdapterError(f"{root}: holds no bundle; give --base (the model the adapter was trained on) to "
                           "create one")
    with writer_lock(root, f"importing {domain!r}"):
        return _import_locked(root, domain, source, base, replace, keep, frozen_dtype)


def _import_locked(root: Path, domain: str, source: str | os.PathLike, base: str | os.PathLike | None,
                   replace: bool, keep: int, frozen_dtype: str) -> ImportResult:
    m, src = _working_manifest(root)
    if m is None:
        if base is None:
            raise AdapterError(f"{root}: holds no bundle; give --base (the model the adapter was trained on) to "
                               "create one")
        from brainstacks.base import base_fingerprint

        path, fp = base_fingerprint(base)
        if not (Path(source) / PEFT_CONFIG).is_file():
            raise AdapterError(f"{root}: holds no bundle, and {source} is not a PEFT adapter: a new bundle starts "
                               "from a PEFT LoRA import or from `brainstacks train`")
        tensors, meta = read_peft_adapter(Path(source), wrapped_targets(fp, StackConfig()), parse_dtype(frozen_dtype))
        m = new_bundle_manifest(base, path, fp, meta["rank"], frozen_dtype)
    else:
        if base is not None:
            from brainstacks.base import base_fingerprint
            from brainstacks.bundle import check_fingerprint

            check_fingerprint(root, m, base_fingerprint(base)[1], "; the adapter's --base is not the bundle's")
        if domain in m.domain_names and not replace:
            raise AdapterError(f"{src / MANIFEST}: domain {domain!r} exists already (its stacks: "
                               f"{next(d.stacks for d in m.domains if d.name == domain)}); pass --replace to replace "
                               "it, or choose another name")
        tensors, meta = read_source(source, m.base["fingerprint"],
                                    StackConfig.from_dict(m.stack_config, f"{src / MANIFEST}: stack_config"))
    cfg = StackConfig.from_dict(m.stack_config, f"{src / MANIFEST}: stack_config")
    problem = stack_problem(tensors, m.base["fingerprint"], cfg)
    if problem:  # read_source checked it; this is the bundle reader's own check, so the loader will accept it
        raise AdapterError(f"{source}: {problem}")
    dt = parse_dtype(cfg.frozen_dtype)
    tensors = {n: t.to(dt) for n, t in tensors.items()}
    if cfg.frozen_dtype == int8_storage.INT8:  # what the loader will serve
        tensors = int8_storage.round_trip(tensors, dt, str(source))
    bad = sorted(n for n, t in tensors.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise AdapterError(f"{source}: {bad[0]} is not finite once its scale is folded in and it is stored as "
                           f"{cfg.frozen_dtype} (lora_alpha too large for that dtype?)")
    _check_router(src, m, domain)
    _materialise(root, src, m)  # validated: from here on ROOT is written
    k = _next_index(root, domain)
    rel = save_stack(root, domain, k, tensors, meta, cfg.frozen_dtype)
    entries = [e for e in m.domains if e.name != domain]
    if domain in m.domain_names:
        at = m.domain_names.index(domain)
        entries.insert(at, DomainEntry(domain, [rel]))
    else:
        entries.append(DomainEntry(domain, [rel]))
    new = Manifest(_next_version(root, m), m.base, m.stack_config, entries, m.router)
    where = _publish(root, new, keep)
    return ImportResult(domain, new.version, where, int(meta.get("rank") or cfg.rank), int(meta.get("modules") or 0),
                        int(sum(t.numel() for t in tensors.values())))


def remove_domain_version(root: str | os.PathLike, domain: str, keep: int = KEEP_VERSIONS) -> tuple[int, Path]:
    """A new version of the bundle at `root` without `domain` (its files stay for the older versions); returns the
    version and where it lives. The router is kept: a domain it scores that the manifest no longer lists is ignored."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise AdapterError(f"{root}: holds no bundle")
    with writer_lock(root, f"removing {domain!r}"):
        m, src = _working_manifest(root)
        if m is None:
            raise AdapterError(f"{root}: holds no bundle")
        if domain not in m.domain_names:
            raise AdapterError(f"{src / MANIFEST}: no domain {domain!r} (domains: {m.domain_names})")
        _check_router(src, Manifest(m.version, m.base, m.stack_config,
                                    [e for e in m.domains if e.name != domain], m.router), None)
        _materialise(root, src, m)
        new = Manifest(_next_version(root, m), m.base, m.stack_config, [e for e in m.domains if e.name != domain],
                       m.router)
        return new.version, _publish(root, new, keep)
