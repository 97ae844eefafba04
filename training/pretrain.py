"""`brainstacks pretrain`: a tiny Llama base model and its tokenizer, trained from random init on CPU in minutes.

    brainstacks pretrain --out runs/base [--steps N] [--seq-len L] [--seed S] [--corpus-chars C] ...
    path = pretrain("runs/base", PretrainConfig(steps=200))      # the boundary experiment (docs/SCIENCE.md)

Steps: build the corpus (training/demo/corpus.py), train a byte-level BPE tokenizer on it (`tokenizers`; special tokens
<|bos|> <|eos|> <|pad|> and the chat role markers; a Jinja chat template), then train a LlamaForCausalLM on random
windows of the tokenized corpus with AdamW, linear warmup, cosine decay and gradient clipping, and save
  OUT/config.json, model.safetensors, generation_config.json    (weights in `save_dtype`, default bfloat16)
  OUT/tokenizer.json, tokenizer_config.json, chat_template.jinja
  OUT/reports/pretrain_loss.png, pretrain_loss.json             (loss curve and history)
The directory loads with `AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)`.
Every linear layer's out_features is a multiple of 32, so bitsandbytes can quantize the model to NF4.

This is the paper's from-scratch experiment at demo scale: the point is a base that knows the token statistics
of English, Python and the demo formats well enough for the adapter stacks to have something to build on.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from brainstacks.errors import ConfigError
from brainstacks.text import FALLBACK_CHAT_TEMPLATE
from training.demo.corpus import BOS, EOS, PAD, ROLE_TOKENS, SPECIAL_TOKENS, CorpusConfig, build_corpus, chunk_text

# Renders `bos + training.demo.corpus.render_messages(messages)`; prefix-stable, as training/data_files.py requires.
CHAT_TEMPLATE = "{{ bos_token }}" + FALLBACK_CHAT_TEMPLATE


@dataclass
class PretrainConfig:
    """Every default of `brainstacks pretrain` (the CLI flags are generated from these fields).

    Sizing, measured on 2 CPU cores shared with other jobs: the 4.0M-parameter default model trains at 500-1200
    tokens/s (compute-bound), so the default budget is 400 steps x 4 x 256 = 410k tokens (~7 min when the cores
    are free). At an equal token budget, batches of 4 reached a 0.2 nats lower validation loss than batches of 8
    (123k tokens: 6.26 vs 6.48), so the default favours more, smaller steps.
    """

    steps: int = field(default=400, metadata={"help": "optimizer steps (400: about 7 min on 2 idle CPU cores)"})
    seq_len: int = field(default=256, metadata={"help": "tokens per training window"})
    batch_size: int = field(default=4, metadata={"help": "windows per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final learning rate as a fraction of the peak"})
    warmup_steps: int = field(default=30, metadata={"help": "linear warmup steps (at most a tenth of steps)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    grad_clip: float = field(default=1.0, metadata={"help": "max global gradient norm"})
    seed: int = field(default=0, metadata={"help": "seed for init, corpus order and batches"})
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary size, special tokens included"})
    hidden_size: int = field(default=256, metadata={"help": "model width"})
    num_layers: int = field(default=4, metadata={"help": "decoder layers"})
    intermediate_size: int = field(default=704, metadata={"help": "MLP width (multiple of 32)"})
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    num_kv_heads: int = field(default=2, metadata={"help": "key/value heads (grouped-query attention)"})
    max_position_embeddings: int = field(default=512, metadata={"help": "longest sequence the model accepts"})
    corpus_chars: int = field(default=CorpusConfig.max_chars, metadata={"help": "corpus size in characters"})
    val_fraction: float = field(default=0.02, metadata={"help": "share of corpus documents held out for val loss"})
    eval_every: int = field(default=100, metadata={"help": "steps between validation losses (0: only at the end)"})
    eval_batches: int = field(default=8, metadata={"help": "batches per validation loss"})
    bf16_autocast: bool = field(default=False,
                                metadata={"help": "bfloat16 autocast (fast only on CPUs with bf16 units)"})
    save_dtype: str = field(default="bfloat16",
                            metadata={"help": "dtype of the saved weights: bfloat16|float16|float32"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})

    def validate(self) -> None:
        """Refuse values that cannot train or that bitsandbytes NF4 cannot quantize."""
        for name in ("steps", "seq_len", "batch_size", "vocab_size", "hidden_size", "num_layers",
                     "intermediate_size", "num_heads", "num_kv_heads", "max_position_embeddings",
                     "corpus_chars"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ConfigError(f"pretrain {name} must be > 0, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"pretrain hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"pretrain num_heads {self.num_heads} is not divisible by "
                              f"num_kv_heads {self.num_kv_heads}")
        head_dim = self.hidden_size // self.num_heads
        for name, out_features in (("hidden_size", self.hidden_size), ("intermediate_size", self.intermediate_size),
                                   ("num_kv_heads * head_dim", self.num_kv_heads * head_dim)):  # fmt: skip
            if out_features % 32:
                raise ConfigError(f"pretrain {name} = {out_features} must be a multiple of 32 (bitsandbytes NF4)")
        if self.seq_len > self.max_position_embeddings:
            raise ConfigError(f"pretrain seq_len {self.seq_len} exceeds "
                              f"max_position_embeddings {self.max_position_embeddings}")
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ConfigError(f"pretrain vocab_size {self.vocab_size} is below the byte alphabet plus special tokens")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"pretrain val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.save_dtype not in ("bfloat16", "float16", "float32"):
            raise ConfigError(f"pretrain save_dtype must be bfloat16, float16 or float32, got {self.save_dtype!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0 or self.lr <= 0:
            raise ConfigError(f"pretrain lr must be > 0 and min_lr_ratio in [0, 1], got {self.lr}, {self.min_lr_ratio}")


# --- tokenizer --------------------------------------------------------------------------------------------------


def train_tokenizer(docs: Sequence[str], vocab_size: int, model_max_length: int):
    """A byte-level BPE tokenizer trained on `docs`, wrapped as a transformers PreTrainedTokenizerFast.

    It prepends <|bos|> when asked for special tokens (as Llama tokenizers do); the role markers are special tokens,
    so they survive encoding as single ids; `chat_template` renders CHAT_TEMPLATE.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def plain(texts):  # markers are special tokens: keep them out of the merge statistics
        for t in texts:
            for marker in SPECIAL_TOKENS:
                t = t.replace(marker, "\n")
            yield t

    tok.train_from_iterator(plain(docs), trainer=trainer, length=len(docs))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=model_max_length,
        padding_side="left",  # decoder-only generation pads on the left
    )
    fast.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS)})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_corpus(tokenizer, docs: Sequence[str]):
    """One long int64 tensor: every document as <|bos|> ids <|eos|>, in order."""
    import torch

    ids: list[int] = []
    eos = tokenizer.eos_token_id
    backend = tokenizer.backend_tokenizer  # the raw tokenizers.Tokenizer: batch encoding in Rust threads
    for enc in backend.encode_batch(list(docs), add_special_tokens=True):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


