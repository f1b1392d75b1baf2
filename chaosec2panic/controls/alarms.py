"""Stop conditions as a Chaos Toolkit control: CloudWatch alarms that halt the experiment.

Use it at experiment level, in the settings, or with ``--control-file``::

    controls:
      - name: stop-on-alarms
        provider:
          type: python
          module: chaosec2panic.controls.alarms
          arguments: {names: [checkout-5xx], interval: 10}

Without arguments it reads ``chaosec2panic_stop_alarms`` from the configuration (the same
alarms ``send_nmi`` checks before it sends). Before every action of chaosec2panic the alarms
are read; while the experiment runs they are read every ``interval`` seconds. An alarm in any
state but OK (ALARM, INSUFFICIENT_DATA unless named in
``chaosec2panic_stop_alarms_insufficient_data_ok``, or one that cannot be found or read)
interrupts the run (rollbacks still run), by the same rule ``send_nmi`` applies, and the
journal records which alarm stopped it and when, under ``extensions``.
"""

import logging
import threading
from typing import Any, Dict, List

from chaoslib.exceptions import InterruptExecution
from chaoslib.exit import exit_gracefully
from chaoslib.types import Activity, Configuration, Experiment, Journal, Secrets

from ..errors import StopConditionMet
from ..stopconditions import StopAlarms, check_stop, stop_alarms

__all__ = ["after_experiment_control", "before_activity_control", "cleanup_control", "configure_control"]

logger = logging.getLogger("chaostoolkit")
INJECTING_MODULES = ("chaosec2panic.actions",)


class Watch:
    """The alarms of this run, what stopped it, and the thread that keeps reading them."""

    def __init__(self, alarms: StopAlarms, configuration: Configuration, secrets: Secrets, interval: float):
        self.alarms, self.configuration, self.secrets = alarms, configuration, secrets
        self.stopped: Dict[str, Any] | None = None
        self.checks = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True, name="stop-alarms")

    def check(self) -> None:
        """Read the alarms; on a stop, remember it and raise StopConditionMet."""
        self.checks += 1
        try:
            check_stop(self.alarms, self.configuration, self.secrets)
        except StopConditionMet as exc:
            self.stopped = self.stopped or {"reason": str(exc), "check": self.checks}
            raise

    def _run(self, interval: float) -> None:
        while not self._done.wait(interval):
            try:
                self.check()
            except StopConditionMet as exc:
                logger.critical("%s: interrupting the experiment", exc)
                exit_gracefully()
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()


_watch: List[Watch] = []  # the watch of the run in progress (one run per process)


def configure_control(
    configuration: Configuration | None = None,
    secrets: Secrets | None = None,
    names: List[str] | None = None,
    arns: List[str] | None = None,
    tags: Dict[str, str] | None = None,
    interval: float = 10,
    **kwargs: Any,
) -> None:
    """Read the alarms once (refusing to start when one forbids an NMI) and keep watching them."""
    override = {k: v for k, v in {"names": names, "arns": arns, "tags": tags}.items() if v}
    alarms = stop_alarms(configuration, override)
    if alarms is None:
        raise InterruptExecution(
            "stop-on-alarms control: no alarms (give names, arns or tags, or set "
            "chaosec2panic_stop_alarms in the configuration)"
        )
    watch = Watch(alarms, configuration or {}, secrets or {}, float(interval))
    _watch[:] = [watch]
    try:
        watch.check()
    except StopConditionMet as exc:
        raise InterruptExecution(str(exc)) from exc
    watch.start()


def before_activity_control(context: Activity, **kwargs: Any) -> None:
    """Read the alarms immediately before an action that injects; interrupt if one fires."""
    provider = context.get("provider", {})
    if not _watch or context.get("type") != "action" or provider.get("module") not in INJECTING_MODULES:
        return
    try:
        _watch[0].check()
    except StopConditionMet as exc:
        raise InterruptExecution(str(exc)) from exc


def after_experiment_control(context: Experiment, state: Journal, **kwargs: Any) -> None:
    """Say in the journal which alarm stopped the run, and when (nothing when none did)."""
    if _watch and _watch[0].stopped:
        state.setdefault("extensions", []).append(
            {"name": "chaosec2panic", "stop_condition": _watch[0].stopped}
        )


def cleanup_control() -> None:
    """Stop watching."""
    for watch in _watch:
        watch.stop()
    _watch.clear()
