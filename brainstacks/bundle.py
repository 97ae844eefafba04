"""The bundle on disk (docs/DESIGN.md §4, a contract): safetensors + JSON, manifest replaced atomically.

    BUNDLE/
      manifest.json        {"format_version": 1, "version": n, "base": {"path", "fingerprint"}, "stack_config",
                            "domains": [{"name", "stacks": ["stacks/<domain>/<k>", ...]}], "router": "router" | null}
      stacks/<domain>/<k>/stack.safetensors, stack.json   (stack.json records the sha256 of the tensors file)
      router/router.safetensors, router.json              (router.json lists the domains it scores, in order)
      reports/  base/ (optional: a bundle may carry its base, as the demo does)

Writers put every file in place first (temp file + rename) and replace manifest.json last, so a reader never sees
a manifest naming a half-written file. Readers validate everything and refuse with an error naming the file and
the reason: unknown format version, path escaping the bundle, missing/truncated/corrupt file (sha256), base
fingerprint mismatch, tensor shape mismatch. Nothing is ever unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from brainstacks import int8_storage
from brainstacks.base import LoadedBase, fingerprint_mismatches, load_base
from brainstacks.config import RouterConfig, StackConfig, dtype_name, parse_dtype
from brainstacks.errors import BrainstacksError, BundleError, FingerprintMismatch
from brainstacks.files import atomic_write, read_json, read_tensors, sha256_file, write_json
from brainstacks.gguf import is_package_ref
from brainstacks.lora import is_lora_stack, lora_tensor_problem
from brainstacks.moe_lora import stack_tensor_problem, stack_tensor_shapes
from brainstacks.router import MetaRouter
from brainstacks.stacks import DOMAIN_NAME, StackedModel

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STACK_TENSORS, STACK_META = "stack.safetensors", "stack.json"
ROUTER_TENSORS, ROUTER_META = "router.safetensors", "router.json"


# ---- manifest ---------------------------------------------------------------------------------------------------
@dataclass
class DomainEntry:
    name: str
    stacks: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    version: int
    base: dict[str, Any]
    stack_config: dict[str, Any]
    domains: list[DomainEntry] = field(default_factory=list)
    router: str | None = None
    format_version: int = FORMAT_VERSION

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "version": self.version,
            "base": self.base,
            "stack_config": self.stack_config,
            "domains": [{"name": d.name, "stacks": list(d.stacks)} for d in self.domains],
            "router": self.router,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Manifest:
        if not isinstance(data, dict):
            raise BundleError(f"{where}: manifest must be a JSON object")
        fv = data.get("format_version")
        if fv != FORMAT_VERSION:
            raise BundleError(f"{where}: unknown format_version {fv!r} (this build reads {FORMAT_VERSION})")
        for key, typ in (("version", int), ("base", dict), ("stack_config", dict), ("domains", list)):
            if not isinstance(data.get(key), typ) or isinstance(data.get(key), bool):
                raise BundleError(f"{where}: field {key!r} must be a {typ.__name__}, got {data.get(key)!r:.80}")
        base = data["base"]
        if not isinstance(base.get("path"), str) or not isinstance(base.get("fingerprint"), dict):
            raise BundleError(f"{where}: base must have a string 'path' and an object 'fingerprint'")
        domains, seen = [], set()
        for i, d in enumerate(data["domains"]):
            if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("stacks"), list):
                raise BundleError(f"{where}: domains[{i}] must be {{'name': str, 'stacks': [str, ...]}}")
            if not DOMAIN_NAME.match(d["name"]) or d["name"] in seen:
                raise BundleError(f"{where}: domains[{i}] has an invalid or duplicate name {d['name']!r}")
            if not all(isinstance(s, str) for s in d["stacks"]):
                raise BundleError(f"{where}: domains[{i}].stacks must be strings")
            seen.add(d["name"])
            domains.append(DomainEntry(d["name"], list(d["stacks"])))
        router = data.get("router")
        if router is not None and not isinstance(router, str):
            raise BundleError(f"{where}: router must be a string path or null")
        return cls(data["version"], base, data["stack_config"], domains, router, fv)


def safe_path(bundle_dir: str | os.PathLike, rel: str) -> Path:
    """Resolve `rel` inside the bundle; refuse absolute paths and anything (incl. symlinks) escaping it."""
    root = Path(bundle_dir).resolve()
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\\" in rel or "\x00" in rel:
        raise BundleError(f"{root / MANIFEST}: path {rel!r} is not a relative path inside the bundle")
    p = (root / rel).resolve()
    if p != root and root not in p.parents:
        raise BundleError(f"{root / MANIFEST}: path {rel!r} escapes the bundle directory")
    return p


def read_manifest(bundle_dir: str | os.PathLike) -> Manifest:
    """Read and validate manifest.json (schema, format version and that every named path stays inside)."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (not a bundle directory?)")
    m = Manifest.from_dict(read_json(path), str(path))
    for d in m.domains:
        for rel in d.stacks:
            safe_path(bundle_dir, rel)
    if m.router is not None:
        safe_path(bundle_dir, m.router)
    return m