# --- model and training -----------------------------------------------------------------------------------------


def build_model(config: PretrainConfig, tokenizer):
    """A randomly initialised LlamaForCausalLM sized by `config`; the vocabulary is padded to a multiple of 32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = math.ceil(len(tokenizer) / 32) * 32
    mcfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(mcfg)


def warmup_of(config: PretrainConfig) -> int:
    """Linear-warmup steps of the schedule (training.schedule.warmup_cosine): warmup_steps, at most a tenth of steps."""
    return min(config.warmup_steps, max(1, config.steps // 10)) if config.warmup_steps else 0


def _batch(stream, seq_len: int, batch_size: int, gen):
    import torch

    starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])  # (B, L)


def _autocast(enabled: bool):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def evaluate(model, stream, config: PretrainConfig, seed: int) -> float:
    """Mean next-token loss on `eval_batches` fixed random windows of `stream`."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    model.eval()
    losses = []
    with torch.no_grad(), _autocast(config.bf16_autocast):
        for _ in range(config.eval_batches):
            x = _batch(stream, config.seq_len, config.batch_size, gen)
            losses.append(model(input_ids=x, labels=x).loss.float().item())
    model.train()
    return sum(losses) / len(losses)


def plot_loss(history: dict, path: Path) -> None:
    """Training loss (raw and smoothed) and validation loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps, loss = history["step"], history["loss"]
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="train (per step)")
    k = max(1, len(loss) // 50)
    smooth = [sum(loss[max(0, i - k + 1) : i + 1]) / len(loss[max(0, i - k + 1) : i + 1]) for i in range(len(loss))]
    ax.plot(steps, smooth, lw=1.5, label=f"train (mean of {k})")
    if history["val_step"]:
        ax.plot(history["val_step"], history["val_loss"], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("brainstacks pretrain")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _streams(cfg: PretrainConfig, corpus_text: str | Sequence[str] | None):
    """The documents, the trained tokenizer, and the training and validation token streams."""
    if corpus_text is None:
        docs = build_corpus(CorpusConfig(max_chars=cfg.corpus_chars, seed=cfg.seed))
    elif isinstance(corpus_text, str):
        docs = list(chunk_text(corpus_text, CorpusConfig.max_doc_chars))
    else:
        docs = [d for d in corpus_text if d]
    if len(docs) < 2:
        raise ConfigError("pretrain corpus needs at least 2 documents (one is held out for validation)")
    n_val = max(1, int(len(docs) * cfg.val_fraction))
    tokenizer = train_tokenizer(docs, cfg.vocab_size, cfg.max_position_embeddings)
    train_stream = encode_corpus(tokenizer, docs[:-n_val])
    val_stream = encode_corpus(tokenizer, docs[-n_val:])
    for name, stream in (("training", train_stream), ("validation", val_stream)):
        if len(stream) <= cfg.seq_len:
            raise ConfigError(f"pretrain {name} corpus has {len(stream)} tokens, fewer than seq_len {cfg.seq_len} + 1")
    return docs, tokenizer, train_stream, val_stream


def _save(model, tokenizer, out: Path, save_dtype: str) -> None:
    """The base as a Hugging Face directory, readable by everyone (it is shipped and shared)."""
    import torch

    model.to(getattr(torch, save_dtype)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    for path in out.iterdir():  # safetensors writes 0600 temp files; the base is shipped and shared, make it readable
        if path.is_file():
            path.chmod(0o644)


def pretrain(out_dir: str | Path, config: PretrainConfig | None = None,
             corpus_text: str | Sequence[str] | None = None) -> Path:
    """Train the tokenizer and model described by `config` and save them in `out_dir`; returns `out_dir`.

    `corpus_text` is a list of documents, or one string (cut into documents at line boundaries); by default
    `build_corpus(CorpusConfig(max_chars=config.corpus_chars, seed=config.seed))`.
    """
    import torch
    from tqdm.auto import tqdm

    from training.schedule import warmup_cosine

    cfg = config or PretrainConfig()
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    docs, tokenizer, train_stream, val_stream = _streams(cfg, corpus_text)
    prep_s = time.perf_counter() - t0

    model = build_model(cfg, tokenizer)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    sched = warmup_cosine(opt, cfg.steps, warmup_of(cfg), cfg.min_lr_ratio)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: dict = {"step": [], "loss": [], "lr": [], "val_step": [], "val_loss": []}
    tokens_per_step = cfg.batch_size * cfg.seq_len
    t_train = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="pretrain", unit="step", disable=not cfg.progress, dynamic_ncols=True)
    for step in bar:
        x = _batch(train_stream, cfg.seq_len, cfg.batch_size, gen)  # (B, L)
        with _autocast(cfg.bf16_autocast):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = opt.param_groups[0]["lr"]  # the rate this step used
        opt.step()
        sched.step()
        value = loss.item()
        if not math.isfinite(value):
            raise ConfigError(f"pretrain loss became {value} at step {step + 1}; lower --lr (now {cfg.lr})")
        history["step"].append(step + 1)
        history["loss"].append(round(value, 5))
        history["lr"].append(lr)
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps:
            history["val_step"].append(step + 1)
            history["val_loss"].append(round(evaluate(model, val_stream, cfg, cfg.seed + 1), 5))
        elapsed = time.perf_counter() - t_train
        bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{(step + 1) * tokens_per_step / elapsed:,.0f}", refresh=False)
    bar.close()
    train_s = time.perf_counter() - t_train

    _save(model, tokenizer, out, cfg.save_dtype)
    report = {
        **history,
        "tokens_per_s": round(cfg.steps * tokens_per_step / train_s, 1),
        "train_s": round(train_s, 1),
        "prep_s": round(prep_s, 1),
        "train_tokens": len(train_stream),
        "val_tokens": len(val_stream),
        "documents": len(docs),
        "corpus_chars": sum(len(d) for d in docs),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "config": asdict(cfg),
    }
    (out / "reports").mkdir(exist_ok=True)
    (out / "reports" / "pretrain_loss.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_loss(history, out / "reports" / "pretrain_loss.png")
    return out


# --- command line -----------------------------------------------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `brainstacks pretrain`; one flag per PretrainConfig field, defaults read from the dataclass."""
    p = subparsers.add_parser(
        "pretrain",
        help="train a tiny base model and tokenizer from random init",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="output directory (a Hugging Face model directory)")
    for f in fields(PretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"])
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig)})
    out = pretrain(args.out, config)
    report = json.loads((out / "reports" / "pretrain_loss.json").read_text())
    last_val = report["val_loss"][-1] if report["val_loss"] else float("nan")
    print(
        f"pretrain: {out} ({report['parameters']:,} parameters, {report['train_tokens']:,} training tokens); "
        f"final train loss {report['loss'][-1]:.3f}, validation loss {last_val:.3f}, "
        f"{report['tokens_per_s']:,.0f} tokens/s over {report['train_s']:.0f} s"
    )
    return 0
