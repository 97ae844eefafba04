"""Versioned bundles (brainstacks/versions.py): immutable version directories, an atomic CURRENT pointer, the last
K kept."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from brainstacks.bundle import MANIFEST, DomainEntry, Manifest, resolve_bundle_dir, write_manifest
from brainstacks.errors import BundleError
from brainstacks.files import atomic_write
from brainstacks.versions import (
    POINTER,
    current_version,
    list_versions,
    publish_version,
    version_dir,
)


def _working_copy(root: Path, version: int, payload: bytes = b"x") -> Path:
    """A single-directory bundle with one (fake) stack file per domain: enough for the layout, not for loading."""
    rel = f"stacks/math/{version}"
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(d / "stack.safetensors", lambda tmp: Path(tmp).write_bytes(payload * 64))
    atomic_write(d / "stack.json", lambda tmp: Path(tmp).write_text(json.dumps({"sha256": "0" * 64})))
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports" / "train_math.json").write_text(json.dumps({"v": version}))
    m = Manifest(version=version, base={"path": "/nowhere", "fingerprint": {}}, stack_config={},
                 domains=[DomainEntry("math", [rel])], router=None)
    write_manifest(root, m)
    return root


def test_single_directory_resolves_to_itself(tmp_path):
    _working_copy(tmp_path, 1)
    assert resolve_bundle_dir(tmp_path) == tmp_path
    assert current_version(tmp_path) is None


def test_shipped_demo_bundle_is_single_directory():
    from brainstacks.demo import DEMO_BUNDLE as demo

    assert resolve_bundle_dir(demo) == demo and not (demo / POINTER).exists()


def test_publish_switches_pointer_and_versions_are_immutable(tmp_path):
    root = _working_copy(tmp_path / "b", 1, b"a")
    v1 = publish_version(root)
    assert v1 == version_dir(root, 1) and resolve_bundle_dir(root) == v1
    assert (root / POINTER).read_text() == "versions/1\n"
    # the writer goes on (atomic replaces of the working copy): the published v1 keeps its bytes
    _working_copy(root, 2, b"b")
    (root / "stacks/math/1/stack.safetensors").unlink()  # even a removed working file does not touch v1
    assert (v1 / "stacks/math/1/stack.safetensors").read_bytes() == b"a" * 64
    assert resolve_bundle_dir(root) == v1  # not yet published: readers stay on v1
    publish_version(root)
    assert resolve_bundle_dir(root) == version_dir(root, 2)
    assert json.loads((version_dir(root, 2) / MANIFEST).read_text())["version"] == 2
    assert (version_dir(root, 2) / "reports/train_math.json").is_file()
    # publishing v2 again with the same manifest only re-points; with another manifest it is refused
    publish_version(root)
    m = json.loads((root / MANIFEST).read_text())
    m["domains"][0]["stacks"] = ["stacks/math/2"]
    m["router"] = None
    m["base"]["path"] = "/elsewhere"
    (root / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="already published with another manifest"):
        publish_version(root)


def test_keeps_last_k_and_never_the_current(tmp_path):
    root = tmp_path / "b"
    for v in range(1, 6):
        _working_copy(root, v)
        publish_version(root, keep=2)
    assert list_versions(root) == [4, 5] and current_version(root) == 5
    assert not any(p.name.startswith(".staging") for p in (root / "versions").iterdir())


def test_publish_from_another_directory(tmp_path):
    src = _working_copy(tmp_path / "build", 7)
    shared = tmp_path / "shared"
    publish_version(shared, src=src)
    assert resolve_bundle_dir(shared) == version_dir(shared, 7)
    assert not (shared / MANIFEST).exists()  # the shared root holds only versions/ and CURRENT


def test_missing_file_is_not_published(tmp_path):
    root = _working_copy(tmp_path / "b", 1)
    (root / "stacks/math/1/stack.json").unlink()
    with pytest.raises(BundleError, match="not there: not published"):
        publish_version(root)
    assert not (root / POINTER).exists() and list_versions(root) == []


def test_bad_pointer_is_refused_with_the_file(tmp_path):
    root = _working_copy(tmp_path / "b", 1)
    publish_version(root)
    (root / POINTER).write_text("../../etc\n")
    with pytest.raises(BundleError, match="CURRENT: version pointer must read"):
        resolve_bundle_dir(root)
    (root / POINTER).write_text("versions/9\n")
    with pytest.raises(BundleError, match="names versions/9, which holds no manifest.json"):
        resolve_bundle_dir(root)


def test_reader_never_sees_a_half_written_version(tmp_path, monkeypatch):
    """A publish that dies while copying leaves no version directory and the pointer where it was."""
    import brainstacks.versions as versions

    root = _working_copy(tmp_path / "b", 1)
    publish_version(root)
    _working_copy(root, 2)
    calls = {"n": 0}
    real = versions.link_or_copy

    def dying(a, b):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(a, b)

    monkeypatch.setattr(versions, "link_or_copy", dying)
    with pytest.raises(OSError, match="disk full"):
        publish_version(root)
    assert list_versions(root) == [1] and resolve_bundle_dir(root) == version_dir(root, 1)
    assert sorted(os.listdir(root / "versions")) == ["1"]
