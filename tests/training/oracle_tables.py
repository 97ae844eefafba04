"""A ComboLoss over fixed loss tables, for testing training.router_targets.greedy_oracle without a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from training.router_targets import ComboLoss, Query


def table_combo_loss(table: Mapping[int, Mapping[frozenset, float]] | Sequence[Mapping[frozenset, float]]) -> ComboLoss:
    """A ComboLoss reading per-example tables {frozenset(names): loss}; a missing entry is a KeyError naming it."""

    def lookup(queries: Sequence[Query]) -> list[float]:
        out = []
        for i, combo in queries:
            try:
                out.append(float(table[i][frozenset(combo)]))
            except KeyError:
                raise KeyError(f"loss table has no entry for example {i}, combination {sorted(combo)}") from None
        return out

    return lookup
