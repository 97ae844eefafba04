"""bitsandbytes, behind one module: every use of its 4-bit layers and kernels goes through here (PEFT keeps it the
same way), so a bitsandbytes upgrade is checked and adapted in one place.

    is_4bit(layer)                         a bitsandbytes Linear4bit (NF4 or FP4)?
    quantize_linear(lin, "nf4", torch.float32, "cpu")   the Linear4bit that replaces an nn.Linear
    dequantize(layer)                      (d_out, d_in) float32: the weight the layer serves with
    make_backward_safe(layer)              undo the CPU inference repack, so autograd sees the right kernel
    adamw_8bit(params, lr, wd)             bitsandbytes' 8-bit AdamW (CUDA)

Private API: on CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit's weight for its inference kernel
the first time it runs in eval mode (`quant_state.packing_format_for_cpu`, the layer's `support_avx512bf16_for_cpu`)
and offers only a private inverse (`_convert_weight_packed_for_cpu_inverse`). Those three names are used here and
nowhere else; `require()` checks the version they were written against.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from brainstacks.errors import BaseModelError

MIN_VERSION = (0, 50)  # NF4 forward and backward on the CPU
QUANTIZE_CHOICES = ("nf4", "fp4", "none")  # how a base may be loaded: the one list (base, recipes, CLIs, server)


def _version(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> Any:
    """The bitsandbytes module, or a BaseModelError saying what is missing (not installed, or older than 0.50)."""
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise BaseModelError("4-bit quantization needs bitsandbytes >= 0.50 (pip install 'bitsandbytes>=0.50'), "
                             "which is not installed; or load the base with quantize='none'") from e
    if _version(bnb.__version__) < MIN_VERSION:
        raise BaseModelError(f"4-bit quantization needs bitsandbytes >= {'.'.join(map(str, MIN_VERSION))} (NF4 on "
                             f"the CPU); found {bnb.__version__}")
    return bnb


def is_4bit(layer: nn.Module) -> bool:
    """A bitsandbytes Linear4bit (NF4 or FP4)."""
    if not available():
        return False
    import bitsandbytes as bnb

    return isinstance(layer, bnb.nn.Linear4bit)


def quantize_linear(lin: nn.Linear, quant_type: str, compute_dtype: torch.dtype, device: str) -> nn.Module:
    """A Linear4bit (double quantisation) holding `lin`'s weight, on `device`, in `lin`'s train/eval mode."""
    bnb = require()
    q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=compute_dtype,
                          compress_statistics=True, quant_type=quant_type, device="meta")
    q.weight = bnb.nn.Params4bit(lin.weight.data.to(compute_dtype).contiguous(), requires_grad=False,
                                 compress_statistics=True, quant_type=quant_type)
    if lin.bias is not None:
        q.bias = nn.Parameter(lin.bias.data.to(compute_dtype), requires_grad=False)
    q = q.to(device)  # quantizes here
    q.train(lin.training)  # keep the replaced layer's mode (bitsandbytes picks kernels by it)
    return q


def _is_packed(layer: nn.Module) -> bool:
    qs = getattr(layer.weight, "quant_state", None)
    return qs is not None and bool(getattr(qs, "packing_format_for_cpu", False))


def _will_pack(layer: nn.Module) -> bool:
    return bool(getattr(layer, "support_avx512bf16_for_cpu", False))


def dequantize(layer: nn.Module) -> torch.Tensor:
    """The (d_out, d_in) float32 weight a Linear4bit serves with: each 4-bit code's value times its block's absmax,
    through bitsandbytes' public `dequantize_4bit`.

    A layer packed for the AVX512-BF16 inference kernel (or to be packed at its first eval call) multiplies with the
    absmax rounded to bfloat16, so for such a layer the absmax is rounded here too: prefill through a dense copy and
    decode through the kernel use the same weights whichever runs first. The layer's own tensors are never changed."""
    bnb = require()
    F = bnb.functional
    data, qs = layer.weight.data, layer.weight.quant_state
    packed = _is_packed(layer)
    if packed:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        absmax = qs.absmax.float().T.reshape(-1)  # the packed state holds it dequantized, bf16, (blocks/row, rows)
        # the codes back in canonical order; the inverse rewrites the quant state it is given, so it gets copies
        # (and the absmax it re-quantizes is not used)
        data, _ = _convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(qs))
    elif qs.nested:
        absmax = F.dequantize_blockwise(qs.absmax, qs.state2).float() + qs.offset
    else:
        absmax = qs.absmax.float()
    if packed or (_will_pack(layer) and data.device.type == "cpu"):
        absmax = absmax.to(torch.bfloat16).float()
    plain = F.QuantState(absmax=absmax, shape=qs.shape, code=qs.code, blocksize=qs.blocksize,
                         quant_type=qs.quant_type, dtype=torch.float32)  # float32 absmax, not nested
    return F.dequantize_4bit(data, plain).float().reshape(layer.out_features, layer.in_features)


def make_backward_safe(layer: nn.Module) -> int:
    """Restore a Linear4bit's canonical layout and turn the CPU inference repack off; returns how many of the two
    changes it made (0: already safe).

    The repacked kernel has no autograd: once a layer is packed (its first eval call without grad), the gradient
    through the base projection to earlier layers is silently wrong (measured: layer-0 stack gradients off by 100%
    after one validation pass). Training calls this before each new stack; serving keeps the fast kernel."""
    changed = 0
    if _is_packed(layer):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
            layer.weight.data, layer.weight.quant_state)
        changed += 1
    if _will_pack(layer):
        layer.support_avx512bf16_for_cpu = False
        changed += 1
    return changed


def adamw_8bit(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return require().optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
