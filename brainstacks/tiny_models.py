"""Tiny random models, built locally and never downloaded: the base of `brainstacks demo build --quick` (a pipeline
check a user runs), of the benchmarks' quick modes and of the tests. (Named for what it holds; it was testing.py,
but the product's --quick path and the shipped benchmarks use it, so it is not test-only.)

    path = tiny_base(tmp_path / "base", family="llama")   # a saved HF directory with a word-level tokenizer
    path = tiny_base(tmp_path / "g3", family="gemma3_mm", instruct=True)   # + the family's chat template and turn end

Families (FAMILIES): llama, qwen2, qwen3, mistral, gemma2, gemma3 (Gemma3ForCausalLM) and gemma3_mm (the multimodal
Gemma3ForConditionalGeneration with a tiny SigLIP vision tower; text only: no image tokens are ever produced). Every
decoder projection's out_features is a multiple of 32, as bitsandbytes NF4 requires. The sliding-window families
(mistral, gemma2, gemma3*) get a window of SLIDING_WINDOW tokens, so a short test prompt already exceeds it. The
Gemmas get a final-logit soft-cap of SOFTCAP (released Gemma 3 configs set none: set here so capping is exercised;
transformers applies it in Gemma2/Gemma3ForCausalLM, not in Gemma3ForConditionalGeneration).

`instruct=True` gives the tokenizer the special tokens and a chat template in the family's instruct format (Llama 3
headers, ChatML for Qwen, [INST] for Mistral, turns for Gemma, whose `<end_of_turn>` is not the tokenizer's eos and
is named only by generation_config.json, as in the real checkpoints); END_OF_TURN maps each family to that token.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from brainstacks.errors import ConfigError

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "gemma3_mm")
SLIDING_WINDOW = 16
SOFTCAP = 30.0

# instruct tokenizers: (unk, pad, bos, eos), the other specials, the words the template needs, the chat template,
# whether the tokenizer adds BOS, and the end-of-turn token generation_config.json names (besides eos)
_LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
           "m['content'] + '<|eot_id|>' }}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
_CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
_MISTRAL = ("{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
            "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\n\n' %}"
            "{% elif m['role'] == 'user' %}{{ '[INST] ' + ns.sys + m['content'] + ' [/INST]' }}{% set ns.sys = '' %}"
            "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")
_GEMMA = ("{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
          "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\n\n' %}{% else %}"
          "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' + ns.sys + "
          "m['content'] + "
          "'<end_of_turn>\n' }}{% set ns.sys = '' %}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
_ROLES = ("system", "user", "assistant")
_QWEN = (("<unk>", "<|endoftext|>", None, "<|im_end|>"), ("<|im_start|>",), _ROLES, _CHATML, False, "<|endoftext|>")
_GEMMA_TOK = (("<unk>", "<pad>", "<bos>", "<eos>"), ("<start_of_turn>", "<end_of_turn>"), _ROLES + ("model",), _GEMMA,
              True, "<end_of_turn>")
INSTRUCT = {
    "llama": (("<unk>", "<|finetune_right_pad_id|>", "<|begin_of_text|>", "<|eot_id|>"),
              ("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"), _ROLES, _LLAMA3, True,
              "<|end_of_text|>"),
    "qwen2": _QWEN,
    "qwen3": _QWEN,
    "mistral": (("<unk>", "<pad>", "<s>", "</s>"), ("[INST]", "[/INST]"), (), _MISTRAL, True, None),
    "gemma2": _GEMMA_TOK,
    "gemma3": _GEMMA_TOK,
    "gemma3_mm": _GEMMA_TOK,
}
# the token that ends an assistant turn in each family's chat template
END_OF_TURN = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "mistral": "</s>",
               "gemma2": "<end_of_turn>", "gemma3": "<end_of_turn>", "gemma3_mm": "<end_of_turn>"}

# A fixed word list so every tiny tokenizer is identical and texts in tests tokenize predictably.
WORDS = (
    "the a an of to and in is it that for on with as are was be by this at from or have not but what all were when "
    "we there can your which their said if do will each about how up out them then she many some so these would other "
    "into has more her two like him see time could no make than first been its who now people my made over did down "
    "only way find use may water long little very after words called just where most know math add sum plus minus "
    "times equals per answer dose mg kg patient drug heart blood code def return print list function value python "
    "if else"
).split()


def tiny_tokenizer(extra_words: tuple[str, ...] = (), family: str | None = None, instruct: bool = False):
    """The test tokenizer: word-level over WORDS, or byte-level BPE trained on them for the Qwen families (transformers
    rebuilds any qwen2 tokenizer as byte-level BPE from its vocab and merges, which a word-level one does not survive).
    `instruct`: the family's special tokens and chat template (INSTRUCT); else a plain `role: content` template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if family is not None and family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r}; choose from {FAMILIES}")
    if instruct and family is not None:
        (unk, pad, bos, eos), more, words, template, add_bos, _ = INSTRUCT[family]
    else:
        (unk, pad, bos, eos), more, words, template, add_bos = ("<unk>", "<pad>", "<bos>", "<eos>"), (), (), None, False
    specials = [t for t in (unk, pad, bos, eos) if t is not None] + list(more)
    all_words = sorted(set(WORDS) | set(extra_words) | set(words))
    if family in ("qwen2", "qwen3"):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=len(specials) + 256 + 160, special_tokens=specials,
                                      show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([" ".join(all_words), " " + " ".join(all_words)] * 4, trainer=trainer)
        vocab = tok.get_vocab()
    else:
        vocab = {w: i for i, w in enumerate(specials + all_words)}
        for ch in "0123456789.,:;?!+-*/=()":
            vocab.setdefault(ch, len(vocab))
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.Punctuation()])
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, vocab[bos])])
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, pad_token=pad, bos_token=bos, eos_token=eos,
                                additional_special_tokens=list(more))
    t.chat_template = template or (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    return t


def tiny_config(family: str = "llama", vocab_size: int = 256, hidden: int = 64, layers: int = 2,
                intermediate: int = 128, heads: int = 4, kv_heads: int = 2, pad: int | None = 1, bos: int | None = 2,
                eos: int | None = 3):
    """A transformers config for a tiny model of `family`; every decoder projection's out_features divisible by 32."""
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                  pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, tie_word_embeddings=False)
    head_dim = hidden // heads
    # Gemma 2/3 alternate local (sliding) and global layers; start with a sliding one so 2 layers hold both kinds
    alternating = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if family == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    if family == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(**common, head_dim=head_dim)
    if family == "mistral":
        from transformers import MistralConfig

        return MistralConfig(**common, head_dim=head_dim, sliding_window=SLIDING_WINDOW)
    if family == "gemma2":
        from transformers import Gemma2Config

        return Gemma2Config(**common, head_dim=head_dim, sliding_window=SLIDING_WINDOW, layer_types=alternating,
                            final_logit_softcapping=SOFTCAP)
    if family in ("gemma3", "gemma3_mm"):
        from transformers import Gemma3TextConfig

        text = Gemma3TextConfig(**common, head_dim=head_dim, sliding_window=SLIDING_WINDOW, layer_types=alternating,
                                final_logit_softcapping=SOFTCAP, query_pre_attn_scalar=head_dim)
        if family == "gemma3":
            return text
        from transformers import Gemma3Config, SiglipVisionConfig

        # 28x28 images in 14x14 patches: 4 patches pooled to 4 image tokens; the image token ids are the last ones
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=28, patch_size=14)
        text.tie_word_embeddings = False
        return Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                            image_token_index=vocab_size - 1, boi_token_index=vocab_size - 3,
                            eoi_token_index=vocab_size - 2, tie_word_embeddings=False)
    raise ConfigError(f"unknown family {family!r}; choose from {FAMILIES}")


