"""Versioned bundles for many readers (docs/DESIGN.md §4): immutable version directories and one pointer, switched
atomically.

    BUNDLE/
      CURRENT                  "versions/<n>\\n": the version readers load (replaced by temp file + rename)
      versions/<n>/            one complete single-directory bundle (manifest.json, stacks/, router/, reports/)
      manifest.json, stacks/…  the writer's working copy (what `brainstacks train` resumes from), optional

    root = publish_version("out/bundle")            # snapshot out/bundle (its manifest) as versions/<n>, switch CURRENT
    publish_version("shared/bundle", src="build/")  # publish another directory's bundle into a shared one
    resolve_bundle_dir("shared/bundle")             # (brainstacks.bundle) -> versions/<n>; a plain bundle: itself

A version directory is filled under a temporary name (`versions/.staging-…`), fsynced, renamed into place in one
step, and only then does CURRENT move to it; so a reader that follows the pointer (a replica on shared storage, at
start or on reload) only ever opens a complete version, and a version, once named, never changes. Files are
hard-linked from the source when the filesystem allows (writers replace files by rename, never in place, so a link
keeps the old bytes), else copied. The last `keep` versions are kept (the current one always); older ones are removed
after the switch. Single-directory bundles (no CURRENT), the shipped demo included, resolve to themselves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from brainstacks.bundle import (  # the layout and its resolution are the bundle reader's
    MANIFEST,
    POINTER,
    ROUTER_META,
    ROUTER_TENSORS,
    STACK_META,
    STACK_TENSORS,
    VERSIONS,
    current_version,
    read_manifest,
    safe_path,
    version_dir,
)
from brainstacks.errors import BundleError
from brainstacks.files import atomic_write

WRITER_LOCK = ".train.lock"  # held by every writer of a bundle directory: train, stacks import, runtime loads
KEEP_VERSIONS = 3  # default number of version directories kept (the current one among them)
_STAGING = ".staging-"


def list_versions(root: str | os.PathLike) -> list[int]:
    """Published version numbers, ascending (staging directories excluded)."""
    d = Path(root) / VERSIONS
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))


def bundle_files(src: Path) -> list[str]:
    """Relative paths of every file the manifest in `src` names (stacks, router), its reports, and a carried base/."""
    m = read_manifest(src)
    rels = [f"{rel}/{name}" for d in m.domains for rel in d.stacks for name in (STACK_TENSORS, STACK_META)]
    if m.router is not None:
        rels += [f"{m.router}/{ROUTER_TENSORS}", f"{m.router}/{ROUTER_META}"]
    for extra in ("reports", "base"):
        top = src / extra
        if top.is_dir() and not top.is_symlink():
            rels += [p.relative_to(src).as_posix() for p in sorted(top.rglob("*"))
                     if p.is_file() and not p.is_symlink() and not p.name.startswith(".")]
    for rel in rels:
        if not safe_path(src, rel).is_file():
            raise BundleError(f"{src / MANIFEST}: names {rel}, which is not there: not published")
    return rels


def link_or_copy(a: Path, b: Path) -> None:
    b.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(a, b)
    except OSError:
        shutil.copy2(a, b)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_pointer(root: str | os.PathLike, version: int) -> None:
    """Switch CURRENT to versions/<version> atomically (temp file + fsync + rename)."""
    root = Path(root)
    if not (version_dir(root, version) / MANIFEST).is_file():
        raise BundleError(f"{version_dir(root, version)}: no {MANIFEST}; CURRENT not switched")

    def w(tmp: str) -> None:
        Path(tmp).write_text(f"{VERSIONS}/{int(version)}\n", encoding="utf-8")

    atomic_write(root / POINTER, w)
    _fsync_dir(root)


def publish_version(root: str | os.PathLike, src: str | os.PathLike | None = None,
                    keep: int = KEEP_VERSIONS) -> Path:
    """Snapshot the single-directory bundle `src` (default: `root` itself, the writer's working copy) as
    ROOT/versions/<its manifest version>, switch ROOT/CURRENT to it, and prune to the last `keep` versions.

    Returns the new version directory. Publishing a version that is already there with the same manifest only moves
    the pointer (a writer killed between the rename and the switch reruns cleanly); one with another manifest is
    refused: a published version is never changed.
    """
    if keep < 1:
        raise BundleError(f"keep={keep}: at least the current version must be kept")
    root = Path(root).resolve()
    src = Path(src).resolve() if src is not None else root
    m = read_manifest(src)
    rels = bundle_files(src)
    final = version_dir(root, m.version)
    manifest_bytes = (src / MANIFEST).read_bytes()
    if final.exists():
        if not (final / MANIFEST).is_file() or (final / MANIFEST).read_bytes() != manifest_bytes:
            raise BundleError(f"{final}: version {m.version} is already published with another manifest; published "
                              "versions are immutable (bump the version)")
    else:
        (root / VERSIONS).mkdir(parents=True, exist_ok=True)
        staging = root / VERSIONS / f"{_STAGING}{m.version}-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        try:
            for rel in rels:
                link_or_copy(safe_path(src, rel), staging / rel)
            # the manifest last, as in a single directory (its bytes as read: the same JSON the source serves)
            atomic_write(staging / MANIFEST, lambda tmp: Path(tmp).write_bytes(manifest_bytes))
            for d in sorted({p.parent for p in staging.rglob("*")}, key=lambda p: -len(p.parts)):
                _fsync_dir(d)
            os.rename(staging, final)  # one step: readers see no version, or all of it
            _fsync_dir(root / VERSIONS)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    write_pointer(root, m.version)
    prune_versions(root, keep)
    return final


def prune_versions(root: str | os.PathLike, keep: int = KEEP_VERSIONS) -> list[int]:
    """Remove all but the newest `keep` versions (never the current one); returns the versions removed."""
    root = Path(root)
    cur = current_version(root)
    versions = list_versions(root)
    kept = set(versions[-keep:]) | ({cur} if cur is not None else set())
    removed = []
    for v in versions:
        if v not in kept:
            shutil.rmtree(version_dir(root, v), ignore_errors=True)
            removed.append(v)
    return removed


@contextlib.contextmanager
def writer_lock(root: str | os.PathLike, who: str) -> Iterator[None]:
    """Hold an exclusive lock on ROOT/.train.lock while writing the bundle: a second writer (`brainstacks train`,
    `brainstacks stacks import`, a runtime adapter load) on the same directory fails at once, naming the holder,
    instead of interleaving writes. The lock dies with the process (flock), so a killed writer leaves none behind."""
    import fcntl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / WRITER_LOCK, "a+")  # noqa: SIM115 - held for the duration of the context
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise BundleError(f"{root}: another writer is writing this bundle ({holder}); wait for it to finish or "
                              "use another directory") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({who})\n")
        f.flush()
        yield
    finally:
        f.close()
