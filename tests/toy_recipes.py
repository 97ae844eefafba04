"""Toy data and recipes for tests (`from tests.toy_recipes import write_toy_recipe`): clearly separable domains in
the tiny test vocabulary.

    recipe = write_toy_recipe(tmp_path, tiny_base(tmp_path / "base"), ["math", "medical"], steps_per_round=6)
    # then: brainstacks train --recipe {recipe} --out {bundle}

Everything here is written to disk by the caller; nothing is downloaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOY_DOMAINS = {
    "math": lambda r: (f"what is {r.randint(1, 9)} plus {r.randint(1, 9)} ?", f"answer {r.randint(1, 9)}"),
    "medical": lambda r: (f"patient dose mg per kg for the heart drug {r.randint(1, 9)} ?", f"{r.randint(1, 9)} mg"),
    "code": lambda r: (f"def function return list value {r.randint(1, 9)} python", f"print value {r.randint(1, 9)}"),
}


def write_toy_domain(path: Path, name: str, n: int, seed: int) -> Path:
    """n prompt/completion lines of toy domain `name`, deterministic by seed."""
    r = random.Random(f"{name}{seed}")
    lines = []
    for _ in range(n):
        p, c = TOY_DOMAINS[name](r)
        lines.append(json.dumps({"prompt": p, "completion": c}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_toy_recipe(root: Path, base: Path, domains: list[str], **over) -> Path:
    """A small recipe (and its data files) over `domains`; `over` overrides [train] keys."""
    for d in domains:
        write_toy_domain(root / f"{d}.jsonl", d, 48, 0)
    train = dict(steps_per_round=12, max_rounds=2, min_improvement=0.002, lr=3e-3, batch_size=8, grad_accum=1,
                 seq_len=32, eval_every=4, seed=0)
    train.update(over)
    body = [f'[base]\nmodel = "{base}"\nquantize = "nf4"\ndtype = "float32"\n',
            "[stack]\nexperts = 4\ntop_k = 2\nrank = 4\nalpha = 8\n",
            "[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in train.items()),
            "[nullspace]\nenabled = true\nsamples = 32\ndirections = 4\n",
            "[router]\nenabled = true\nrouter_tokens = 32\noracle_samples = 8\nepochs = 12\nlr = 2e-3\n"]
    for d in domains:
        body.append(f'[[domains]]\nname = "{d}"\ntrain = "{d}.jsonl"\nformat = "prompt_completion"\n')
    path = root / f"recipe_{len(domains)}.toml"
    path.write_text("\n".join(body))
    return path
