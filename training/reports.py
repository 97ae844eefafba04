"""Reports written to BUNDLE/reports/: loss curves (PNG), the forgetting matrix (JSON + PNG), routing tables (JSON).

JSON goes through brainstacks.files.write_json (NaN as null). Plots use matplotlib's Agg backend (no display
needed). Every writer also returns the path it wrote. Every file is written atomically (temp file, fsync, rename,
umask permissions: brainstacks.files.atomic_write), so a run killed while writing reports leaves each report
either as it was or complete, never half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainstacks.files import atomic_write, write_json

REPORTS = "reports"  # BUNDLE/reports/


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png"))


def plot_domain_curves(path: Path, domain: str, rounds: list[dict[str, Any]]) -> Path:
    """Train and validation loss per round of one domain (x: global step across rounds)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    offset = 0
    for r in rounds:
        hist = r["history"]
        steps = [offset + h["step"] for h in hist]
        ax.plot(steps, [h["val_loss"] for h in hist], marker="o", label=f"round {r['round']} valid"
                + ("" if r.get("kept", True) else " (discarded)"))
        tr = [(offset + h["step"], h["train_loss"]) for h in hist if h["train_loss"] == h["train_loss"]]
        if tr:
            ax.plot(*zip(*tr, strict=True), linestyle="--", alpha=0.6, label=f"round {r['round']} train")
        offset += r["steps"]
    ax.set_xlabel("optimizer step (rounds concatenated)")
    ax.set_ylabel("answer-token cross-entropy")
    ax.set_title(f"{domain}: residual boosting")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_reward_curve(path: Path, title: str, history: list[dict[str, Any]], evals: list[dict[str, Any]]) -> Path:
    """A GRPO stage's mean rollout reward per step (and its running mean), the held-out greedy reward at each
    evaluation, and the KL to the reference on a second axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    r = [h["reward"] for h in history]
    ax.plot(steps, r, alpha=0.35, label="rollout reward (mean of the step's samples)")
    w = max(1, min(len(r), max(3, len(r) // 10)))
    run = [sum(r[max(0, i - w + 1) : i + 1]) / len(r[max(0, i - w + 1) : i + 1]) for i in range(len(r))]
    ax.plot(steps, run, label=f"rollout reward, running mean of {w}")
    if evals:
        ax.plot([e["step"] for e in evals], [e["reward"] for e in evals], marker="o", label="held-out greedy reward")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.02, 1.02)
    if history and "kl" in history[0]:
        ax2 = ax.twinx()
        ax2.plot(steps, [h["kl"] for h in history], color="grey", linestyle=":", label="KL to reference (k3, right)")
        ax2.set_ylabel("KL to reference", color="grey")
    ax.set_title(title)
    handles = [h for a in fig.axes for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_matrix(path: Path, rows: list[str], cols: list[str], values: list[list[float | None]], title: str,
                xlabel: str, ylabel: str) -> Path:
    """A labelled heat map with the figures written in the cells."""
    plt = _plt()
    import numpy as np

    arr = np.array([[np.nan if v is None else v for v in r] for r in values], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cols), 1.0 + 0.6 * len(rows)))
    im = ax.imshow(arr, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(arr[i, j]):
                ax.text(j, i, f"{arr[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def forgetting_tables(matrix: dict[str, dict[str, float]], domains: list[str]) -> tuple[list[str], list[str],
                                                                                        list[list]]:
    """matrix[after][evaluated] → rows = evaluated domain, cols = 'after <domain>'."""
    after = [d for d in domains if d in matrix]
    rows = [d for d in domains if any(d in matrix[a] for a in after)]
    return rows, [f"after {a}" for a in after], [[matrix[a].get(r) for a in after] for r in rows]


def write_forgetting(reports: Path, domains: list[str], ungated: dict, routed: dict | None) -> None:
    """forgetting.json ({"ungated": after -> evaluated -> loss, "routed": {after: evaluated -> loss}}) and its
    heat map, the routed column last."""
    write_json(reports / "forgetting.json", {"ungated": ungated, "routed": routed or {}})
    rows, cols, vals = forgetting_tables(ungated, domains)
    if rows:
        if routed:  # one more column: every domain under the final router, after the last domain
            after = next(iter(routed))
            cols = [*cols, f"routed, after {after}"]
            vals = [[*v, routed[after].get(r)] for r, v in zip(rows, vals, strict=True)]
        plot_matrix(reports / "forgetting.png", rows, cols, vals, "validation loss: ungated after each domain; routed",
                    "after training", "evaluated domain")


def write_routing_report(reports: Path, report: dict[str, Any]) -> None:
    """routing.json (training/router_train.py's report) and the router's top-1 confusion as a heat map."""
    write_json(reports / "routing.json", report)
    conf = report.get("confusion") or {}
    if conf:
        doms = list(conf)
        plot_matrix(reports / "routing_confusion.png", doms, doms, [[conf[r][c] for c in doms] for r in doms],
                    "router top-1 (validation prompts)", "top-weighted domain", "true domain")
