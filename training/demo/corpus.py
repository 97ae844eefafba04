"""The general pretraining corpus for the demo's tiny base model, built from what every Python install carries.

    docs = build_corpus(CorpusConfig(max_chars=3_000_000))   # list[str], deterministic for a config

Sources, each capped by its share of `max_chars`:
  prose      the reference manual text in `pydoc_data.topics` and the docstrings of the standard library
             (module, class and function docstrings harvested with `ast`);
  code       standard-library source files (comments included), cut into chunks at line boundaries, minus the
             functions the code domain holds out for valid/test;
  generated  short neutral stories from the demo lexicon (simple grammatical English the stdlib lacks);
  demo       train-split text of the five demo domains, rendered as the training loaders present it.

Why demo text: the base is a few million parameters trained for minutes, so without it the base would meet the
domains' vocabulary and formats ("mg/kg", "Answer: 14", the chat role markers) for the first time in adapter
training, and the tokenizer would split them into bytes. The demo share is drawn from the train split with its own
seed (`demo_seed`), so the base never sees a valid or test prompt (those live in other hash buckets, see
`training.demo.sampling`), and it is small (15 %) so the domain stacks still have most of the domain to learn.

The stdlib is read from the running interpreter (`sysconfig.get_paths()["stdlib"]`), at build time only; nothing of
it is shipped except through the trained weights. Files are visited in sorted order and shuffled with a seeded
`random.Random`, so the corpus is the same for the same Python and config.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from brainstacks.errors import ConfigError
from training.demo.code_data import stdlib_files
from training.demo.lexicon import NAMES, PLACES, sentence
from training.demo.sampling import DOMAINS, generate

# Special tokens of the demo tokenizer and the chat layout they make (the tokenizer's chat template renders exactly
# `bos + render_messages(messages)`; training/data_files.py's fallback template uses the same layout).
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLES = ("system", "user", "assistant")
ROLE_TOKENS = tuple(f"<|{r}|>" for r in ROLES)
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)


@dataclass
class CorpusConfig:
    """Defaults of the pretraining corpus (characters, relative shares of each source, seeds)."""

    max_chars: int = 3_000_000
    prose_share: float = 0.45
    code_share: float = 0.35
    generated_share: float = 0.05
    demo_share: float = 0.15
    max_doc_chars: int = 3000  # long files and docstring collections are cut into documents of at most this size
    seed: int = 0
    demo_seed: int = 1000  # differs from DemoDataConfig.seed: the base sees other train examples than the stacks

    def validate(self) -> None:
        shares = (self.prose_share, self.code_share, self.generated_share, self.demo_share)
        if self.max_chars <= 0:
            raise ConfigError(f"corpus max_chars must be > 0, got {self.max_chars}")
        if any(s < 0 for s in shares) or sum(shares) <= 0:
            raise ConfigError(f"corpus shares must be >= 0 with a positive sum, got {shares}")
        if self.max_doc_chars < 100:
            raise ConfigError(f"corpus max_doc_chars must be >= 100, got {self.max_doc_chars}")


def render_messages(messages: Sequence[dict]) -> str:
    """A conversation in the demo chat layout: `<|role|>\\n{content}\\n`, assistant turns closed by EOS."""
    out = []
    for m in messages:
        end = EOS if m["role"] == "assistant" else ""
        out.append(f"<|{m['role']}|>\n{m['content']}{end}\n")
    return "".join(out)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def chunk_text(text: str, size: int) -> Iterator[str]:
    """Cut `text` at line boundaries into pieces of at most about `size` characters."""
    piece: list[str] = []
    n = 0
    for line in text.splitlines(keepends=True):
        if n + len(line) > size and piece:
            yield "".join(piece)
            piece, n = [], 0
        piece.append(line[:size])
        n += len(line[:size])
    if piece:
        yield "".join(piece)


def _take(docs: Iterable[str], budget: int) -> list[str]:
    """Documents in order until `budget` characters (the last one cut to fit)."""
    out: list[str] = []
    for doc in docs:
        if budget <= 0:
            break
        doc = doc.strip("\n")
        if not doc.strip():
            continue
        out.append(doc[:budget])
        budget -= len(out[-1])
    return out


def _shuffled_files(seed: int) -> list[Path]:
    files = stdlib_files(stdlib_root())
    random.Random(seed).shuffle(files)
    return files


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 40:
                found.append(doc)
    return found


def prose_docs(seed: int, max_doc_chars: int) -> Iterator[str]:
    """Language reference topics interleaved with standard-library docstrings, as documents (lazily)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        topics = {}
    names = sorted(topics)
    random.Random(seed).shuffle(names)
    # Interleave reference topics and docstring collections so a small budget still gets both kinds.
    files = iter(_shuffled_files(seed + 1))
    for name in names:
        yield from chunk_text(topics[name], max_doc_chars)
        for path in files:
            docs = _docstrings(path)
            if docs:
                yield from chunk_text("\n\n".join(docs), max_doc_chars)
                break
    for path in files:
        yield from chunk_text("\n\n".join(_docstrings(path)), max_doc_chars)


