"""The state the steps of one `brainstacks train` run share (training.curriculum's Run) and what the run returns
(TrainOutcome), in their own module so the stage code (training.stages) is typed against it without an import
circle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainstacks.base import LoadedBase
from brainstacks.bundle import DomainEntry, Manifest
from brainstacks.stacks import StackedModel
from brainstacks.versions import KEEP_VERSIONS
from training.boosting import DomainResult
from training.data_files import Record
from training.recipe import Recipe
from training.reports import REPORTS
from training.tokenization import DomainData, pad_id_of


@dataclass
class TrainOutcome:
    bundle_dir: Path
    manifest: Manifest
    trained: list[str] = field(default_factory=list)
    results: dict[str, DomainResult] = field(default_factory=dict)
    router_report: dict[str, Any] | None = None


@dataclass
class Run:
    """What the steps of one `train_bundle` share: the recipe, OUT, the model with every stack so far, and the
    bundle's manifest state (entries, version, router path) as it is written."""

    recipe: Recipe
    out: Path
    records: dict[str, list[Record]]  # every validated data file, by path
    base: LoadedBase
    sm: StackedModel
    data_sha: dict[str, list[str]]  # sha256 of each stage's train file (recorded in its stacks, checked on resume)
    entries: list[DomainEntry]
    stack_config: dict[str, Any]  # the manifest's: the recipe's, or an existing bundle's under --router-only
    version: int
    router_rel: str | None
    ungated: dict[str, dict[str, float]]  # forgetting: after domain -> evaluated domain -> loss, all stacks on
    routed: dict | None  # the forgetting report's routed column as the last complete run left it
    outcome: TrainOutcome
    log: Callable[[str], None] = print
    keep_versions: int = KEEP_VERSIONS
    rank: int = 0
    datasets: dict[str, DomainData] = field(default_factory=dict)  # each domain's first stage's data
    done: dict[str, int] = field(default_factory=dict)  # stages each resumed domain already holds

    @property
    def tokenizer(self):
        return self.base.tokenizer

    @property
    def pad(self) -> int:
        return pad_id_of(self.base.tokenizer)

    @property
    def reports(self) -> Path:
        return self.out / REPORTS
