"""Stage 6 of `brainstacks demo build` (training/demo/build.py): install a built bundle where it ships.

    install(work / "bundle", DEMO_BUNDLE)      # manifest, the stacks and router it names, reports/; one rename
    shipped_mb(work / "bundle", "stacks")      # what the install would copy, in MB
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

MAX_BUNDLE_MB = 60.0  # the limit for a bundle shipped inside the package


def shipped_files(src: Path) -> list[Path]:
    """The files of the bundle in `src` that an install copies (relative paths): manifest.json, the files of the
    stacks and router the manifest names, and reports/ (not a nested router/v<n> of another version)."""
    from brainstacks.bundle import read_manifest

    m = read_manifest(src)
    out = [Path("manifest.json")]
    for rel in [rel for d in m.domains for rel in d.stacks] + ([m.router] if m.router else []) + ["reports"]:
        root = src / rel
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out += [p.relative_to(src) for p in files if not any(re.fullmatch(r"v\d+", part)
                                                              for part in p.relative_to(root).parts[:-1])]
    return out


def shipped_mb(src: Path, under: str = "") -> float:
    """MB of the shipped files (optionally only those under a top-level folder, e.g. "stacks")."""
    return sum((src / f).stat().st_size for f in shipped_files(src) if not under or f.parts[0] == under) / 2**20


def install(src: Path, dst: Path) -> None:
    """Replace `dst` by a copy of the bundle in `src`: its manifest, the stacks and router that manifest names, and
    reports/ (not the writer's lock, nor routers of earlier versions that a resumed build leaves in the work copy).
    The old directory is renamed away only once the copy is complete."""
    dst = dst.resolve()
    tmp, old = dst.with_name(dst.name + ".tmp"), dst.with_name(dst.name + ".old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    for f in shipped_files(src):
        (tmp / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / f, tmp / f)
    for p in [tmp, *tmp.rglob("*")]:  # a shipped bundle is world-readable whatever the umask
        p.chmod(0o755 if p.is_dir() else 0o644)
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)
