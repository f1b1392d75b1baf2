"""The extension's exceptions. All are ``ActivityFailed``, so Chaos Toolkit records them."""

from typing import Mapping

from chaoslib.exceptions import ActivityFailed

__all__ = ["Ec2PanicError", "InvalidRequest", "Refused", "StopConditionMet"]


class Ec2PanicError(ActivityFailed):
    """Base of every error raised by chaosec2panic."""


class InvalidRequest(Ec2PanicError):
    """The activity's arguments or configuration are wrong; nothing was sent."""


class Refused(Ec2PanicError):
    """A guardrail refused the injection; nothing was sent to any instance."""

    def __init__(self, summary: str, reasons: Mapping[str, str] | None = None):
        self.reasons = dict(reasons or {})
        lines = [summary, *(f"  {key}: {why}" for key, why in sorted(self.reasons.items()))]
        super().__init__("\n".join(lines) + "\nNothing was sent.")


class StopConditionMet(Ec2PanicError):
    """A stop condition holds (or cannot be read): no further NMI may be sent."""
