"""What the model and the router read: prompt encoding and chat rendering, one code path for training and serving.

    ids = encode_prompt(tokenizer, "What is 2 + 2?")            # leading specials (BOS), never a trailing EOS
    text = render_chat(tokenizer, messages, add_generation_prompt=True)

Tokenizers without a chat template use FALLBACK_CHAT_TEMPLATE: `<|role|>\\n content`, EOS after assistant turns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def render_chat(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text, through the tokenizer's chat template or FALLBACK_CHAT_TEMPLATE."""
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    return text if isinstance(text, str) else text[0]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """A raw prompt's ids: with the tokenizer's leading special tokens (e.g. BOS), never a trailing EOS, BOS never
    doubled when the text (e.g. a rendered chat template) already starts with it; an empty prompt is [BOS]."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"]) if prompt else []
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if ids and eos is not None and ids[-1] == eos and bos != eos:
        ids = ids[:-1]  # tokenizers configured to append EOS: a prompt must stay open
    if not ids and bos is not None:
        ids = [bos]
    if (len(ids) >= 2 and ids[0] == bos and ids[1] == bos and tokenizer.bos_token
            and prompt.startswith(tokenizer.bos_token)):
        ids = ids[1:]
    return ids


def eos_token_ids(model, tokenizer) -> frozenset[int]:
    """Every id that ends a turn: the tokenizer's eos plus the model config's and generation_config.json's
    `eos_token_id` (an int or a list), so a chat model stops at its end-of-turn token (SmolLM2: <|im_end|>) and at
    any other end token its generation config names."""
    ids: set[int] = set()
    found = [getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None,
             getattr(getattr(model, "config", None), "eos_token_id", None),
             getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    for e in found:
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    return frozenset(ids)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as (input_ids, attention_mask), both (B, T) long; right padding, or left (`left=True`, so
    prompts end together for generation)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(T - len(s), T) if left else slice(0, len(s))
        ids[i, cols] = torch.tensor(list(s), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask
