"""`brainstacks demo build`: rebuild the embedded demo bundle from nothing but this repository and Python.

    brainstacks demo build [--out DIR] [--work DIR] [--quick] [--docs docs/DEMO.md]
    brainstacks demo evidence [--bundle DIR] [--work DIR] [--docs PATH]      (re-measure a built bundle)
    build_demo(DemoBuild(out=..., work=...))                                   (what the command runs)

Stages, each with progress bars, in a work directory (default build/demo):
  1. data      the five demo domains, train/valid/test JSONL           WORK/data/<domain>/<split>.jsonl
  2. base      a Llama base pretrained from scratch (training.pretrain)  WORK/base/
  3. recipe    recipes/demo.toml copied to WORK/recipe.toml, so its relative paths (base, data/...) resolve there
  4. train     the five domains with residual boosting and the null space, then the router (training.curriculum)
               into WORK/bundle/
  5. carry     the base copied into BUNDLE/base/ and the manifest's base path made relative ("base"), so the bundle
               serves on any machine; the pretrain loss curve joins BUNDLE/reports/
  6. evidence  held-out losses, accuracy, routing, the medical finding, samples (training.demo.evidence) into
               BUNDLE/reports/evidence.json, WORK/DEMO.md and, with --docs, that file
  7. install   WORK/bundle copied to --out (default: the shipped brainstacks/demo_bundle), replacing it in one rename
Data and base are reused when they exist with the same settings (a stamp records them); the bundle is always
trained afresh. The recipe file is the one source of the training settings (DESIGN §5 keys); the base is
PretrainConfig's defaults with DEMO_PRETRAIN_STEPS steps, the data DemoDataConfig's defaults. `--quick` shrinks everything (tiny base, a few steps) to check
the pipeline in about a minute; it never replaces the shipped bundle unless --out says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from brainstacks.errors import ConfigError
from training.demo.data import DOMAINS, SPLITS, DemoDataConfig, write_demo_data
from training.demo.evidence import EvidenceConfig
from training.pretrain import PretrainConfig

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo.toml"
WORK = Path("build/demo")
QUICK_WORK = Path("build/demo-quick")
BASE_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "special_tokens_map.json")
MAX_BUNDLE_MB = 40.0  # the limit for a bundle shipped inside the package
# The demo's base trains longer than `brainstacks pretrain`'s default (400 steps): on 2 CPU cores one torch thread
# ran the 4M-parameter base at 3,078 tokens/s (400 steps in 133 s), three times the two-thread rate even on idle
# cores, so 1,200 steps (1.2M tokens, ~7 min) fit the 30-minute budget with the domains, router and evidence.
DEMO_PRETRAIN_STEPS = 1200


@dataclass
class DemoBuild:
    """One build: where it reads and writes, and the settings that are not recipe keys."""

    out: Path | None = None  # where to install; None: the shipped DEMO_BUNDLE if `ship`, else nowhere
    ship: bool = True  # install into brainstacks/demo_bundle when `out` is None
    work: Path = WORK
    recipe: Path = RECIPE
    docs: Path | None = None  # also write the evidence Markdown here
    device: str = "cpu"
    progress: bool = True
    threads: int | None = 1  # torch CPU threads (None: torch's default); see DEMO_PRETRAIN_STEPS for why 1
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(steps=DEMO_PRETRAIN_STEPS))
    data: DemoDataConfig = field(default_factory=DemoDataConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    recipe_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # {table: {key: value}}


def quick_build(**over: Any) -> DemoBuild:
    """The `--quick` build: a tiny base and a few steps of everything (a pipeline check, not a useful model)."""
    b = DemoBuild(work=QUICK_WORK, ship=False, **over)
    b.pretrain = PretrainConfig(steps=30, seq_len=64, batch_size=8, warmup_steps=3, vocab_size=512, hidden_size=64,
                                num_layers=2, intermediate_size=128, num_heads=2, num_kv_heads=1,
                                max_position_embeddings=256, corpus_chars=60_000, eval_every=0, eval_batches=1,
                                progress=b.progress)
    b.data = DemoDataConfig(seed=0, sizes={"train": 40, "valid": 8, "test": 8})
    b.evidence = EvidenceConfig(loss_examples=4, accuracy_prompts=3, routing_prompts=4, max_new_tokens=8,
                                batch_size=8)
    b.recipe_overrides = {
        "stack": {"rank": 4},
        "train": {"steps_per_round": 3, "max_rounds": 2, "eval_every": 3, "batch_size": 8, "seq_len": 96},
        "nullspace": {"samples": 16, "directions": 4},
        "router": {"router_tokens": 64, "oracle_samples": 4, "epochs": 2},
    }
    return b


# --- stages -------------------------------------------------------------------------------------------------------


def _stamp_ok(path: Path, stamp: dict[str, Any]) -> bool:
    try:
        return json.loads(path.read_text()) == stamp
    except (OSError, ValueError):
        return False


def build_data(work: Path, cfg: DemoDataConfig, log: Callable[[str], None]) -> dict[str, dict[str, Path]]:
    """WORK/data/<domain>/<split>.jsonl, regenerated unless the stamp shows the same seed and sizes."""
    root = work / "data"
    stamp = {"seed": cfg.seed, "sizes": dict(cfg.sizes), "domains": list(DOMAINS)}
    paths = {d: {s: root / d / f"{s}.jsonl" for s in SPLITS} for d in DOMAINS}
    if _stamp_ok(root / "stamp.json", stamp) and all(p.is_file() for sp in paths.values() for p in sp.values()):
        log(f"[demo] data: reusing {root}")
        return paths
    log(f"[demo] data: writing {root} ({cfg.sizes} rows per domain, seed {cfg.seed})")
    paths = write_demo_data(root, seed=cfg.seed, sizes=cfg.sizes)
    (root / "stamp.json").write_text(json.dumps(stamp) + "\n")
    return paths


def _pretrain_stamp(cfg: PretrainConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"}


def build_base(work: Path, cfg: PretrainConfig, log: Callable[[str], None]) -> Path:
    """WORK/base, pretrained unless it already holds a base trained with the same settings."""
    from training.pretrain import pretrain

    base = work / "base"
    report = base / "reports" / "pretrain_loss.json"
    if (base / "model.safetensors").is_file() and report.is_file():
        done = {k: v for k, v in json.loads(report.read_text()).get("config", {}).items() if k != "progress"}
        if done == _pretrain_stamp(cfg):
            log(f"[demo] base: reusing {base}")
            return base
    log(f"[demo] base: pretraining into {base} ({cfg.steps} steps)")
    return pretrain(base, cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise ConfigError(f"cannot write {v!r} to a recipe")


def render_recipe(doc: dict[str, Any]) -> str:
    """A recipe document (as tomllib reads it) back as TOML: tables, then [[domains]] and [[router.mixed]]."""
    out = []
    for name, table in doc.items():
        if name == "domains":
            continue
        lines = [f"{k} = {_toml_value(v)}" for k, v in table.items() if k != "mixed"]
        out.append(f"[{name}]\n" + "\n".join(lines) + "\n")
    for d in doc.get("domains", []):
        out.append("[[domains]]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in d.items()) + "\n")
    for m in doc.get("router", {}).get("mixed", []):
        out.append("[[router.mixed]]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in m.items()) + "\n")
    return "\n".join(out)


def build_recipe(work: Path, source: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    """WORK/recipe.toml: the source recipe verbatim, or re-rendered with `overrides` applied."""
    text = source.read_text(encoding="utf-8")
    if overrides:
        doc = tomllib.loads(text)
        for table, values in overrides.items():
            doc.setdefault(table, {}).update(values)
        text = "# generated from " + str(source) + " with overrides " + json.dumps(overrides) + "\n" + render_recipe(doc)
    path = work / "recipe.toml"
    path.write_text(text, encoding="utf-8")
    return path


def carry_base(bundle: Path, base: Path) -> None:
    """Copy the base into BUNDLE/base/, move its loss curve into BUNDLE/reports/, and point the manifest at it."""
    from brainstacks.bundle import read_manifest, write_manifest

    dst = bundle / "base"
    dst.mkdir(parents=True, exist_ok=True)
    for name in BASE_FILES:
        if (base / name).is_file():
            shutil.copy2(base / name, dst / name)
    for name in ("pretrain_loss.json", "pretrain_loss.png"):
        if (base / "reports" / name).is_file():
            shutil.copy2(base / "reports" / name, bundle / "reports" / name)
    m = read_manifest(bundle)
    m.base = {**m.base, "path": "base"}  # relative: inside the bundle, wherever it is installed
    m.version += 1
    write_manifest(bundle, m)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.is_dir() else 0.0


def install(src: Path, dst: Path) -> None:
    """Replace `dst` by a copy of `src`; the old directory is renamed away only once the copy is complete."""
    dst = dst.resolve()
    tmp, old = dst.with_name(dst.name + ".tmp"), dst.with_name(dst.name + ".old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    shutil.copytree(src, tmp)
    for p in [tmp, *tmp.rglob("*")]:  # atomic writers leave 0600 temp files: a shipped bundle is world-readable
        p.chmod(0o755 if p.is_dir() else 0o644)
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def run_evidence(bundle: Path, work: Path, cfg: EvidenceConfig, docs: Path | None, build: dict[str, Any] | None,
                 device: str = "cpu", progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure a built bundle against WORK's recipe and test files; write BUNDLE/reports/evidence.json and docs."""
    from brainstacks.bundle import load_bundle
    from training.demo.evidence import collect_evidence, render_demo_doc, write_evidence
    from training.recipe import load_recipe

    recipe = load_recipe(work / "recipe.toml")
    lb = load_bundle(bundle, quantize=recipe.base.quantize, dtype=recipe.base.dtype, device=device)
    tests = {d.name: work / "data" / d.name / "test.jsonl" for d in recipe.domains}
    ev = collect_evidence(lb, recipe, tests, cfg, progress=progress, log=log)
    if build is None:  # re-measuring: keep the build summary of the bundle's last build
        old = bundle / "reports" / "evidence.json"
        build = json.loads(old.read_text()).get("build") if old.is_file() else None
    write_evidence(ev, bundle / "reports" / "evidence.json", build)
    text = render_demo_doc(ev, build)
    for path in [work / "DEMO.md", *([docs] if docs else [])]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
        log(f"[demo] evidence: wrote {path}")
    return ev


def build_demo(b: DemoBuild, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage of the module docstring; returns the build summary (also in reports/evidence.json)."""
    from brainstacks.demo import DEMO_BUNDLE
    from training.curriculum import train_bundle
    from training.recipe import load_recipe

    if not b.recipe.is_file():
        raise ConfigError(f"{b.recipe}: demo recipe not found (pass --recipe; it ships in the repository's recipes/)")
    if b.threads:
        import torch

        torch.set_num_threads(b.threads)
    work = b.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        result = fn()
        stages[name] = round(time.perf_counter() - t, 1)
        log(f"[demo] {name}: {stages[name]:.0f} s")
        return result

    b.pretrain.progress = b.progress
    stage("data", lambda: build_data(work, b.data, log))
    base = stage("pretrain", lambda: build_base(work, b.pretrain, log))
    measured = json.loads((base / "reports" / "pretrain_loss.json").read_text())
    measured_s = round(measured.get("train_s", 0.0) + measured.get("prep_s", 0.0), 1)
    reused = stages["pretrain"] < measured_s  # a reused base: count the time it took when it was trained
    stages["pretrain"] = max(stages["pretrain"], measured_s)
    recipe_path = build_recipe(work, b.recipe, b.recipe_overrides)
    recipe = load_recipe(recipe_path)
    if recipe.base.model != base.resolve():
        raise ConfigError(f"{b.recipe}: [base] model must be \"base\" (the build's pretrained base), got {recipe.base.model}")
    bundle = work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    stage("train domains + router", lambda: train_bundle(recipe, bundle, b.device, b.progress, log))
    carry_base(bundle, base)
    summary: dict[str, Any] = {
        "stages": stages, "cpus": os.cpu_count(), "threads": _threads(), "recipe": str(b.recipe),
        "note": "wall-clock; other jobs shared the cores" + ("; the base was reused, its time is the pretrain's own"
                                                             if reused else ""),
        "pretrain": _pretrain_stamp(b.pretrain), "data": {"seed": b.data.seed, "sizes": dict(b.data.sizes)},
        "bundle_mb": round(_mb(bundle), 2), "base_mb": round(_mb(bundle / "base"), 2),
        "stacks_mb": round(_mb(bundle / "stacks"), 2), "router_mb": round(_mb(bundle / "router"), 2),
    }
    summary["total_s"] = round(sum(stages.values()), 1)  # the bundle is complete here; evidence follows
    stage("evidence", lambda: run_evidence(bundle, work, b.evidence, b.docs, summary, b.device, b.progress, log))
    summary["evidence_s"] = stages["evidence"]
    out = b.out if b.out is not None else (DEMO_BUNDLE if b.ship else None)
    if out is not None:
        install(bundle, Path(out))
        log(f"[demo] installed {out} ({summary['bundle_mb']:.1f} MB)")
    summary["bundle"] = str(out or bundle)
    if summary["bundle_mb"] > MAX_BUNDLE_MB:
        log(f"[demo] warning: bundle is {summary['bundle_mb']:.1f} MB, over the {MAX_BUNDLE_MB:.0f} MB shipping limit")
    return summary


# --- command line ---------------------------------------------------------------------------------------------


def _cmd_build(args: argparse.Namespace) -> int:
    over = dict(recipe=Path(args.recipe), docs=Path(args.docs) if args.docs else None, device=args.device,
                progress=not args.quiet, out=Path(args.out) if args.out else None, threads=args.threads)
    b = quick_build(**over) if args.quick else DemoBuild(**over)
    if args.work:
        b.work = Path(args.work)
    summary = build_demo(b)
    print(json.dumps({k: summary[k] for k in ("bundle", "stages", "total_s", "bundle_mb")}))
    return 0


def _cmd_evidence(args: argparse.Namespace) -> int:
    from brainstacks.demo import DEMO_BUNDLE

    if args.render_only:  # rewrite the Markdown from the stored measurements
        from training.demo.evidence import render_demo_doc

        ev = json.loads((Path(args.bundle or DEMO_BUNDLE) / "reports" / "evidence.json").read_text())
        text = render_demo_doc(ev, ev.get("build") or None)
        for path in [Path(args.work) / "DEMO.md", *([Path(args.docs)] if args.docs else [])]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return 0
    run_evidence(Path(args.bundle or DEMO_BUNDLE), Path(args.work), EvidenceConfig(),
                 Path(args.docs) if args.docs else None, None, args.device, not args.quiet)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `brainstacks demo build` and `brainstacks demo evidence`."""
    p = subparsers.add_parser("demo", help="the embedded demo bundle (build, evidence)")
    sub = p.add_subparsers(dest="demo_command", metavar="ACTION")
    sub.required = True
    bp = sub.add_parser("build", help="rebuild the embedded demo bundle (data, pretrain, five domains, router, evidence)",
                        description=__doc__.split("\n\n")[0])
    bp.add_argument("--out", default=None, help="where to install the bundle (default: the shipped "
                                                "brainstacks/demo_bundle; with --quick: none, it stays in WORK/bundle)")
    bp.add_argument("--work", default=None, help=f"work directory (default {WORK}; with --quick {QUICK_WORK})")
    bp.add_argument("--quick", action="store_true", help="tiny sizes and a few steps: a pipeline check in ~1 minute")
    bp.add_argument("--recipe", default=str(RECIPE), help="the demo recipe (default: recipes/demo.toml)")
    bp.add_argument("--docs", default=None, help="also write the evidence Markdown here (e.g. docs/DEMO.md)")
    bp.add_argument("--device", default="cpu", help="cpu or cuda")
    bp.add_argument("--threads", type=int, default=DemoBuild.threads,
                    help="torch CPU threads (0: torch's default); one thread is fastest at these model sizes")
    bp.add_argument("--quiet", action="store_true", help="no progress bars")
    bp.set_defaults(func=_cmd_build)
    ep = sub.add_parser("evidence", help="re-measure a built demo bundle against a work directory's test split")
    ep.add_argument("--bundle", default=None, help="bundle directory (default: the shipped demo bundle)")
    ep.add_argument("--work", default=str(WORK), help=f"the build's work directory (default {WORK})")
    ep.add_argument("--docs", default=None, help="also write the evidence Markdown here")
    ep.add_argument("--device", default="cpu")
    ep.add_argument("--render-only", action="store_true",
                    help="only rewrite the Markdown from BUNDLE/reports/evidence.json (no measuring)")
    ep.add_argument("--quiet", action="store_true")
    ep.set_defaults(func=_cmd_evidence)
    return p
