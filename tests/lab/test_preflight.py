"""Preflight: one row per target, each check, and the same verdict as a probe. Sends no NMI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import opted_in

from chaosec2panic.actions import send_nmi
from chaosec2panic.errors import Refused
from chaosec2panic.probes import kdump_armed, ready_for_nmi

CLI = str(Path(sys.executable).with_name("chaosec2panic"))
FLEET = [
    opted_in("ready", tags={"team": "a"}),
    opted_in("bare", kdump=False, tags={"team": "a"}),
    opted_in("tight", memory_mib=16384, disk_free_gib=4, tags={"team": "a"}),
    {"name": "shy", "tags": {"team": "a"}},
    opted_in("xen", instance_type="t2.large", tags={"team": "a"}),
    opted_in("silent", agent=False, tags={"team": "a"}),
]


def preflight(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "preflight", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ),
    )


def failing(row: dict) -> set:
    return {check for check, why in row["checks"].items() if why}


def test_preflight_json_names_what_each_target_lacks(make_lab):
    lab = make_lab(FLEET)
    done = preflight("--tag", "team=a", "--json")
    assert done.returncode == 1, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert {n: failing(r) for n, r in rows.items()} == {
        "ready": set(),
        "bare": {"kdump"},
        "tight": {"dump_space"},
        "shy": {"opt_in"},
        "xen": {"type", "permission"},  # EC2 also answers UnsupportedOperation to the DryRun
        "silent": {"agent_online", "kdump", "dump_space"},
    }
    assert rows["ready"]["ready"] is True and rows["bare"]["ready"] is False
    assert "crash_kernel_loaded: found 0" in rows["bare"]["checks"]["kdump"]
    assert lab.nmi_names() == []


def test_preflight_table_and_exit_codes(make_lab):
    lab = make_lab(FLEET)
    ready = preflight("--instance-id", lab.id("ready"))
    assert ready.returncode == 0 and "yes" in ready.stdout.splitlines()[1]
    both = preflight("--instance-id", lab.id("ready"), "--instance-id", lab.id("bare"))
    assert both.returncode == 1 and f"{lab.id('bare')} kdump: kdump not-armed" in both.stdout
    assert preflight("--tag", "team=nobody").returncode == 1
    assert preflight("--instance-id", "i-nope").returncode == 2
    assert preflight("--tag", "broken").returncode != 0
    assert lab.nmi_names() == []


def test_ready_for_nmi_probe(make_lab):
    lab = make_lab(FLEET)
    assert ready_for_nmi(instance_ids=[lab.id("ready")], configuration=lab.configuration()) is True
    assert ready_for_nmi(tags={"team": "a"}, configuration=lab.configuration()) is False
    assert (
        ready_for_nmi(
            instance_ids=[lab.id("tight")], min_dump_space_ratio=0.2, configuration=lab.configuration()
        )
        is True
    )
    assert lab.nmi_names() == []


def test_an_agent_outage_on_demand_makes_kdump_unknown_and_refuses_the_nmi(make_lab):
    lab = make_lab([opted_in("web")])
    lab.control("/_lab/agent", {"name": "web", "online": False})
    verdict = kdump_armed(instance_ids=[lab.id("web")], configuration=lab.configuration())
    assert verdict["instances"][lab.id("web")]["verdict"] == "unknown"
    with pytest.raises(Refused, match="not checked: AgentOffline"):
        send_nmi(instance_ids=[lab.id("web")], configuration=lab.configuration())
    assert lab.nmi_names() == []