def write_manifest(bundle_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Replace BUNDLE/manifest.json atomically (temp file + fsync + rename). Call after all named files exist."""
    for d in manifest.domains:
        for rel in d.stacks:
            if not (safe_path(bundle_dir, rel) / STACK_TENSORS).is_file():
                raise BundleError(f"{Path(bundle_dir) / rel}: manifest would name a stack that is not written")
    path = Path(bundle_dir) / MANIFEST
    write_json(path, manifest.to_dict())
    return path


def next_version(bundle_dir: str | os.PathLike) -> int:
    try:
        return read_manifest(bundle_dir).version + 1
    except BundleError:
        return 1


# ---- stacks -----------------------------------------------------------------------------------------------------
def stack_relpath(domain: str, k: int) -> str:
    return f"stacks/{domain}/{k}"


def save_stack(bundle_dir: str | os.PathLike, domain: str, k: int, tensors: dict[str, torch.Tensor],
               meta: dict[str, Any] | None = None, frozen_dtype: str | None = None) -> str:
    """Write stacks/<domain>/<k>/{stack.safetensors, stack.json}; returns the relative path for the manifest.
    `frozen_dtype` "int8" (the bundle's stack_config.frozen_dtype) stores the tensors as int8 with scales."""
    rel = stack_relpath(domain, k)
    d = safe_path(bundle_dir, rel)
    d.mkdir(parents=True, exist_ok=True)
    tens = {n: t.detach().cpu().contiguous() for n, t in sorted(tensors.items())}
    if frozen_dtype == int8_storage.INT8:
        tens = dict(sorted(int8_storage.quantize(tens).items()))
    atomic_write(d / STACK_TENSORS, lambda tmp: save_file(tens, tmp, metadata={"domain": domain, "index": str(k)}))
    values = {n: t for n, t in tens.items() if not n.endswith(int8_storage.SCALE_SUFFIX)}  # int8: not the scales
    dts = {dtype_name(t.dtype) for t in values.values()}
    info = {"domain": domain, "index": k, "dtype": ",".join(sorted(dts)), "tensors": len(values),
            "parameters": int(sum(t.numel() for t in values.values())), "bytes": (d / STACK_TENSORS).stat().st_size,
            "sha256": sha256_file(d / STACK_TENSORS), **(meta or {})}
    write_json(d / STACK_META, info)
    return rel


def wrapped_targets(fingerprint: dict[str, Any], config: StackConfig) -> dict[str, tuple[int, int]]:
    """{path: (d_out, d_in)} of every projection the bundle wraps (from the fingerprint's target shapes)."""
    return {p: tuple(s) for p, s in fingerprint.get("targets", {}).items() if p.rsplit(".", 1)[-1] in config.targets}


def expected_stack_shapes(fingerprint: dict[str, Any], config: StackConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape a MoE-LoRA stack must have for this base (from the fingerprint's target shapes)."""
    return stack_tensor_shapes(wrapped_targets(fingerprint, config), config)


def stack_problem(tensors: dict[str, torch.Tensor], fingerprint: dict[str, Any], config: StackConfig) -> str | None:
    """The first way one stack (MoE-LoRA, or a plain LoRA: brainstacks/lora.py) does not fit this base, or None."""
    if is_lora_stack(tensors):
        return lora_tensor_problem(tensors, wrapped_targets(fingerprint, config))
    return stack_tensor_problem(tensors, expected_stack_shapes(fingerprint, config))


def load_stack(bundle_dir: str | os.PathLike, rel: str, fingerprint: dict[str, Any],
               config: StackConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and fully validate one stack: JSON, sha256, safetensors header, names, shapes, dtype (the bundle's
    stack_config.frozen_dtype: frozen stacks share one) and finite values (a NaN would silently empty every
    composition that uses the stack)."""
    d = safe_path(bundle_dir, rel)
    meta = read_json(d / STACK_META)
    tensors = read_tensors(d / STACK_TENSORS, meta.get("sha256"))
    f = d / STACK_TENSORS
    if int8_storage.is_quantized(tensors) != (config.frozen_dtype == int8_storage.INT8):
        raise BundleError(f"{f}: stored {'as int8' if int8_storage.is_quantized(tensors) else 'unquantized'}, but "
                          f"the bundle's stack_config.frozen_dtype is {config.frozen_dtype!r}")
    if config.frozen_dtype == int8_storage.INT8:
        tensors = int8_storage.dequantize(tensors, parse_dtype(config.frozen_dtype), str(f))
    problem = stack_problem(tensors, fingerprint, config)
    if problem:
        raise BundleError(f"{f}: {problem}")
    want_dtype = parse_dtype(config.frozen_dtype)
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype != want_dtype:
            raise BundleError(f"{f}: {name} is {dtype_name(t.dtype)}, the bundle's stacks are {config.frozen_dtype} "
                              "(stack_config.frozen_dtype)")
        if not bool(torch.isfinite(t).all()):
            raise BundleError(f"{f}: {name} holds non-finite values (NaN or inf)")
    return tensors, meta


# ---- router -----------------------------------------------------------------------------------------------------
def router_relpath(version: int) -> str:
    """Where `brainstacks train` writes the router of manifest version `version`: a path of its own, so the router a
    live manifest names is never overwritten in place (old bundles name "router" and keep loading)."""
    return f"router/v{int(version)}"


def save_router(bundle_dir: str | os.PathLike, router: MetaRouter, meta: dict[str, Any] | None = None,
                rel: str = "router") -> str:
    d = safe_path(bundle_dir, rel)
    d.mkdir(parents=True, exist_ok=True)
    tens = {n: t.detach().float().cpu().contiguous() for n, t in router.state_dict().items()}
    atomic_write(d / ROUTER_TENSORS, lambda tmp: save_file(tens, tmp))
    write_json(d / ROUTER_META, {**router.describe(), "sha256": sha256_file(d / ROUTER_TENSORS), **(meta or {})})
    return rel


def load_router(bundle_dir: str | os.PathLike, rel: str, d_model: int | None = None,
                domains: list[str] | None = None, unrouted: Collection[str] = ()) -> MetaRouter:
    """Read and validate the router. With `domains` (the manifest's), it must score every one of them but those in
    `unrouted` (imported or runtime-loaded domains, which weigh 0 from it until `brainstacks train --router-only`
    retrains it): a router missing a trained domain would give it weight 0 forever (a `train` run killed before its
    router step leaves such a version), so it is refused, naming the missing domains. Domains it scores that the
    manifest no longer lists (one removed by DELETE /admin/stacks) are ignored when serving."""
    d = safe_path(bundle_dir, rel)
    meta = read_json(d / ROUTER_META)
    tensors = read_tensors(d / ROUTER_TENSORS, meta.get("sha256"))
    r_domains = meta.get("domains")
    if not isinstance(r_domains, list) or not r_domains or not all(isinstance(x, str) for x in r_domains):
        raise BundleError(f"{d / ROUTER_META}: 'domains' must be a non-empty list of names")
    if d_model is not None and meta.get("d_model") != d_model:
        raise BundleError(f"{d / ROUTER_META}: router reads d_model={meta.get('d_model')}, base has {d_model}")
    missing = [x for x in domains or () if x not in r_domains and x not in unrouted]
    if missing:
        raise BundleError(f"{d / ROUTER_META}: router covers only {r_domains}, missing {missing} of the manifest's "
                          f"domains {list(domains)} (a `brainstacks train` run stopped before retraining the router? "
                          "rerun it)")
    try:
        cfg = RouterConfig.from_dict(meta.get("config"), str(d / ROUTER_META))
        router = MetaRouter(int(meta["d_model"]), r_domains, cfg)
        router.load_state_dict(tensors, strict=True)
    except (BrainstacksError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise BundleError(f"{d / ROUTER_TENSORS}: does not match router.json: {e}") from e
    bad = sorted(n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    if bad:
        raise BundleError(f"{d / ROUTER_TENSORS}: {bad[0]} holds non-finite values (NaN or inf)")
    return router.eval()


# ---- whole bundles ----------------------------------------------------------------------------------------------
def resolve_base_path(bundle_dir: str | os.PathLike, manifest: Manifest, override: str | os.PathLike | None
                      ) -> str | Path:
    """--base override, else the manifest's path: "package:<dist>/<file>" (a base an installed package ships, as the
    embedded demo's), an absolute path, or a path relative to the bundle; else a base the bundle carries in base/."""
    if override is not None:
        return Path(override)
    ref = manifest.base["path"]
    if is_package_ref(ref):
        return ref  # load_base resolves it, with the install command when the package is missing
    p = Path(ref)
    if not p.is_absolute():
        p = safe_path(bundle_dir, ref)
    if not p.exists() and (Path(bundle_dir) / "base" / "config.json").is_file():
        return Path(bundle_dir) / "base"
    return p


def check_fingerprint(bundle_dir: str | os.PathLike, manifest: Manifest, fingerprint: dict[str, Any],
                      hint: str = "") -> None:
    """Raise FingerprintMismatch (naming the manifest, both digests and the first difference, then `hint`) unless
    `fingerprint`, the base at hand, is the one the bundle was built for."""
    mism = fingerprint_mismatches(manifest.base["fingerprint"], fingerprint)
    if mism:
        raise FingerprintMismatch(f"{Path(bundle_dir) / MANIFEST}: base fingerprint mismatch: the bundle needs "
                                  f"{manifest.base['fingerprint'].get('digest')}, the base has "
                                  f"{fingerprint.get('digest')}: {mism[0]}{hint}", mism)


def read_stacks(bundle_dir: str | os.PathLike, manifest: Manifest, fingerprint: dict[str, Any],
                ) -> dict[str, list[tuple[dict[str, torch.Tensor], dict[str, Any]]]]:
    """Every stack of the manifest, validated, by domain; raises BundleError listing every problem found."""
    check_fingerprint(bundle_dir, manifest, fingerprint)
    cfg = StackConfig.from_dict(manifest.stack_config, f"{Path(bundle_dir) / MANIFEST}: stack_config")
    out, reasons = {}, []
    for d in manifest.domains:
        out[d.name] = []
        for rel in d.stacks:
            try:
                out[d.name].append(load_stack(bundle_dir, rel, fingerprint, cfg))
            except BundleError as e:
                reasons.append(str(e))
    if reasons:
        raise BundleError(reasons[0] + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""), reasons)
    return out


def unrouted_domains(stacks: dict[str, list[tuple[dict[str, torch.Tensor], dict[str, Any]]]]) -> list[str]:
    """Domains every stack of which was imported (stack.json "imported": `brainstacks stacks import` or a runtime
    load), which a router trained before them may leave out (load_router)."""
    return [name for name, items in stacks.items() if items and all(meta.get("imported") for _, meta in items)]


@dataclass
class LoadedBundle:
    manifest: Manifest
    base: LoadedBase
    stacked: StackedModel
    router: MetaRouter | None
    bundle_dir: Path
    stack_meta: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- versions
# A versioned bundle (docs/DESIGN.md §4): BUNDLE/CURRENT names BUNDLE/versions/<n>; brainstacks/versions.py writes
# and prunes versions, this reader resolves them.
POINTER = "CURRENT"
VERSIONS = "versions"
_POINTER_RE = re.compile(r"^versions/([1-9][0-9]{0,17})$")


def version_dir(root: str | os.PathLike, version: int) -> Path:
    return Path(root) / VERSIONS / str(int(version))


def current_version(root: str | os.PathLike) -> int | None:
    """The version CURRENT names, or None for a single-directory bundle. A malformed pointer is a BundleError."""
    p = Path(root) / POINTER
    if not p.is_file():
        return None
    try:
        text = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{p}: unreadable version pointer: {e}") from e
    m = _POINTER_RE.match(text)
    if m is None:
        raise BundleError(f"{p}: version pointer must read 'versions/<n>', got {text[:80]!r}")
    return int(m.group(1))


def resolve_bundle_dir(path: str | os.PathLike) -> Path:
    """The directory a reader loads: BUNDLE/versions/<n> when BUNDLE/CURRENT names it, else `path` itself."""
    root = Path(path)
    v = current_version(root)
    if v is None:
        return root
    d = safe_path(root, f"{VERSIONS}/{v}")
    if not (d / MANIFEST).is_file():
        raise BundleError(f"{root / POINTER}: names versions/{v}, which holds no {MANIFEST}")
    return d


def install_stacks(sm: StackedModel, stacks: dict[str, list[tuple[dict[str, torch.Tensor], dict[str, Any]]]],
                   dtype: str | torch.dtype | None = None) -> None:
    """Replace every domain and stack of `sm` by `stacks` (domain order kept), packing once. Validated tensors only.
    Transactional: the new packed tensors are built to the side and swapped in only when all of them are ready, so a
    failure (an out-of-memory error while packing too) leaves `sm` as it was."""
    sm.commit(sm.prepare({name: [tensors for tensors, _ in items] for name, items in stacks.items()}, dtype))


def load_bundle(bundle_dir: str | os.PathLike, base: str | os.PathLike | None = None, quantize: str = "nf4",
                dtype: str | torch.dtype = "float32", device: str = "cpu",
                stack_dtype: str | torch.dtype | None = None) -> LoadedBundle:
    """Load base + every stack + router of a bundle, validating all of it first. A versioned bundle
    (brainstacks/versions.py: BUNDLE/CURRENT -> versions/<n>) loads the version its pointer names."""
    bundle_dir = resolve_bundle_dir(bundle_dir).resolve()
    manifest = read_manifest(bundle_dir)
    lb = load_base(resolve_base_path(bundle_dir, manifest, base), quantize=quantize, dtype=dtype, device=device)
    stacks = read_stacks(bundle_dir, manifest, lb.fingerprint)
    router = None
    if manifest.router is not None:
        router = load_router(bundle_dir, manifest.router, lb.fingerprint["hidden_size"], manifest.domain_names,
                             unrouted_domains(stacks))
        router.to(device)
    cfg = StackConfig.from_dict(manifest.stack_config, str(bundle_dir / MANIFEST))
    sm = StackedModel(lb.model, cfg)
    install_stacks(sm, stacks, stack_dtype)
    metas = {name: [m for _, m in items] for name, items in stacks.items()}
    return LoadedBundle(manifest, lb, sm, router, bundle_dir, metas)
