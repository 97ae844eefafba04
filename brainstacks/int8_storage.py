"""int8 storage for frozen stacks: half the bytes of bfloat16 on disk, bfloat16 in memory (`frozen_dtype = "int8"`).

A stack file stored this way holds, for each float tensor `name`, the int8 tensor `name` and its float32 scales
`name` + SCALE_SUFFIX. Scales are absmax / 127 over the tensor's largest dimension (d_in for A and the gate W,
d_out for B; a LoRA's lora_A / lora_B likewise), so there is one scale per expert and rank row or column: about
1/500 of the elements on SmolLM2, and every other coordinate keeps its own range. Loading multiplies back into
bfloat16 (`config.parse_dtype("int8")`); the served stacks are then the dequantized values, exactly as a bf16 stack
of those values would be, so the fused forward and its tests are unchanged. Rounding error per element is at most
half a step: |x - x'| <= absmax / 254 along that dimension.
"""

from __future__ import annotations

import torch

from brainstacks.errors import BundleError

INT8 = "int8"
SCALE_SUFFIX = ".int8_scale"
_QMAX = 127


def _axis(t: torch.Tensor) -> int:
    """The dimension a tensor's scales reduce over: its largest (the last one on ties)."""
    return max(range(t.dim()), key=lambda i: (t.shape[i], i))


def quantize(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name: float tensor} -> {name: int8, name + SCALE_SUFFIX: float32 scales} (non-float tensors pass through)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if not t.is_floating_point() or t.dim() == 0:
            out[name] = t
            continue
        x = t.detach().float().cpu()
        scale = x.abs().amax(dim=_axis(x), keepdim=True).clamp_min(1e-30) / _QMAX
        out[name] = torch.round(x / scale).clamp(-_QMAX, _QMAX).to(torch.int8).contiguous()
        out[name + SCALE_SUFFIX] = scale.contiguous()
    return out


def round_trip(tensors: dict[str, torch.Tensor], dtype: torch.dtype, where: str) -> dict[str, torch.Tensor]:
    """What a bundle serves of `tensors` once stored as int8: quantized, then dequantized into `dtype`."""
    return dequantize(quantize(tensors), dtype, where)


def is_quantized(tensors: dict[str, torch.Tensor]) -> bool:
    return any(n.endswith(SCALE_SUFFIX) for n in tensors)


def dequantize(tensors: dict[str, torch.Tensor], dtype: torch.dtype, where: str) -> dict[str, torch.Tensor]:
    """The inverse of `quantize`, into `dtype`; a file whose int8 tensors and scales do not pair up is refused."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            if name[: -len(SCALE_SUFFIX)] not in tensors:
                raise BundleError(f"{where}: scales {name!r} without their int8 tensor")
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is None and (t.dtype != torch.int8 or t.dim() == 0):  # what `quantize` passes through
            out[name] = t
            continue
        if scale is None:
            raise BundleError(f"{where}: {name} has no {SCALE_SUFFIX} scales (an int8 stack stores both)")
        if t.dtype != torch.int8 or not scale.is_floating_point() or scale.dim() != t.dim() or any(
                s not in (1, n) for s, n in zip(scale.shape, t.shape, strict=True)):
            raise BundleError(f"{where}: {name} is {t.dtype} with scales of shape {tuple(scale.shape)}; expected "
                              f"int8 and scales broadcastable to {tuple(t.shape)}")
        out[name] = (t.float() * scale.float()).to(dtype)
    return out
