"""The outer loop: domains in recipe order, each on top of every earlier frozen stack, then the router.

    outcome = train_bundle(load_recipe("recipe.toml"), "out/bundle")   # what `brainstacks train` runs

1. Everything is validated before any work: the recipe (keys, values, files), every data line, the base, and, when
   `out` already holds a bundle, that it was built for the same base and stack config.
2. Domains already in the bundle are loaded, frozen, and skipped: training resumes at the first missing domain (or
   the first missing stage of a domain: each stack's stack.json records its stage), and `--out` on an existing
   bundle trains only the new domains and stages. Existing stack files are never rewritten.
3. A domain is trained stage by stage (training/stages.py: "sft", "dpo", "grpo"; each stage adds stacks of that
   domain on top of everything below). Before each stage with stacks below it, the null space of the other domains'
   stacks is collected on sample inputs from their training data (where those stacks are active), and the new
   stacks are trained orthogonal to it (and folded on freezing, so it holds at inference).
4. After each stage its stacks are written, then a new manifest version (atomically), so a run killed later
   resumes after it. Such an interim version names the previous router, which does not score the new domain:
   loaders refuse it, so a server watching the bundle keeps serving the last complete version until step 5 lands.
5. The router is retrained over all domains (outcome-based targets) into `router/v<version>` (never overwritten
   while a manifest names it), and a final manifest version names it. A rerun after a kill at any point retrains
   the router whenever the manifest's router does not score exactly the manifest's domains. `--router-only` runs
   this step alone, over the domains a bundle holds (imported adapters, say).
6. Reports: loss curves per domain, the forgetting matrix (each domain's validation loss after each later domain,
   ungated, plus routed at the end), the routing report. Every file is written atomically.
7. With `keep_versions` > 0 (`brainstacks train` passes 3), every complete version is also published as an
   immutable OUT/versions/<n> with OUT/CURRENT switched to it (brainstacks/versions.py), the last `keep_versions`
   kept: readers given OUT follow the pointer and never see an interim version. OUT's top level stays the working
   copy that a rerun resumes from.

With torch.distributed initialised (torchrun), every rank trains on its own shard with averaged gradients; rank 0
alone writes the bundle and trains the router, the others wait at a barrier (training/distributed.py).

`train_bundle` is these steps in order, one function each: `resume` (1, 2), `train_domain_step` per domain (3, 4,
with training/stages.py's `train_stage`, `save_stage` and the reports of training/reports.py), `router_needed` and
`train_router_step` (5, with `fit_and_save_router` and `routed_loss`), `publish` (7).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from brainstacks.base import load_base
from brainstacks.bundle import (
    MANIFEST,
    DomainEntry,
    Manifest,
    check_fingerprint,
    install_stacks,
    read_manifest,
    read_stacks,
    router_relpath,
    safe_path,
    save_router,
    save_stack,
    write_manifest,
)
from brainstacks.config import StackConfig
from brainstacks.dense_base import attach_dense_copies
from brainstacks.errors import BundleError
from brainstacks.files import sha256_file, write_json
from brainstacks.stacks import StackedModel
from brainstacks.versions import KEEP_VERSIONS, publish_version, writer_lock
from training.boosting import DomainResult, validation_loss
from training.config import DomainSpec
from training.data_files import Record, read_jsonl_any, validate_recipe_data
from training.distributed import barrier, world
from training.losses import aligned_examples, dataset_loss, routed_weights
from training.recipe import Recipe
from training.reports import REPORTS, plot_domain_curves, plot_reward_curve, write_forgetting, write_routing_report
from training.run_state import Run, TrainOutcome
from training.stages import StageResult, nullspace_batches, nullspace_for, stages_done, train_stage
from training.tokenization import load_domain, prompt_text

__all__ = ["train_bundle", "nullspace_batches", "nullspace_for"]  # the null-space helpers: training/stages.py

def train_bundle(recipe: Recipe, out_dir: str | Path, device: str = "cpu", progress: bool = True,
                 log: Callable[[str], None] = print, keep_versions: int = KEEP_VERSIONS,
                 router_only: bool = False) -> TrainOutcome:
    """The outer loop of the module docstring; rank 0 holds OUT's writer lock (brainstacks.versions.writer_lock)
    while it runs. `keep_versions` > 0 also publishes each complete version (step 7); 0 keeps OUT a single-directory
    bundle. `router_only` trains no stack: OUT must hold a bundle; the router is fitted over its domains."""
    rank, _ = world()
    out = Path(out_dir).resolve()
    records = validate_recipe_data(recipe)  # every line of every file, before any work (and before --out exists)
    with writer_lock(out, "brainstacks train") if rank == 0 else contextlib.nullcontext():
        run = resume(recipe, out, records, device, log, keep_versions, router_only)
        if router_only:
            router_only_step(run, progress)
        else:
            for spec in recipe.domains:
                train_domain_step(run, spec, progress)
            if router_needed(run):
                train_router_step(run, progress)
        run.outcome.manifest = read_manifest(out)
        return run.outcome


# --- step 1, 2: resume ------------------------------------------------------------------------------------------


def resume(recipe: Recipe, out: Path, records: dict[str, list[Record]], device: str,
           log: Callable[[str], None] = print, keep_versions: int = 0, router_only: bool = False) -> Run:
    """Steps 1 and 2: load the base, check OUT's bundle (if any) was built for it and this recipe, install and freeze
    its stacks (each domain's data unchanged), and pick up its manifest state and forgetting report."""
    rank, _ = world()
    base = load_base(recipe.base.model, recipe.base.quantize, recipe.base.dtype, device, for_training=True)
    existing = check_existing(out, recipe, base.fingerprint, router_only)
    if router_only and existing is None:
        raise BundleError(f"{out}: --router-only needs a bundle there (e.g. `brainstacks stacks import`); it has no "
                          f"{MANIFEST}")
    stack_config = existing.stack_config if router_only else recipe.stack.to_dict()
    sm = StackedModel(base.model, StackConfig.from_dict(stack_config, f"{out / MANIFEST}: stack_config"))
    if torch.device(device).type == "cpu":
        # the same dequantized weight bitsandbytes' training path rebuilds in every call and backward, made once.
        # Its dtype is the CPU's fast one (brainstacks.dtypes.packed_dtype): float32 without native bf16 (the math
        # unchanged; measured on SmolLM2, 2 threads, 8 x 100 tokens: 5.0 s vs 5.3-5.8 s a step on an AVX2 EPYC),
        # bf16 with AVX512-BF16 / AMX (the base weight rounded to bf16, as the served fused path holds it; the
        # stacks and their gradients stay float32; measured: 2.6 s vs 3.9 s a step for the float32 copy on an
        # AVX512-BF16 EPYC). Memory: 2 or 4 bytes per base weight (405 MiB in float32 on SmolLM2).
        attach_dense_copies(sm, every_call=True)
    data_sha = {spec.name: [sha256_file(st.train) for st in spec.stages] for spec in recipe.domains}
    done: dict[str, int] = {}
    if existing is not None:
        stacks = read_stacks(out, existing, base.fingerprint)
        for name, items in stacks.items():  # a resumed domain's stages must have been trained on the same data
            done[name] = stages_done([meta for _, meta in items])
            for _, meta in items:
                check_resumed_stack(out, recipe.domain(name), meta, data_sha[name])
        install_stacks(sm, stacks)
        log(f"{out}: resuming bundle v{existing.version} with domains {existing.domain_names}")
    forgetting_path = out / REPORTS / "forgetting.json"
    forgetting: dict[str, Any] = json.loads(forgetting_path.read_text()) if forgetting_path.is_file() else {}
    return Run(recipe, out, records, base, sm, data_sha,
               entries=list(existing.domains) if existing else [], stack_config=stack_config,
               version=existing.version if existing else 0,
               router_rel=existing.router if existing else None,
               ungated=forgetting.get("ungated", {}), routed=forgetting.get("routed"),
               outcome=TrainOutcome(out, existing),  # type: ignore[arg-type]
               log=log, keep_versions=keep_versions, rank=rank, done=done)


def check_resumed_stack(out: Path, spec: DomainSpec, meta: dict[str, Any], shas: list[str]) -> None:
    """A bundle's stack of `spec` must come from the same stage kind and data as the recipe's stage it records."""
    i = int(meta.get("stage_index", 0))
    if i >= len(spec.stages):
        return  # a stage the recipe no longer lists: kept as it is
    st, had = spec.stages[i], meta.get("data_sha256")
    if meta.get("stage", st.stage) != st.stage:
        raise BundleError(f"{out / MANIFEST}: domain {spec.name!r} stage #{i + 1} is {meta.get('stage')!r} in the "
                          f"bundle but {st.stage!r} in the recipe; use a new --out")
    if had is not None and had != shas[i]:
        raise BundleError(f"{out / MANIFEST}: domain {spec.name!r} was trained on other data than {st.train} "
                          f"(sha256 {had[:12]}… != {shas[i][:12]}…); use a new --out")


def check_existing(out: Path, recipe: Recipe, fingerprint: dict[str, Any], router_only: bool = False
                   ) -> Manifest | None:
    """OUT's manifest, if it has one built for this base, stack config (any, with `router_only`: no stack is trained)
    and a subset of the recipe's domains."""
    if not (out / MANIFEST).exists():
        return None
    m = read_manifest(out)
    check_fingerprint(out, m, fingerprint, "; the bundle was built for another base: use a new --out")
    if not router_only and m.stack_config != recipe.stack.to_dict():
        raise BundleError(f"{out / MANIFEST}: stack_config {m.stack_config} differs from the recipe's "
                          f"{recipe.stack.to_dict()}; use a new --out")
    unknown = [d for d in m.domain_names if d not in [s.name for s in recipe.domains]]
    if unknown:
        raise BundleError(f"{out / MANIFEST}: bundle domains {unknown} are not in the recipe "
                          "(the router needs their data)")
    return m


# --- steps 3, 4: one domain -------------------------------------------------------------------------------------


def train_domain_step(run: Run, spec: DomainSpec, progress: bool = True) -> None:
    """Steps 3 and 4 for one domain: load its first stage's data (kept for later domains' null space and the
    router); then each stage the bundle lacks, in order: train it (training/stages.py), measure forgetting, and
    (rank 0) save it."""
    cfg = run.recipe.train
    load_first_stage(run, spec)
    done = run.done.get(spec.name, 0) if spec.name in run.sm.domains else 0
    for i in range(done, len(spec.stages)):  # resumed stages stay frozen from the bundle
        res = train_stage(run, spec, i, progress)
        run.outcome.results[spec.name if i == 0 else f"{spec.name}/{i}"] = res.result  # type: ignore[assignment]
        if spec.name not in run.outcome.trained:
            run.outcome.trained.append(spec.name)
        # forgetting: every domain so far, with all stacks on (ungated), after this one
        run.ungated[spec.name] = {d: validation_loss(run.sm, run.datasets[d], cfg, run.pad,
                                                     run.recipe.domain(d).stage) for d in run.sm.domains}
        if run.rank == 0:
            save_stage(run, spec, res)
        barrier()


def load_first_stage(run: Run, spec: DomainSpec) -> None:
    """A domain's first stage's data into run.datasets (for later domains' null space and the router)."""
    cfg = run.recipe.train
    run.datasets[spec.name] = load_domain(
        spec, run.tokenizer, cfg.seq_len, packing=False, valid_fraction=cfg.valid_fraction, seed=cfg.seed,
        records=(run.records[str(spec.train)], run.records.get(str(spec.valid)) if spec.valid else None))


def save_stage(run: Run, spec: DomainSpec, res: StageResult) -> None:
    """Step 4 (rank 0): the stage's kept stacks (after the domain's earlier ones), a new manifest version naming
    them, its reports (loss or reward curves, forgetting), and, when the bundle is complete (see router_covers), its
    publication."""
    out = run.out
    entry = next((e for e in run.entries if e.name == spec.name), None)
    if entry is None:
        entry = DomainEntry(spec.name, [])
        run.entries.append(entry)
    first = len(entry.stacks)
    rels = [save_stack(out, spec.name, first + j, run.sm.stack_tensors(spec.name, first + j), meta,
                       run.sm.config.frozen_dtype)
            for j, meta in enumerate(res.metas)]
    entry.stacks = entry.stacks + rels
    run.version += 1
    write_manifest(out, manifest_of(run))
    tag = spec.name if res.index == 0 else f"{spec.name}.{res.index}"
    write_json(run.reports / f"train_{tag}.json", res.to_dict())
    if isinstance(res.result, DomainResult):
        plot_domain_curves(run.reports / f"loss_{tag}.png", spec.name, [r.__dict__ for r in res.result.rounds])
    else:
        plot_reward_curve(run.reports / f"reward_{tag}.png", f"{spec.name} {res.stage}", res.result.history,
                          res.result.evals)
    write_forgetting(run.reports, run.sm.domains, run.ungated, run.routed)
    run.log(f"{out}: wrote v{run.version} with {spec.name} stage {res.stage!r} ({len(rels)} stack(s))")
    if not run.recipe.router_train.enabled or router_covers(out, run.router_rel, run.sm.domains):
        publish(run)  # complete: loaders accept it


def manifest_of(run: Run) -> Manifest:
    """The manifest of the run's current state (version, entries, router)."""
    recipe = run.recipe
    return Manifest(version=run.version, base={"path": str(recipe.base.model), "fingerprint": run.base.fingerprint},
                    stack_config=run.stack_config, domains=list(run.entries), router=run.router_rel)


def publish(run: Run) -> None:
    """Step 7: OUT's working copy as versions/<n>, CURRENT switched to it (nothing with keep_versions=0)."""
    if run.keep_versions > 0:
        run.log(f"{run.out}: published {publish_version(run.out, keep=run.keep_versions)} (CURRENT)")


# --- step 5: the router -----------------------------------------------------------------------------------------


def router_needed(run: Run) -> bool:
    """Whether step 5 runs: the recipe trains a router, and a domain was trained or the bundle's router does not
    score exactly its domains (a run killed mid-router)."""
    return run.recipe.router_train.enabled and bool(
        run.outcome.trained or not router_covers(run.out, run.router_rel, run.sm.domains))


def router_covers(out: Path, rel: str | None, domains: list[str]) -> bool:
    """Whether the bundle's router scores exactly these domains (a run killed mid-router leaves an older one)."""
    if rel is None:
        return False
    try:
        return json.loads((safe_path(out, rel) / "router.json").read_text()).get("domains") == list(domains)
    except (BundleError, OSError, ValueError):
        return False


def train_router_step(run: Run, progress: bool = True) -> None:
    """Step 5 (rank 0): the router into a path of its own version, every domain's routed loss into the forgetting
    report, the manifest that names the router, its publication; the other ranks wait."""
    if run.rank == 0:
        run.version += 1
        run.router_rel = router_relpath(run.version)  # a path of its own: the live manifest's router is never touched
        run.outcome.router_report = fit_and_save_router(run, progress)
        routed = {spec.name: routed_loss(run, spec) for spec in run.recipe.domains
                  if spec.name in run.sm.domains and spec.stage == "sft"}
        write_forgetting(run.reports, run.sm.domains, run.ungated, {run.sm.domains[-1]: routed})
        write_manifest(run.out, manifest_of(run))
        run.log(f"{run.out}: wrote v{run.version} with the router over {run.sm.domains}")
        publish(run)
    barrier()


def router_only_step(run: Run, progress: bool = True) -> None:
    """`train --router-only`: every bundle domain's data from the recipe, then step 5 (no stack is trained)."""
    if not run.recipe.router_train.enabled:
        raise BundleError(f"{run.out}: --router-only, but the recipe's [router] has enabled = false")
    for spec in run.recipe.domains:  # a recipe domain the bundle lacks is not routed (no stack is trained)
        if spec.name in run.sm.domains:
            load_first_stage(run, spec)
    train_router_step(run, progress)


def fit_and_save_router(run: Run, progress: bool = True) -> dict[str, Any]:
    """Router examples from every trained domain's records and the recipe's mixed sets, the fit
    (training/router_train.py), the router saved at run.router_rel, and the routing report."""
    from training.router_examples import build_router_examples
    from training.router_train import fit_router

    recipe, sm, datasets = run.recipe, run.sm, run.datasets
    cfg = recipe.router_train
    domain_records = {}
    for spec in recipe.domains:
        if spec.name in sm.domains:
            domain_records[spec.name] = (spec.format, datasets[spec.name].train_records)
    mixed = []
    for m in recipe.mixed:
        fmt, recs = read_jsonl_any(m.file)
        mixed.append((m.domains, fmt, recs))
    valid = {spec.name: datasets[spec.name].valid_records for spec in recipe.domains
             if spec.name in sm.domains and spec.valid is not None}  # own valid files: e.g. held-out templates
    examples = build_router_examples(domain_records, mixed, run.tokenizer, recipe.train.seq_len, cfg,
                                     recipe.train.seed, valid)
    fit = fit_router(sm, run.tokenizer, examples, recipe.router, cfg, recipe.train.seed, progress=progress)
    report = dict(fit.report)
    save_router(run.out, fit.router, {"best_epoch": fit.best_epoch, "accuracy": report.get("accuracy"),
                                      "overall_accuracy": report.get("overall_accuracy")}, rel=run.router_rel)
    write_routing_report(run.reports, report)
    run.log(f"router: overall top-1 accuracy {report.get('overall_accuracy')}, best epoch {fit.best_epoch}")
    return report


def routed_loss(run: Run, spec: DomainSpec) -> float:
    """A domain's validation loss with the just-trained router's weights, per example (the serving policy)."""
    from brainstacks.bundle import load_router

    cfg, sm, tok = run.recipe.train, run.sm, run.tokenizer
    router = load_router(run.out, run.router_rel, domains=sm.domains)
    n = cfg.max_eval_batches * cfg.batch_size
    recs, valid = aligned_examples(tok, run.datasets[spec.name].valid_records[:n], spec.format, cfg.seq_len)
    w = routed_weights(sm, tok, router, [prompt_text(tok, r, spec.format) for r in recs])
    return dataset_loss(sm, valid, w, cfg.batch_size, run.pad)
