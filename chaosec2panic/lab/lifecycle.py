"""An instance's EC2 state as AWS moves it: through its transient states, refusing what AWS refuses.

AWS's instance life cycle: StartInstances takes a stopped instance through ``pending`` to
``running`` and renews its LaunchTime; StopInstances takes a running one through ``stopping`` to
``stopped``; TerminateInstances takes any through ``shutting-down`` to ``terminated``, from which
nothing brings it back. Starting an instance that is stopping or gone, or stopping one that is
gone, is ``IncorrectInstanceState``; asking for the state it is already in (or heading to) is
answered with that state and changes nothing. Moto jumps to the end state at once and starts a
terminated instance; the lab keeps the state here and answers with it.

Still a model: the transient states last a fixed number of model seconds (:data:`TRANSIENT`);
on AWS, stopping lasts as long as the operating system's shutdown (forced after a while) and
pending as long as the placement.
"""

from dataclasses import dataclass, replace

__all__ = ["STATE_CODES", "TRANSIENT", "Lifecycle", "LifecycleRefusal"]

STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}
TRANSIENT = {"pending": 5.0, "stopping": 3.0, "shutting-down": 3.0}  # model seconds in each
# What each call does: the state it passes through, the one it ends in, and the states it is
# refused from (with AWS's words for the refusal).
CALLS = {
    "StartInstances": ("pending", "running", ("stopping", "shutting-down", "terminated"), "started"),
    "StopInstances": ("stopping", "stopped", ("shutting-down", "terminated"), "stopped"),
    "TerminateInstances": ("shutting-down", "terminated", (), "terminated"),
}


class LifecycleRefusal(Exception):
    """AWS's IncorrectInstanceState: the call cannot be made in the instance's state."""


@dataclass(frozen=True)
class Lifecycle:
    """One instance's state at ``since``, heading for ``settles`` at ``until`` (a transient state)."""

    name: str
    launched_at: float
    since: float = 0.0
    settles: str = ""
    until: float = 0.0

    def at(self, now: float) -> "Lifecycle":
        """The life cycle as it stands at ``now``: a transient state past its time has settled."""
        if self.settles and now >= self.until:
            return replace(self, name=self.settles, since=self.until, settles="", until=0.0)
        return self

    @property
    def code(self) -> int:
        return STATE_CODES[self.name]

    def call(self, operation: str, now: float, scale: float, instance_id: str) -> "Lifecycle":
        """The life cycle after ``operation`` at ``now`` (``scale``: wall seconds per model second),
        or :class:`LifecycleRefusal` in AWS's words."""
        current = self.at(now)
        through, ends, refused, verb = CALLS[operation]
        if current.name in refused:
            raise LifecycleRefusal(
                f"The instance '{instance_id}' is not in a state from which it can be {verb}."
            )
        if current.name in (through, ends):
            return current
        launched = now if operation == "StartInstances" else current.launched_at
        return Lifecycle(through, launched, now, ends, now + TRANSIENT[through] * scale)
