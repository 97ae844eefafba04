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

from brainstacks.config import COMPUTE_DTYPES, ConfigBase, bounded
from brainstacks.quant import QUANTIZE_CHOICES

FORMATS = ("prompt_completion", "messages", "text", "preference", "prompt_answer")
STAGES = ("sft", "dpo", "grpo")
STAGE_FORMATS = {"dpo": ("preference",), "grpo": ("prompt_answer",)}  # sft takes the others
REWARDS = ("exact_answer", "python_tests")  # training/rewards.py


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
class GRPOConfig(ConfigBase):
    """[grpo]: group-relative policy optimisation of a stage "grpo" stack (training/grpo.py). Recipe keys: the
    bounded fields (docs/DESIGN.md §5); the learning rate and seed are [train]'s."""

    group_size: int = bounded(4, 2, 256)  # completions sampled per prompt (the advantage's group)
    max_new_tokens: int = bounded(64, 1, 4096)  # rollout length cap
    temperature: float = bounded(1.0, 0.0, 10.0, lo_open=True)  # rollout sampling temperature
    kl_coef: float = bounded(0.04, 0.0)  # weight of the k3 KL estimate to the reference (the model below the stack)
    clip: float = bounded(0.2, 0.0, 1.0, lo_open=True)  # PPO ratio clip range [1 - clip, 1 + clip]
    steps: int = bounded(50, 1)  # optimizer steps (one rollout batch each)
    reward: str = bounded("exact_answer", choices=REWARDS)
    # Not recipe keys; tuned here, read by the loop.
    prompts_per_step: int = 4  # prompts per rollout batch (x group_size rows, one generate call)
    updates_per_rollout: int = 1  # optimizer passes over each rollout batch (>1 makes the clip bite)
    eval_prompts: int = 16  # held-out prompts whose greedy reward is measured before, every eval_every, and after
    eval_every: int = 10
    std_eps: float = 1e-4  # advantage = (r - mean) / (std + std_eps), per group


@dataclass
class BaseSpec(ConfigBase):
    """[base]: the model to train on and how to load it."""

    model: Path | str  # absolute path of a HF directory or .gguf file, or "package:<dist>/<file>"
    quantize: str = bounded("nf4", choices=QUANTIZE_CHOICES)
    dtype: str = bounded("float32", choices=COMPUTE_DTYPES)


@dataclass
class DomainSpec:
    """[[domains]]: one domain's data, in curriculum order."""

    name: str
    train: Path
    valid: Path | None = None
    format: str = "prompt_completion"  # one of FORMATS
    stage: str = "sft"  # one of STAGES ("dpo" takes format "preference", "grpo" "prompt_answer"; STAGE_FORMATS)
    later: list[DomainSpec] = field(default_factory=list)  # the domain's later stages (repeated [[domains]] entries)

    @property
    def stages(self) -> list[DomainSpec]:
        """Every stage of the domain in training order: this entry, then the later ones (each adds stacks)."""
        return [self, *self.later]


@dataclass
class MixedSet:
    """[[router.mixed]]: prompts whose router target is the multi-hot of `domains`."""

    file: Path
    domains: list[str] = field(default_factory=list)
