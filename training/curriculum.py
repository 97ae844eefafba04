"""The outer loop: domains in recipe order, each on top of every earlier frozen stack, then the router.

    outcome = train_bundle(load_recipe("recipe.toml"), "out/bundle")   # what `brainstacks train` runs

1. Everything is validated before any work: the recipe (keys, values, files), every data line, the base, and, when
   `out` already holds a bundle, that it was built for the same base and stack config.
2. Domains already in the bundle are loaded, frozen, and skipped: training resumes at the first missing domain, and
   `--out` on an existing bundle trains only the new domains. Existing stack files are never rewritten.
3. Before each domain after the first, the null space of the earlier stacks is collected on sample inputs from the
   earlier domains' training data (where those stacks are active), and the new stacks are trained orthogonal to it
   (and folded on freezing, so it holds at inference).
4. After each domain its stacks are written, then a new manifest version (atomically), so a run killed later
   resumes after it. Such an interim version still names the previous router, which does not score the new domain:
   loaders refuse it (a router must cover every domain), so a server watching the bundle keeps serving the last
   complete version until step 5 lands.
5. The router is retrained over all domains (outcome-based targets) into a path of its own version
   (`router/v<version>`, never overwritten while a manifest names it), and a final manifest version names it. A
   rerun after a run killed at any point (mid-domain, during router training, while writing reports) retrains the
   router whenever the manifest's router does not score exactly the manifest's domains.
6. Reports: loss curves per domain, the forgetting matrix (each domain's validation loss after each later domain,
   ungated, plus routed at the end), the routing report. Every file is written atomically.
7. With `keep_versions` > 0 (`brainstacks train` passes 3), every complete version (its router scores every domain,
   or the recipe trains no router) is also published as an immutable OUT/versions/<n> and OUT/CURRENT switched to it
   (brainstacks/versions.py), the last `keep_versions` kept: readers given OUT (replicas on shared storage, a server
   with --watch) follow the pointer and never see an interim or half-written version. OUT's top level stays the
   working copy that a rerun resumes from.

With torch.distributed initialised (torchrun), every rank trains on its own shard with averaged gradients; rank 0
alone writes the bundle and trains the router, the others wait at a barrier.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

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
    sha256_file,
    write_json,
    write_manifest,
)
from brainstacks.errors import BundleError
from brainstacks.nullspace import collect_directions
from brainstacks.stacks import StackedModel
from training.boosting import DomainResult, _world, train_domain, validation_loss
from training.data import Collator, DomainData, load_domain, pad_id_of, read_jsonl_any, validate_recipe_data
from training.recipe import Recipe
from training.reports import forgetting_tables, plot_domain_curves, plot_matrix

REPORTS = "reports"


@dataclass
class TrainOutcome:
    bundle_dir: Path
    manifest: Manifest
    trained: list[str] = field(default_factory=list)
    results: dict[str, DomainResult] = field(default_factory=dict)
    router_report: dict[str, Any] | None = None


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def nullspace_batches(datasets: list[DomainData], samples: int, batch_size: int, pad_id: int
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Inputs from the earlier domains' training data, round-robin across domains, `samples` sequences in all."""
    pool = []
    for i in range(max((len(d.train) for d in datasets), default=0)):
        for d in datasets:
            if i < len(d.train):
                ex = d.train[i]
                pool.append(ex if hasattr(ex, "input_ids") else None)
    pool = [e for e in pool if e is not None][:samples]
    collate = Collator(pad_id)
    for s in range(0, len(pool), batch_size):
        b = collate(pool[s : s + batch_size])
        yield b["input_ids"], b["attention_mask"]


def _check_existing(out: Path, recipe: Recipe, fingerprint: dict[str, Any]) -> Manifest | None:
    if not (out / MANIFEST).exists():
        return None
    m = read_manifest(out)
    check_fingerprint(out, m, fingerprint, "; the bundle was built for another base: use a new --out")
    if m.stack_config != recipe.stack.to_dict():
        raise BundleError(f"{out / MANIFEST}: stack_config {m.stack_config} differs from the recipe's "
                          f"{recipe.stack.to_dict()}; use a new --out")
    unknown = [d for d in m.domain_names if d not in [s.name for s in recipe.domains]]
    if unknown:
        raise BundleError(f"{out / MANIFEST}: bundle domains {unknown} are not in the recipe (the router needs their data)")
    return m


