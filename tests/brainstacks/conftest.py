"""Fixtures for the core library tests: tiny random bases (built here, never downloaded) and stack fillers."""

from __future__ import annotations

import pytest

from brainstacks.tiny_models import tiny_base


@pytest.fixture(scope="session")
def base_dirs(tmp_path_factory):
    """One saved tiny base per family, shared by the session."""
    root = tmp_path_factory.mktemp("bases")
    return {f: tiny_base(root / f, family=f) for f in ("llama", "qwen2", "gemma2")}
