"""Real PEFT LoRA adapters for the tests (`from tests.peft_adapters import make_adapter`): made with the `peft`
library itself on a tiny base, with random A and B (PEFT starts B at zero), saved as PEFT saves them."""

from __future__ import annotations

from pathlib import Path

import torch


def make_adapter(base: Path, out: Path, r: int = 4, alpha: float = 8.0, targets=("q_proj", "v_proj", "down_proj"),
                 rslora: bool = False, seed: int = 0, std: float = 0.2, **extra) -> Path:
    """A rank-`r` LoRA on `targets` of `base`, every A and B drawn N(0, std) from `seed`, saved to `out`."""
    import peft
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=rslora,
                          task_type="CAUSAL_LM", lora_dropout=0.0, **extra)
    pm = peft.get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    pm.save_pretrained(str(out))
    return out
