"""What one server serves, as one frozen value: the bundle directory (and the root it was resolved from), its
manifest and version, each stack's verified metadata, the router's, the content hash --watch compares, and the base
fingerprint. A hot reload builds a new one and swaps it in with one assignment (server/registry.py), so no reader
ever sees half of one version and half of the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ServedBundle:
    dir: str | None = None  # the directory loaded: a single-directory bundle, or BUNDLE/versions/<n>
    root: str | None = None  # what the server was given (reloads follow its CURRENT pointer); None: dir
    manifest: Any = None  # brainstacks.bundle.Manifest; None for a bare base (--base only)
    stack_meta: dict[str, list[dict]] = field(default_factory=dict)  # per domain: each stack.json (sha256, bytes)
    router_meta: dict | None = None
    content_hash: str | None = None  # server.loading.content_hash of `dir` when it was read
    fingerprint: dict | None = None  # the base's, as the bundle was validated against it

    @property
    def version(self) -> int:
        """The manifest's version (0 for a bare base)."""
        return self.manifest.version if self.manifest is not None else 0
