"""Where the embedded demo bundle lives inside the installed package (built by `brainstacks demo build`).

The bundle carries its own base under `demo_bundle/base/`, so it serves on any machine with no download.
"""

from __future__ import annotations

from pathlib import Path

DEMO_BUNDLE = Path(__file__).resolve().parent / "demo_bundle"


def demo_bundle_path() -> Path:
    """The shipped demo bundle directory (it may be absent in a checkout before `brainstacks demo build`)."""
    return DEMO_BUNDLE