def code_docs(seed: int, max_doc_chars: int) -> Iterator[str]:
    """Standard-library source files (seeded order), each cut into documents; at most 3 documents per file.

    (The demo's code domain is templated, so no stdlib function is a held-out answer.)
    """
    for path in _shuffled_files(seed + 2):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for i, piece in enumerate(chunk_text(text, max_doc_chars)):
            if i >= 3:
                break
            yield piece


def generated_docs(seed: int) -> Iterator[str]:
    """Endless short neutral stories made from the demo lexicon."""
    rng = random.Random(f"corpus-generated/{seed}")
    while True:
        name, place = rng.choice(NAMES), rng.choice(PLACES)
        lines = [f"{name} spent the morning {place}."]
        lines += [sentence(rng) for _ in range(rng.randint(2, 5))]
        lines.append(rng.choice(("It was a good day.", "Then everyone went home.", "Nobody said a word.",
                                 f"{name} smiled.", "The end.")))  # fmt: skip
        yield " ".join(lines)


def demo_docs(seed: int, n_per_domain: int) -> list[str]:
    """Train-split examples of every demo domain, rendered as the training loaders present them, interleaved."""
    per_domain = []
    for domain in DOMAINS:
        rows = generate(domain, "train", n_per_domain, seed)
        per_domain.append([render_messages(r["messages"]) if "messages" in r else r["prompt"] + r["completion"]
                           for r in rows])  # fmt: skip
    return [doc for group in zip(*per_domain, strict=True) for doc in group]


def build_corpus(config: CorpusConfig | None = None) -> list[str]:
    """The pretraining documents (deterministic for a config), shuffled together; about `max_chars` in total."""
    cfg = config or CorpusConfig()
    cfg.validate()
    shares = {"prose": cfg.prose_share, "code": cfg.code_share, "generated": cfg.generated_share,
              "demo": cfg.demo_share}  # fmt: skip
    total = sum(shares.values())  # shares are relative: setting one to 0 drops that source, the rest fill in
    budget = {name: int(cfg.max_chars * share / total) for name, share in shares.items()}
    docs = _take(prose_docs(cfg.seed, cfg.max_doc_chars), budget["prose"])
    docs += _take(code_docs(cfg.seed, cfg.max_doc_chars), budget["code"])
    docs += _take(generated_docs(cfg.seed), budget["generated"])
    if budget["demo"] > 0:
        # Demo examples average ~200 characters; ask for enough, then cut to the budget.
        n = max(1, budget["demo"] // (len(DOMAINS) * 120))
        docs += _take(demo_docs(cfg.demo_seed, n), budget["demo"])
    random.Random(cfg.seed).shuffle(docs)
    return docs

