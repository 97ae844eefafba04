"""Configuration of training: the single source of truth for every training default and bound.

    from training.config import TrainConfig, RouterTrainConfig
    cfg = TrainConfig(steps_per_round=100)     # what the recipe's [train] section fills (training/recipe.py)

Fields declared with `brainstacks.config.bounded` carry their bounds: `validate()` and the recipe parser both check
them, so a value the recipe accepts is one the loops accept. The library's own configs (StackConfig, RouterConfig,
NullspaceConfig) live in `brainstacks/config.py`; the recipe's whole shape (Recipe, load_recipe) in
`training/recipe.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from brainstacks.base import QUANTIZE_CHOICES
from brainstacks.config import DTYPES, ConfigBase, bounded

FORMATS = ("prompt_completion", "messages", "text", "preference")
STAGES = ("sft", "dpo")


@dataclass
class TrainConfig(ConfigBase):
    """Inner-loop (residual boosting) settings. Recipe keys: the bounded fields (docs/DESIGN.md §5)."""

    steps_per_round: int = bounded(400, 1)  # optimizer steps per boosting round
    max_rounds: int = bounded(3, 1, 64)  # at most this many stacks per domain
    min_improvement: float = bounded(0.002, 0.0)  # add another round only while validation improves by this much
    lr: float = bounded(2e-4, 0.0, 1.0, lo_open=True)
    batch_size: int = bounded(4, 1)  # sequences per micro-batch
    grad_accum: int = bounded(1, 1)  # micro-batches per optimizer step
    seq_len: int = bounded(512, 8)  # tokens per training sequence (longer examples are truncated)
    eval_every: int = bounded(50, 1)  # optimizer steps between validation passes (best snapshot kept and restored)
    seed: int = bounded(0, 0)
    # Not recipe keys (docs/DESIGN.md §5 fixes the key set); tuned here, read by the loops.
    warmup_frac: float = 0.05  # fraction of steps_per_round spent in linear warmup
    min_lr_frac: float = 0.1  # cosine floor, as a fraction of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    spike_factor: float = 1.5  # stop a round early when validation loss exceeds best * spike_factor
    valid_fraction: float = 0.1  # held-out share when a domain has no valid file
    max_eval_batches: int = 50  # validation batches per evaluation (bounds eval cost)
    dpo_beta: float = 0.1  # DPO temperature (stage = "dpo"; training/dpo.py)


@dataclass
class RouterTrainConfig(ConfigBase):
    """Meta-router training (docs/DESIGN.md §2). Recipe keys ([router]): enabled, oracle_samples, epochs, lr."""

    enabled: bool = bounded(True)
    oracle_samples: int = bounded(200, 1)  # prompt/answer pairs per domain scored by the outcome-based oracle
    epochs: int = bounded(8, 1)
    lr: float = bounded(8e-4, 0.0, 1.0, lo_open=True)
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
class BaseSpec(ConfigBase):
    """[base]: the model to train on and how to load it."""

    model: Path | str  # absolute path of a HF directory or .gguf file, or "package:<dist>/<file>"
    quantize: str = bounded("nf4", choices=QUANTIZE_CHOICES)
    dtype: str = bounded("float32", choices=DTYPES)


@dataclass
class DomainSpec:
    """[[domains]]: one domain's data, in curriculum order."""

    name: str
    train: Path
    valid: Path | None = None
    format: str = "prompt_completion"  # one of FORMATS
    stage: str = "sft"  # one of STAGES ("dpo" takes format "preference")


@dataclass
class MixedSet:
    """[[router.mixed]]: prompts whose router target is the multi-hot of `domains`."""

    file: Path
    domains: list[str] = field(default_factory=list)
