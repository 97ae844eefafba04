"""Plain LoRA stacks (an imported adapter, e.g. PEFT's): their tensor format, their checks, and how they are packed
beside MoE-LoRA stacks.

A LoRA is a stack with one expert and no gate. On disk (stack.safetensors, stack.json "kind": "lora") it keeps its
own shape, only for the projections it adapts:

    {path}.lora_A  (r, d_in)      {path}.lora_B  (d_out, r), the adapter's scale (alpha/r or alpha/sqrt(r)) folded in

so δ(x) = lora_B · lora_A · x, and a wrapped projection the adapter does not touch gets no delta. Its rank may differ
from the bundle's stack rank, and from projection to projection.

In the fused forward every stack of a layer shares one packing geometry: E experts (the bundle's stack_config) at
the packing rank R, the largest rank of any stack served (MoE stacks pad r -> R with zero rows; zero rows add exact
zeros). A LoRA becomes E identical experts with router rows W = 0: its gate logits are all 0, so whichever top-k
experts are picked, their softmax gates are 1/k each and sum to 1, and Σ_e g_e · B A x = B A x exactly. The scale
the fused path multiplies by (stack_config's alpha/r) is divided out of B here. So the fused forward serves it in
the same constant number of ops, with per-row weights, next to trained stacks. The cost: a LoRA in a bundle of E
experts computes E copies of its rank (a bundle made by `brainstacks stacks import` has E = 1: no copies).
"""

from __future__ import annotations

import torch

from brainstacks.config import StackConfig

A_SUFFIX, B_SUFFIX = ".lora_A", ".lora_B"
KIND = "lora"


def is_lora_stack(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether a stack's tensors are a plain LoRA's ({path}.lora_A / .lora_B) rather than MoE-LoRA's (.A/.B/.W)."""
    return any(n.endswith(A_SUFFIX) or n.endswith(B_SUFFIX) for n in tensors)


def lora_rank(tensors: dict[str, torch.Tensor]) -> int:
    """The largest rank among a LoRA stack's projections."""
    return max(int(t.shape[0]) for n, t in tensors.items() if n.endswith(A_SUFFIX))


def lora_tensor_problem(tensors: dict[str, torch.Tensor], targets: dict[str, tuple[int, int]]) -> str | None:
    """The first way a LoRA stack's tensors do not fit projections {path: (d_out, d_in)}, or None: a name that is
    not {wrapped path}.lora_A|lora_B, an A without its B, a wrong shape (naming the module and both shapes), ranks
    that differ between A and B, a non-float dtype, or no projection at all."""
    paths: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in sorted(tensors.items()):
        for suffix in (A_SUFFIX, B_SUFFIX):
            if name.endswith(suffix):
                paths.setdefault(name[: -len(suffix)], {})[suffix] = t
                break
        else:
            return f"unexpected tensor {name} (a LoRA stack holds only <module>.lora_A and <module>.lora_B)"
    if not paths:
        return "no LoRA tensors"
    for path, pair in paths.items():
        if path not in targets:
            return f"module {path} is not a wrapped projection of this base"
        if len(pair) != 2:
            return f"module {path} has {'lora_A' if A_SUFFIX in pair else 'lora_B'} without its pair"
        A, B = pair[A_SUFFIX], pair[B_SUFFIX]
        if not (A.is_floating_point() and B.is_floating_point()):
            return f"module {path} has a non-float dtype ({A.dtype}, {B.dtype})"
        d_out, d_in = targets[path]
        if A.dim() != 2 or A.shape[1] != d_in or A.shape[0] < 1:
            return (f"shape mismatch for {path}.lora_A: has {tuple(A.shape)}, the base needs (r, {d_in}) "
                    f"(in_features {d_in})")
        if B.dim() != 2 or B.shape[0] != d_out or B.shape[1] != A.shape[0]:
            return (f"shape mismatch for {path}.lora_B: has {tuple(B.shape)}, the base needs ({d_out}, "
                    f"{A.shape[0]}) (out_features {d_out}, the rank of its lora_A)")
    return None


def packing_rank(config: StackConfig, stacks: list[dict[str, torch.Tensor]]) -> int:
    """R, the rank every stack is packed at: the bundle's stack rank, or the largest LoRA rank if that is larger."""
    return max([config.rank] + [lora_rank(s) for s in stacks if is_lora_stack(s)])


def to_packing(tensors: dict[str, torch.Tensor], targets: dict[str, tuple[int, int]], config: StackConfig,
               rank: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> dict[str, dict[str, torch.Tensor]]:
    """One validated stack (MoE-LoRA or LoRA) as {layer path: {"A": (E, R, d_in), "B": (E, d_out, R), "W": (E, d_in)}}
    in `dtype` on `device`, for every wrapped layer (see the module docstring)."""
    E = config.experts
    out: dict[str, dict[str, torch.Tensor]] = {}
    lora = is_lora_stack(tensors)
    for path, (d_out, d_in) in targets.items():
        dev = device
        A = torch.zeros(E, rank, d_in, dtype=dtype, device=dev)
        B = torch.zeros(E, d_out, rank, dtype=dtype, device=dev)
        W = torch.zeros(E, d_in, dtype=dtype, device=dev)
        if lora:
            a, b = tensors.get(path + A_SUFFIX), tensors.get(path + B_SUFFIX)
            if a is not None:
                r = a.shape[0]
                A[:, :r] = a.to(dtype)
                B[:, :, :r] = (b.float() / config.scale).to(dtype)  # the fused path multiplies by config.scale
        else:
            r = tensors[f"{path}.A"].shape[1]
            A[:, :r] = tensors[f"{path}.A"].to(dtype)
            B[:, :, :r] = tensors[f"{path}.B"].to(dtype)
            W.copy_(tensors[f"{path}.W"].to(dtype))
        out[path] = {"A": A, "B": B, "W": W}
    return out
