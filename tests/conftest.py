"""Shared fixtures: a lab over HTTP with a fleet of the test's choosing, and the settings to reach it."""

from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from chaosec2panic.lab.fleet import parse_fleet
from chaosec2panic.lab.server import LabServer

FAST = 0.02  # wall seconds per model second: a crash-and-reboot cycle takes about a second


class RunningLab:
    """A lab under test: its server, its guests by name, and what it received."""

    def __init__(self, server: LabServer, ledger: Path):
        self.server = server
        self.ledger = ledger

    @property
    def lab(self) -> Any:
        return self.server.lab

    def id(self, name: str) -> str:
        return self.lab.names[name]

    def configuration(self, **more: Any) -> Dict[str, Any]:
        return {
            "chaosec2panic_ledger_path": str(self.ledger),
            "chaosec2panic_poll_interval": 0.1,
            "chaosec2panic_retry_base_delay": 0.01,
            **more,
        }

    def events(self, kind: str | None = None, name: str | None = None) -> List[Dict[str, Any]]:
        for guest in self.lab.guests.values():
            guest.advance()
        return [
            e
            for e in self.lab.events
            if (kind is None or e["kind"] == kind) and (name is None or e["name"] == name)
        ]

    def nmi_names(self) -> List[str]:
        return sorted(e["name"] for e in self.events("nmi"))


@pytest.fixture
def make_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RunningLab]]:
    """Start a lab serving ``instances`` (fleet entries); stopped when the test ends."""
    started: List[LabServer] = []

    def start(instances: List[Dict[str, Any]], time_scale: float = FAST) -> RunningLab:
        server = LabServer(parse_fleet({"time_scale": time_scale, "instances": instances})).start()
        started.append(server)
        for key, value in server.environment().items():
            monkeypatch.setenv(key, value)
        return RunningLab(server, tmp_path / f"ledger-{len(started)}.json")

    yield start
    for server in started:
        server.stop()


def opted_in(name: str, **settings: Any) -> Dict[str, Any]:
    """A fleet entry carrying the default opt-in tag and a role tag equal to its name."""
    tags = {"chaos:nmi": "allowed", "role": name, **settings.pop("tags", {})}
    return {"name": name, "tags": tags, **settings}