LOCK = ".train.lock"


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on OUT/.train.lock for the whole run: a second `brainstacks train` on the same --out
    fails at once instead of interleaving writes. The lock dies with the process (flock), so a killed run never
    leaves a stale one behind."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK, "a+")  # noqa: SIM115 - held for the duration of the context
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise BundleError(f"{out}: another `brainstacks train` is writing this bundle ({holder}); wait for it "
                              "to finish or use another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()


def train_bundle(recipe: Recipe, out_dir: str | Path, device: str = "cpu", progress: bool = True,
                 log: Callable[[str], None] = print, keep_versions: int = 0) -> TrainOutcome:
    """The outer loop of the module docstring; rank 0 holds OUT's lock (see out_lock) while it runs. `keep_versions`
    > 0 also publishes each complete version under OUT/versions/ with the OUT/CURRENT pointer (step 7)."""
    rank, _ = _world()
    out = Path(out_dir).resolve()
    records = validate_recipe_data(recipe)  # every line of every file, before any work (and before --out exists)
    if rank == 0:
        with out_lock(out):
            return _train_bundle(recipe, out, records, device, progress, log, keep_versions)
    return _train_bundle(recipe, out, records, device, progress, log, keep_versions)


def _publish(out: Path, keep_versions: int, log: Callable[[str], None]) -> None:
    """Step 7: OUT's working copy as versions/<n>, CURRENT switched to it (nothing with keep_versions=0)."""
    if keep_versions > 0:
        from brainstacks.versions import publish_version

        log(f"{out}: published {publish_version(out, keep=keep_versions)} (CURRENT)")


def _train_bundle(recipe: Recipe, out: Path, records: dict, device: str, progress: bool,
                  log: Callable[[str], None], keep_versions: int = 0) -> TrainOutcome:
    rank, _ = _world()
    cfg = recipe.train
    base = load_base(recipe.base.model, recipe.base.quantize, recipe.base.dtype, device, for_training=True)
    existing = _check_existing(out, recipe, base.fingerprint)
    tok = base.tokenizer
    pad = pad_id_of(tok)
    sm = StackedModel(base.model, recipe.stack)
    data_sha = {spec.name: sha256_file(spec.train) for spec in recipe.domains}
    if existing is not None:
        stacks = read_stacks(out, existing, base.fingerprint)
        for name, items in stacks.items():  # a resumed domain must have been trained on the same data
            had = items[0][1].get("data_sha256") if items else None
            if had is not None and name in data_sha and had != data_sha[name]:
                raise BundleError(f"{out / MANIFEST}: domain {name!r} was trained on other data than "
                                  f"{recipe.domain(name).train} (sha256 {had[:12]}… != {data_sha[name][:12]}…); "
                                  "use a new --out")
        install_stacks(sm, stacks)
        log(f"{out}: resuming bundle v{existing.version} with domains {existing.domain_names}")
    entries = list(existing.domains) if existing else []
    version = existing.version if existing else 0
    router_rel = existing.router if existing else None
    reports = out / REPORTS
    forgetting_path = reports / "forgetting.json"
    forgetting: dict[str, Any] = json.loads(forgetting_path.read_text()) if forgetting_path.is_file() else {}
    ungated: dict[str, dict[str, float]] = forgetting.get("ungated", {})

    def domain_data(spec) -> DomainData:
        return load_domain(spec, tok, cfg.seq_len, packing=False, valid_fraction=cfg.valid_fraction, seed=cfg.seed,
                           records=(records[str(spec.train)], records.get(str(spec.valid)) if spec.valid else None))

    datasets: dict[str, DomainData] = {}
    outcome = TrainOutcome(out, existing)  # type: ignore[arg-type]
    for spec in recipe.domains:
        datasets[spec.name] = data = domain_data(spec)
        if spec.name in sm.domains:
            continue
        V = None
        earlier = [datasets[d] for d in sm.domains if datasets[d].train and hasattr(datasets[d].train[0], "input_ids")]
        if recipe.nullspace.enabled and sm.stacks and earlier:
            V = collect_directions(sm, nullspace_batches(earlier, recipe.nullspace.samples, cfg.batch_size, pad),
                                   recipe.nullspace.samples, recipe.nullspace.directions, seed=cfg.seed)
            log(f"[{spec.name}] null space: {recipe.nullspace.directions} directions at {len(V)} projections")
        result = train_domain(sm, data, cfg, V, spec.stage, pad, progress, log)
        outcome.results[spec.name] = result
        outcome.trained.append(spec.name)
        # forgetting: every domain so far, with all stacks on (ungated), after this one
        ungated[spec.name] = {d: validation_loss(sm, datasets[d], cfg, pad, recipe.domain(d).stage) for d in sm.domains}
        if rank == 0:
            rels = [save_stack(out, spec.name, k, sm.stack_tensors(spec.name, k),
                               {"stage": spec.stage, "val_loss": r.best_val, "round": r.round, "steps": r.steps,
                                "data_sha256": data_sha[spec.name]})
                    for k, r in enumerate(result.kept_rounds)]
            entries.append(DomainEntry(spec.name, rels))
            version += 1
            write_manifest(out, _manifest(version, recipe, base.fingerprint, entries, router_rel))
            write_json(reports / f"train_{spec.name}.json", result.to_dict())
            plot_domain_curves(reports / f"loss_{spec.name}.png", spec.name, [r.__dict__ for r in result.rounds])
            _write_forgetting(reports, sm.domains, ungated, forgetting.get("routed"))
            log(f"{out}: wrote v{version} with {spec.name} ({len(rels)} stack(s))")
            if not recipe.router_train.enabled or _router_covers(out, router_rel, sm.domains):
                _publish(out, keep_versions, log)  # complete: loaders accept it
        _barrier()
    if recipe.router_train.enabled and (outcome.trained or not _router_covers(out, router_rel, sm.domains)):
        if rank == 0:
            version += 1
            router_rel = router_relpath(version)  # a path of its own: the live manifest's router is never touched
            outcome.router_report = _train_router(sm, tok, recipe, datasets, out, progress, log, router_rel)
            routed = {spec.name: _routed_loss(sm, tok, out, datasets[spec.name], spec, cfg, pad, router_rel)
                      for spec in recipe.domains if spec.name in sm.domains and spec.stage == "sft"}
            last = sm.domains[-1]
            _write_forgetting(reports, sm.domains, ungated, {last: routed})
            write_manifest(out, _manifest(version, recipe, base.fingerprint, entries, router_rel))
            log(f"{out}: wrote v{version} with the router over {sm.domains}")
            _publish(out, keep_versions, log)
        _barrier()
    outcome.manifest = read_manifest(out)
    return outcome


def _router_covers(out: Path, rel: str | None, domains: list[str]) -> bool:
    """Whether the bundle's router scores exactly these domains (a run killed mid-router leaves an older one)."""
    if rel is None:
        return False
    try:
        return json.loads((safe_path(out, rel) / "router.json").read_text()).get("domains") == list(domains)
    except (BundleError, OSError, ValueError):
        return False


def _routed_loss(sm: StackedModel, tokenizer, out: Path, data: DomainData, spec, cfg, pad: int,
                 router_rel: str) -> float:
    """A domain's validation loss with the just-trained router's weights, per example (the serving policy)."""
    from brainstacks.bundle import load_router
    from training.data import prompt_text
    from training.eval_report import aligned_examples, routed_weights
    from training.evaluate import example_loss_sums

    router = load_router(out, router_rel, domains=sm.domains)
    n = cfg.max_eval_batches * cfg.batch_size
    recs, valid = aligned_examples(tokenizer, data.valid_records[:n], spec.format, cfg.seq_len)
    w = routed_weights(sm, tokenizer, router, [prompt_text(tokenizer, r, spec.format) for r in recs])
    s, c = example_loss_sums(sm, valid, w, cfg.batch_size, pad)
    return float(s.sum() / c.sum().clamp_min(1))


def _manifest(version: int, recipe: Recipe, fingerprint: dict, entries: list[DomainEntry], router: str | None) -> Manifest:
    return Manifest(version=version, base={"path": str(recipe.base.model), "fingerprint": fingerprint},
                    stack_config=recipe.stack.to_dict(), domains=list(entries), router=router)


def _write_forgetting(reports: Path, domains: list[str], ungated: dict, routed: dict | None) -> None:
    write_json(reports / "forgetting.json", {"ungated": ungated, "routed": routed or {}})
    rows, cols, vals = forgetting_tables(ungated, domains)
    if rows:
        if routed:  # one more column: every domain under the final router, after the last domain
            after = next(iter(routed))
            cols = [*cols, f"routed, after {after}"]
            vals = [[*v, routed[after].get(r)] for r, v in zip(rows, vals, strict=True)]
        plot_matrix(reports / "forgetting.png", rows, cols, vals, "validation loss: ungated after each domain; routed",
                    "after training", "evaluated domain")


def _train_router(sm: StackedModel, tokenizer, recipe: Recipe, datasets: dict[str, DomainData], out: Path,
                  progress: bool, log: Callable[[str], None], router_rel: str) -> dict[str, Any]:
    from training.router_train import build_router_examples, fit_router

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
    examples = build_router_examples(domain_records, mixed, tokenizer, recipe.train.seq_len, cfg, recipe.train.seed,
                                     valid)
    fit = fit_router(sm, tokenizer, examples, recipe.router, cfg, recipe.train.seed, progress=progress)
    report = dict(fit.report)
    save_router(out, fit.router, {"best_epoch": fit.best_epoch, "accuracy": report.get("accuracy"),
                                  "overall_accuracy": report.get("overall_accuracy")}, rel=router_rel)
    write_json(out / REPORTS / "routing.json", report)
    conf = report.get("confusion") or {}
    if conf:
        doms = list(conf)
        plot_matrix(out / REPORTS / "routing_confusion.png", doms, doms, [[conf[r][c] for c in doms] for r in doms],
                    "router top-1 (validation prompts)", "top-weighted domain", "true domain")
    log(f"router: overall top-1 accuracy {report.get('overall_accuracy')}, best epoch {fit.best_epoch}")
    return report
