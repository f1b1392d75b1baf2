"""chaosec2panic: crash-capture and recovery experiments on Amazon EC2 for Chaos Toolkit.

Send a diagnostic interrupt (NMI) to guarded EC2 instances, then check that kdump captured
a complete crash dump and that the instances came back within the recovery SLO.
"""

from typing import List

from chaoslib.discovery.discover import discover_actions, discover_probes, initialize_discovery_result
from chaoslib.types import DiscoveredActivities, Discovery

__all__ = ["__version__", "discover", "load_exported_activities"]
__version__ = "0.1.0"

MODULES = {
    "chaosec2panic.actions": discover_actions,
    "chaosec2panic.probes": discover_probes,
    "chaosec2panic.rollbacks": discover_actions,
}


def discover(discover_system: bool = True) -> Discovery:
    """Discover the extension's activities (``chaos discover chaosec2panic``)."""
    discovery = initialize_discovery_result("chaosec2panic", __version__, "aws")
    discovery["activities"].extend(load_exported_activities())
    return discovery


def load_exported_activities() -> List[DiscoveredActivities]:
    """Every exported action, probe and rollback with its docstring and typed arguments."""
    activities: List[DiscoveredActivities] = []
    for module, discover_in in MODULES.items():
        activities.extend(discover_in(module))
    return activities
