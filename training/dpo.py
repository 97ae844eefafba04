"""Direct Preference Optimization (Rafailov et al. 2023), sigmoid form, over summed sequence log-probabilities.

For a pair (prompt x, chosen y_w, rejected y_l), the policy π (the stack being trained on top of the frozen model)
and the reference π_ref (the same model with that stack off: everything frozen below it):

    r_w = β · (log π(y_w|x) − log π_ref(y_w|x))      r_l = β · (log π(y_l|x) − log π_ref(y_l|x))
    loss = −mean(log σ(r_w − r_l))                    reward margin = mean(r_w − r_l)

β defaults to TrainConfig.dpo_beta (0.1, the usual choice: larger β keeps the policy closer to the reference).
The margin and the preference accuracy mean(r_w > r_l) are what to watch: a collapsing run shows the loss falling
while both rewards sink (the model lowers the likelihood of everything), so the loop keeps the best snapshot by
validation loss and reports both rewards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.tokenization import IGNORE_INDEX


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over answer tokens of log p(token | prefix). logits (B, T, V) predict position t+1; labels (B, T)."""
    logits = logits[:, :-1].float()  # (B, T-1, V)
    labels = labels[:, 1:]  # (B, T-1)
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return (logp * mask).sum(-1)  # (B,)


@dataclass
class DPOStats:
    loss: float
    reward_margin: float  # mean(r_w − r_l)
    chosen_reward: float  # mean(r_w)
    rejected_reward: float  # mean(r_l)
    accuracy: float  # share of pairs with r_w > r_l


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = TrainConfig.dpo_beta,
) -> tuple[torch.Tensor, DPOStats]:
    """The sigmoid DPO loss over (B,) sequence log-probs, and its metrics. Reference log-probs carry no gradient."""
    r_w = beta * (policy_chosen - ref_chosen.detach())  # (B,)
    r_l = beta * (policy_rejected - ref_rejected.detach())  # (B,)
    margin = r_w - r_l
    loss = -F.logsigmoid(margin).mean()
    stats = DPOStats(
        loss=float(loss.detach()),
        reward_margin=float(margin.detach().mean()),
        chosen_reward=float(r_w.detach().mean()),
        rejected_reward=float(r_l.detach().mean()),
        accuracy=float((margin.detach() > 0).float().mean()),
    )
    return loss, stats
