"""A run whose hypothesis failed before the method fails, so ``chaos run`` exits non-zero.

Chaos Toolkit skips the method when the steady-state hypothesis is not met before it (targets
not ready, kdump lost, an instance of an earlier run not back) and ends the run ``completed``,
not deviated, with exit code 0: a nightly preflight gate or a scheduled drill would stay green
while nothing was tested. With this control the run ends ``failed`` instead, and the journal
names the probes that were out of tolerance:

```yaml
controls:
  - name: fail-when-not-ready
    provider:
      type: python
      module: chaosec2panic.controls.verdict
```

A run that deviated (the hypothesis failed after the method), failed or was interrupted keeps
its status; Chaos Toolkit already exits 1 for those.
"""

import logging
from typing import Any, Dict, List

from chaoslib.types import Experiment, Journal

__all__ = ["after_experiment_control", "unmet_before"]

logger = logging.getLogger("chaostoolkit")


def unmet_before(journal: Journal) -> List[str] | None:
    """The names of the probes out of tolerance in the hypothesis before the method, or None when
    it was met (or not run)."""
    before: Dict[str, Any] = (journal.get("steady_states") or {}).get("before") or {}
    if not before or before.get("steady_state_met", True):
        return None
    probes = before.get("probes", [])
    return [str(p.get("activity", {}).get("name", "?")) for p in probes if not p.get("tolerance_met")]


def after_experiment_control(context: Experiment, state: Journal, **kwargs: Any) -> None:
    """Mark the run failed when its hypothesis was not met before the method."""
    unmet = unmet_before(state)
    if unmet is None or state.get("status") != "completed":
        return
    state["status"] = "failed"
    names = ", ".join(unmet) or "no probe named"
    reason = f"the steady-state hypothesis was not met before the method ({names}), so nothing was tested"
    verdict = {"name": "chaosec2panic", "verdict": "failed", "reason": reason}
    state.setdefault("extensions", []).append(verdict)
    logger.error("chaosec2panic verdict: the run failed: %s", reason)
