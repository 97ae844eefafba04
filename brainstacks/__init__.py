"""Brainstacks: frozen MoE-LoRA stacks over a 4-bit base, composed per sequence by a sigmoid meta-router.

The library holds the method (MoE-LoRA deltas, stacks, the fused routed forward, null-space projection, the router
module) and the bundle format. It never imports `server/` or `training/`. See docs/ARCHITECTURE.md.
"""

from brainstacks.config import TARGETS, NullspaceConfig, RouterConfig, StackConfig
from brainstacks.errors import BrainstacksError, BundleError, ConfigError, RoutingError, StackFormatError

__version__ = "0.1.0"

__all__ = ["TARGETS", "StackConfig", "RouterConfig", "NullspaceConfig", "BrainstacksError", "BundleError",
           "ConfigError", "RoutingError", "StackFormatError", "__version__"]