def tiny_base(path: str | os.PathLike, family: str = "llama", seed: int = 0, instruct: bool = False, **sizes) -> Path:
    """Build, save and return a tiny random causal LM directory (model + tokenizer); `instruct`: the family's chat
    template and special tokens, and generation_config.json naming its end-of-turn token (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tok = tiny_tokenizer(family=family, instruct=instruct)
    ids = dict(pad=tok.pad_token_id, bos=tok.bos_token_id, eos=tok.eos_token_id)
    cfg = tiny_config(family, vocab_size=max(len(tok) + 3, sizes.pop("vocab_size", 256)), **ids, **sizes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    if instruct and INSTRUCT[family][5] is not None:
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(INSTRUCT[family][5])]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def randomize_active(sm, std: float = 0.05, seed: int = 0) -> None:
    """Give the active stack non-zero B (a fresh stack is an exact no-op) and distinct router rows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in sm.active_modules().values():
            m.B.copy_(torch.randn(m.B.shape, generator=g) * std)
            m.W.copy_(torch.randn(m.W.shape, generator=g) * 0.5)


def add_random_stacks(sm, per_domain: dict[str, int], seed: int = 0, dtype: str = "float32", std: float = 0.05
                      ) -> None:
    """Frozen stacks with random deltas (B ~ N(0, std), distinct gates): `per_domain[d]` of them for each domain d,
    the domain added first when missing. The one filler for tests and benchmarks."""
    k = 0
    for domain, n in per_domain.items():
        if domain not in sm.domains:
            sm.add_domain(domain)
        for _ in range(n):
            sm.start_stack(domain)
            randomize_active(sm, std=std, seed=seed + k)
            sm.freeze_active(dtype)
            k += 1
