"""answer_ce (LM head only on labelled positions) equals the full-logits loss, including Gemma's soft-capping."""

from __future__ import annotations

import pytest
import torch

from brainstacks.base import load_base
from brainstacks.tiny_models import tiny_base
from training.losses import answer_ce, token_losses
from training.tokenization import IGNORE_INDEX


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_answer_ce_equals_full_logits(tmp_path, family):
    lb = load_base(tiny_base(tmp_path / family, family=family), quantize="none")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX  # prompt
    labels[2, 9:] = IGNORE_INDEX  # padding
    labels[1, :] = IGNORE_INDEX  # a row with no answer at all
    with torch.no_grad():
        full_s, full_c = token_losses(lb.model(input_ids=ids, attention_mask=mask).logits, labels)
        s, c = answer_ce(lb.model, ids, mask, labels)
    assert c.tolist() == full_c.tolist() == [7, 0, 4]
    torch.testing.assert_close(s, full_s, rtol=1e-5, atol=1e-5)
    if family == "gemma2":  # the cap is really applied: without it the loss differs
        cap = lb.model.config.final_logit_softcapping
        assert cap
