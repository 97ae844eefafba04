"""Subcommands owned by training/ (registered into the `brainstacks` console script by brainstacks_cli.main).

    brainstacks train --recipe FILE.toml --out DIR [--nproc N] [--device cpu|cuda] [--router-only]
    brainstacks stacks import --peft ADAPTER_DIR --domain NAME --bundle DIR [--base DIR|FILE.gguf] [--replace]
    brainstacks eval  --bundle DIR --recipe FILE.toml [--json PATH]
    brainstacks route --bundle DIR [--base DIR] "prompt ..."
    brainstacks pretrain ...            (training/pretrain.py)

`python -m training train ...` is the same `train`, and is what torchrun launches for data parallelism:
    torchrun --nproc_per_node 2 -m training train --recipe r.toml --out b/
"""

from __future__ import annotations

import argparse
import json
import os

from brainstacks.quant import QUANTIZE_CHOICES


def _default_device() -> str:
    from brainstacks.dtypes import auto_device

    return auto_device()


def cmd_train(args: argparse.Namespace) -> int:
    from training import distributed

    if args.nproc > 1 and distributed.env_world_size() == 1:
        distributed.relaunch(args.nproc, ["train", *relaunch_argv(args)])
        return 0
    from training.curriculum import train_bundle
    from training.recipe import load_recipe

    recipe = load_recipe(args.recipe)  # validated before anything heavy happens
    device = args.device or _default_device()
    distributed.init_from_env(device)
    rank = distributed.env_rank()
    device = distributed.local_device(device)
    log = print if rank == 0 else (lambda *_: None)
    outcome = train_bundle(recipe, args.out, device=device, progress=not args.quiet, log=log,
                           keep_versions=args.keep_versions, router_only=args.router_only)
    if rank == 0:
        print(json.dumps({"bundle": str(outcome.bundle_dir), "version": outcome.manifest.version,
                          "trained": outcome.trained, "domains": outcome.manifest.domain_names}))
    distributed.destroy()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from brainstacks.bundle import load_bundle
    from brainstacks.files import write_json
    from training.eval_command import evaluate_bundle, format_eval
    from training.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    lb = load_bundle(args.bundle, base=args.base, quantize=args.quantize or recipe.base.quantize,
                     dtype=recipe.base.dtype, device=args.device or _default_device())
    result = evaluate_bundle(lb, recipe, max_examples=args.max_examples, progress=not args.quiet)
    print(format_eval(result))
    path = args.json or os.path.join(args.bundle, "reports", "eval.json")
    write_json(path, result)
    print(f"wrote {path}")
    return 0


def cmd_route(args: argparse.Namespace) -> int:

    from brainstacks.bundle import load_bundle
    from brainstacks.errors import BundleError
    from brainstacks.router import apply_policy, route_prompts
    from brainstacks.text import encode_prompt

    lb = load_bundle(args.bundle, base=args.base, quantize=args.quantize, device=args.device or _default_device())
    if lb.router is None:
        raise BundleError(f"{args.bundle}: bundle has no router (train one with `brainstacks train`)")
    prompt = " ".join(args.prompt)
    ids = encode_prompt(lb.base.tokenizer, prompt)
    raw = route_prompts(lb.stacked, lb.base.tokenizer, lb.router, [ids], apply=False)  # (1, D)
    w = apply_policy(raw, lb.router.domains, lb.router.config.min_weight, lb.router.config.floors)[0]
    print(json.dumps({"weights": {d: round(float(w[i]), 6) for i, d in enumerate(lb.router.domains)},
                      "raw": {d: round(float(raw[0, i]), 6) for i, d in enumerate(lb.router.domains)},
                      "active": [d for i, d in enumerate(lb.router.domains) if w[i] > 0],
                      "bundle_version": lb.manifest.version, "prompt_tokens": len(ids)}))
    return 0


def cmd_stacks_import(args: argparse.Namespace) -> int:
    from brainstacks.adapters import import_adapter

    res = import_adapter(args.bundle, args.domain, args.peft, base=args.base, replace=args.replace,
                         keep=args.keep_versions)
    print(json.dumps({"bundle": str(res.bundle_dir), "version": res.version, "domain": res.domain, "rank": res.rank,
                      "modules": res.modules, "parameters": res.parameters,
                      "routed": False, "next": f"brainstacks train --recipe R.toml --out {args.bundle} --router-only"}))
    return 0


