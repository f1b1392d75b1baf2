"""Shared fixtures: a lab over HTTP with a fleet of the test's choosing, and the settings to reach it."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import boto3
import pytest
import yaml

from chaosec2panic.health import take_over
from chaosec2panic.lab.fleet import GuestSpec, parse_fleet
from chaosec2panic.lab.sandbox import Sandbox
from chaosec2panic.lab.server import LabServer, lab_control
from chaosec2panic.lab.simguest import SimGuest
from chaosec2panic.polling import Poll, poll

ROOT = Path(__file__).resolve().parent.parent
CHAOS = str(Path(sys.executable).with_name("chaos"))
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

    def wait_for_event(self, kind: str, name: str, timeout: float = 300.0) -> Dict[str, Any]:
        """The first ``kind`` event of guest ``name``, once the lab has recorded it (a generous
        ``timeout`` only ends a wait for what will never come: a busy machine just waits longer)."""
        return wait_for(lambda: self.events(kind, name), bool, f"a {kind} event of {name}", timeout, 0.05)[0]

    def nmi_names(self) -> List[str]:
        return sorted(e["name"] for e in self.events("nmi"))

    def control(self, path: str, body: Any = None) -> Any:
        """``/_lab/...`` of this lab, with its operator's secret."""
        return lab_control(self.server.url, path, self.lab.operator.secret_key, body)


def start_lab(
    instances: List[Dict[str, Any]],
    ledger: Path,
    monkeypatch: pytest.MonkeyPatch,
    time_scale: float = FAST,
    throttling: Any = None,
    clock: Callable[[], float] = time.time,
) -> RunningLab:
    """A lab serving ``instances`` (fleet entries), with the environment pointing at it;
    ``throttling`` is the fleet file's entry (None: AWS's default buckets)."""
    fleet = {"time_scale": time_scale, "instances": instances, "throttling": throttling}
    server = LabServer(parse_fleet(fleet), clock=clock).start()
    for key, value in server.environment().items():
        monkeypatch.setenv(key, value)
    boto3.DEFAULT_SESSION = None  # each lab issues its own credentials: no session may keep old ones
    return RunningLab(server, ledger)


@pytest.fixture
def make_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RunningLab]]:
    """Start a lab serving ``instances`` (fleet entries); stopped when the test ends."""
    started: List[RunningLab] = []

    def start(instances: List[Dict[str, Any]], time_scale: float = FAST, **more: Any) -> RunningLab:
        ledger = tmp_path / f"ledger-{len(started)}.json"
        started.append(start_lab(instances, ledger, monkeypatch, time_scale, **more))
        return started[-1]

    yield start
    take_over()  # a watch send_nmi left running ends with its test, before its lab
    for lab in started:
        lab.server.stop()


_SANDBOX: List[Sandbox] = []


def sim_guest(root: Path, **spec: Any) -> SimGuest:
    """A simulated guest outside any lab, for running guest scripts in its own files (one
    sandbox for the whole test session)."""
    if not _SANDBOX:
        _SANDBOX.append(Sandbox())
    return SimGuest(
        "i-0123456789abcdef0",
        GuestSpec(name="g", **spec),
        root,
        FAST,
        clock=time.time,
        emit=lambda *a: None,
        sandbox=_SANDBOX[0],
    )


def make_alarm(name: str, state: str = "OK", tags: Dict[str, str] | None = None) -> str:
    """A CloudWatch alarm in the lab, put in ``state``; returns its ARN."""
    cw = boto3.client("cloudwatch")
    cw.put_metric_alarm(
        AlarmName=name,
        MetricName="5xx",
        Namespace="app",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanThreshold",
        Tags=[{"Key": k, "Value": v} for k, v in (tags or {}).items()],
    )
    cw.set_alarm_state(AlarmName=name, StateValue=state, StateReason=f"set to {state} by the test")
    return cw.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["AlarmArn"]


def lab_up_process(fleet: Path, *more: str) -> tuple[subprocess.Popen, str]:
    """``chaosec2panic lab up`` on ``fleet`` (and ``more`` arguments) in the background, and what
    it printed up to its export line."""
    cli = str(Path(sys.executable).with_name("chaosec2panic"))
    proc = subprocess.Popen(
        [cli, "lab", "up", "--fleet", str(fleet), "--port", "0", *more],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: List[str] = []
    for line in proc.stdout or []:
        lines.append(line)
        if line.startswith("export ") or len(lines) > 50:
            break
    return proc, "".join(lines)


def wait_for(
    call: Callable[[], Any],
    done: Callable[[Any], bool],
    what: str,
    timeout: float = 120,
    interval: float = 0.1,
) -> Any:
    """``call()`` again until ``done`` of its answer, which it returns (a generous bound ends only a
    wait for what never comes: the test then fails, saying what was last seen)."""
    found = poll(Poll(call, done, timeout, interval=interval, max_interval=interval))
    assert found.done, f"{what}: not within {timeout} s (last: {found.last!r})"
    return found.last


def opted_in(name: str, **settings: Any) -> Dict[str, Any]:
    """A fleet entry carrying the default opt-in tag and a role tag equal to its name."""
    tags = {"chaos:nmi": "allowed", "role": name, **settings.pop("tags", {})}
    return {"name": name, "tags": tags, **settings}


def chaos(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHAOS, "--no-log-file", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


def run_experiment(lab, experiment: Path, journal: Path, **env: str) -> dict:
    environment = {
        **lab.server.environment(),
        "CHAOSEC2PANIC_LEDGER": str(lab.ledger),
        "CHAOSEC2PANIC_POLL_INTERVAL": "0.1",
        **env,
    }
    done = chaos(
        "run",
        "--rollback-strategy",
        "always",
        "--journal-path",
        str(journal),
        str(experiment),
        env=environment,
    )
    assert journal.exists(), done.stdout + done.stderr
    return json.loads(journal.read_text())


def variant(tmp_path: Path, **send_arguments) -> Path:
    """crash-capture.yaml without the kdump steady-state check, with more send_nmi arguments."""
    experiment = yaml.safe_load((ROOT / "experiments" / "crash-capture.yaml").read_text())
    probes = experiment["steady-state-hypothesis"]["probes"]
    experiment["steady-state-hypothesis"]["probes"] = [
        p for p in probes if p["name"] != "kdump-armed-on-targets"
    ]
    experiment["method"][0]["provider"]["arguments"].update(send_arguments)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


def failed_probes(journal: dict) -> set:
    return {
        p["activity"]["name"] for p in journal["steady_states"]["after"]["probes"] if not p["tolerance_met"]
    }


def vary(path: Path, **changes: Any) -> Path:
    """Rewrite an experiment in place: ``slo`` (recovered_within seconds, recovery_seconds timeout),
    ``role`` (the target_role default)."""
    data = yaml.safe_load(path.read_text())
    if "slo" in changes:
        data["steady-state-hypothesis"]["probes"][0]["provider"]["arguments"]["seconds"] = changes["slo"]
        data["method"][1]["provider"]["arguments"]["timeout"] = changes["slo"]
    if "role" in changes:
        data["configuration"]["target_role"]["default"] = changes["role"]
    path.write_text(yaml.safe_dump(data))
    return path