def add_stacks_parser(subparsers) -> None:
    from brainstacks.versions import KEEP_VERSIONS

    p = subparsers.add_parser("stacks", help="bring your own adapters: import a PEFT LoRA adapter as a stack")
    sub = p.add_subparsers(dest="stacks_command", metavar="ACTION", required=True)
    ip = sub.add_parser("import", help="a PEFT LoRA adapter becomes a frozen stack of a domain, in a new version",
                        description="Read ADAPTER_DIR (adapter_config.json + adapter_model.safetensors, trained on "
                                    "the bundle's base), check it, and write it as a frozen stack of domain NAME in a "
                                    "new bundle version (a new bundle when DIR holds none: then --base is needed). "
                                    "The router gives the new domain weight 0 until `train --router-only`.")
    ip.add_argument("--peft", required=True, metavar="ADAPTER_DIR", help="a PEFT LoRA adapter directory (or a "
                    "stack directory: stack.json + stack.safetensors)")
    ip.add_argument("--domain", required=True, metavar="NAME", help="the domain the stack serves")
    ip.add_argument("--bundle", required=True, metavar="DIR", help="the bundle (created when DIR holds none)")
    ip.add_argument("--base", default=None, help="the base the adapter was trained on: a HF directory or .gguf "
                    "(required for a new bundle; checked against an existing bundle's fingerprint)")
    ip.add_argument("--replace", action="store_true", help="replace an existing domain of that name")
    ip.add_argument("--keep-versions", type=int, default=KEEP_VERSIONS, metavar="K",
                    help=f"publish as DIR/versions/<n> with DIR/CURRENT and keep the last K (default {KEEP_VERSIONS};"
                         " 0: only the single-directory working copy)")
    ip.set_defaults(func=cmd_stacks_import)


def relaunch_argv(args: argparse.Namespace) -> list[str]:
    """`train`'s flags as parsed, written back from the parser's own actions (all but --nproc), so every flag the
    parser gains reaches the torchrun workers."""
    out: list[str] = []
    for action in args.train_actions:
        value = getattr(args, action.dest)
        if action.dest == "nproc" or value is None or value is False:
            continue
        out += [action.option_strings[0]] if value is True else [action.option_strings[0], str(value)]
    return out


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    from brainstacks.versions import KEEP_VERSIONS

    p = subparsers.add_parser("train", help="train domain stacks and the router into a bundle",
                              description="Train every domain of the recipe missing from --out (residual boosting, "
                                          "null space), then the router; writes a new manifest version each time.")
    actions: list[argparse.Action] = []  # every train flag, for relaunch_argv

    def flag(*names: str, **kw) -> None:
        actions.append(p.add_argument(*names, **kw))

    flag("--recipe", required=True, help="recipe TOML (docs/DESIGN.md §5)")
    flag("--out", required=True, help="bundle directory (created, or resumed/extended if it holds one)")
    flag("--device", default=None, help="cpu or cuda (default: cuda when available)")
    flag("--nproc", type=int, default=1, help="data-parallel processes (launches torchrun; gloo on CPU)")
    flag("--quiet", action="store_true", help="no progress bars")
    flag("--router-only", action="store_true",
         help="train no stack: fit the router over the domains --out already holds (e.g. imported adapters), "
              "from the recipe's data for them")
    flag("--keep-versions", type=int, default=KEEP_VERSIONS, metavar="K",
         help=f"publish each complete version as OUT/versions/<n> with the OUT/CURRENT pointer and keep the "
              f"last K (default {KEEP_VERSIONS}; 0: only the single-directory working copy)")
    p.set_defaults(func=cmd_train, train_actions=actions)
    return p


def register(subparsers) -> None:
    """Add this package's subcommands to the top-level parser."""
    add_train_parser(subparsers)
    add_stacks_parser(subparsers)
    p = subparsers.add_parser("eval", help="per-domain validation loss: base / own / ungated / routed / oracle")
    p.add_argument("--bundle", required=True)
    p.add_argument("--recipe", required=True)
    p.add_argument("--base", default=None, help="override the manifest's base path")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None, help="default: the recipe's")
    p.add_argument("--device", default=None)
    p.add_argument("--max-examples", type=int, default=64, help="validation examples per domain (default 64)")
    p.add_argument("--json", default=None, help="where to write the JSON (default BUNDLE/reports/eval.json)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)
    p = subparsers.add_parser("route", help="print the router's weights for a prompt as JSON")
    p.add_argument("--bundle", required=True)
    p.add_argument("--base", default=None, help="override the manifest's base path")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="nf4")
    p.add_argument("--device", default=None)
    p.add_argument("prompt", nargs="+", help="the prompt text")
    p.set_defaults(func=cmd_route)
    __import__("training.pretrain", fromlist=["add_parser"]).add_parser(subparsers)  # brainstacks pretrain
    __import__("training.demo.build", fromlist=["add_parser"]).add_parser(subparsers)  # brainstacks demo build


def main(argv: list[str] | None = None) -> int:
    """`python -m training <train|eval|route|pretrain> ...` (what torchrun launches)."""
    from brainstacks.errors import run_command

    parser = argparse.ArgumentParser(prog="python -m training")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return run_command(args.func, args, f"python -m training {args.command}")
