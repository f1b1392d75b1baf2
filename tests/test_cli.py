"""The chaosec2panic command as a user runs it: a lab in the foreground, its events, recover."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from conftest import lab_up_process
from test_inspect import KEYS

from chaosec2panic.cli import summarise
from chaosec2panic.lab.fleet import FleetError, load_fleet, parse_fleet

CLI = str(Path(sys.executable).with_name("chaosec2panic"))

FLEET = """
region: eu-west-1
time_scale: 0.02
instances:
  - name: hang
    kdump: false
    panic_timeout: 0
    tags: {chaos:nmi: allowed}
  - name: web
    count: 2
    os: ubuntu
"""


@pytest.fixture
def lab_up(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET)
    proc, text = lab_up_process(fleet)
    env = dict(re.findall(r"(\w+)=(\S+)", text.splitlines()[-1]))
    yield proc, env, text
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)


def test_lab_up_prints_the_endpoint_and_the_fleet_and_stops_on_ctrl_c(lab_up):
    proc, env, text = lab_up
    assert set(env) == {
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    assert env["AWS_REGION"] == "eu-west-1" and "3 instances at http://127.0.0.1:" in text
    ec2 = boto3.client(
        "ec2",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    names = sorted(
        t["Value"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        for t in i["Tags"]
        if t["Key"] == "Name"
    )
    assert names == ["hang", "web-1", "web-2"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0


def test_lab_up_time_scale_keeps_the_fleet_s_throttling_and_says_how_to_reach_it(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET + "throttling: false\n")
    proc, text = lab_up_process(fleet, "--time-scale", "0.05")
    try:
        env = dict(re.findall(r"(\w+)=(\S+)", text.splitlines()[-1]))
        assert f"pass --endpoint-url {env['AWS_ENDPOINT_URL']}" in text  # for an AWS CLI v2 before 2.13
        ec2 = boto3.client(
            "ec2",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"total_max_attempts": 1}),
        )
        [instance_id] = [
            i["InstanceId"]
            for r in ec2.describe_instances()["Reservations"]
            for i in r["Instances"]
            if {"Key": "Name", "Value": "hang"} in i["Tags"]
        ]
        codes = set()
        for _ in range(60):  # more than EC2's mutating bucket holds: the fleet said no throttling
            try:
                ec2.send_diagnostic_interrupt(InstanceId=instance_id, DryRun=True)
            except ClientError as exc:
                codes.add(exc.response["Error"]["Code"])
        assert codes == {"DryRunOperation"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=300, check=False, env={**os.environ, **env}
    )


def test_a_killed_run_is_recovered_from_the_ledger_by_a_later_process(lab_up, tmp_path):
    _, env, text = lab_up
    hang = re.search(r"hang\s+(i-\w+)", text).group(1)
    env = {**env, "CHAOSEC2PANIC_LEDGER": str(tmp_path / "ledger.json")}
    # One process sends the NMI and dies before any rollback.
    script = (
        "from chaosec2panic.actions import send_nmi; import os; "
        f"send_nmi(instance_ids=['{hang}'], allow_unarmed=True); os._exit(9)"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **env}, timeout=120, check=False
    )
    assert killed.returncode == 9
    done = cli("recover", "--timeout", "30", "--poll-interval", "0.1", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["instances"][hang] == {"actions": ["reboot"], "recovered": True}
    events = cli("lab", "events", "--json", env=env)
    kinds = [
        e["kind"] for e in json.loads(events.stdout) if e["instance_id"] == hang and e["kind"] != "command"
    ]
    assert kinds == ["nmi", "panic", "hung", "reboot", "boot", "agent-online", "recovered"]
    again = cli("recover", "--timeout", "5", env=env)
    assert again.returncode == 0 and json.loads(again.stdout) == {"instances": {}}


def test_lab_events_text_lists_what_the_fleet_received(lab_up):
    _, env, text = lab_up
    web = re.search(r"web-1\s+(i-\w+)", text).group(1)
    boto3.client(
        "ec2",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    ).reboot_instances(InstanceIds=[web])
    done = cli("lab", "events", env=env)
    assert done.returncode == 0
    assert re.search(rf"{web}\s+web-1\s+reboot", done.stdout)


def test_lab_events_without_an_endpoint_says_what_to_do():
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    done = subprocess.run(
        [CLI, "lab", "events"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 2 and "--endpoint" in done.stderr


def test_a_bad_fleet_file_is_named(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text("instances:\n  - name: a\n    os: plan9\n")
    done = subprocess.run(
        [CLI, "lab", "up", "--fleet", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0 and "unknown os 'plan9'" in done.stderr and "amazon-linux-2023" in done.stderr


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        ({"instances": [{"os": "ubuntu"}]}, "every instance needs a name"),
        ({"instances": [{"name": "a", "colour": "red"}]}, "unknown settings ['colour']"),
        ({"instances": [{"name": "a"}, {"name": "a"}]}, "repeated: ['a']"),
        ({"instances": [{"name": "a", "count": 0}]}, "count must be"),
        ({"instances": [{"name": "a", "state": "asleep"}]}, "state must be running or stopped"),
        ({"time_scale": 0, "instances": []}, "time_scale must be"),
        ({"instances": [{"name": "a", "memory_mib": "lots"}]}, "memory_mib must be int, got 'lots'"),
        ({"instances": [{"name": "a", "kdump": "yes"}]}, "kdump must be bool"),
        ({"instances": [{"name": "a", "tags": ["x"]}]}, "tags must be dict"),
        ({"instances": [{"name": "a", "kind": "docker"}]}, "unknown kind 'docker'"),
        (
            {"instances": [{"name": "a", "kind": "qemu", "memory_mib": 1024}]},
            "320 to 512 MiB of memory, got 1024",
        ),
        ({"instances": [{"name": "a", "kind": "qemu", "os": "ubuntu"}]}, "runs the lab's own system"),
        ({"instances": [{"name": "a", "os": "crashlab"}]}, "set kind: qemu"),
        ({"instances": "a"}, "a list under 'instances'"),
    ],
)
def test_fleet_errors(document, needle):
    with pytest.raises(FleetError) as error:
        parse_fleet(document)
    assert needle in str(error.value)


def test_qemu_guests_get_their_own_defaults():
    [g] = parse_fleet({"instances": [{"name": "r", "kind": "qemu"}]}).guests
    assert (g.os, g.memory_mib, g.crashkernel_mib) == ("crashlab", 384, 128)


def test_count_expands_names_and_defaults_opt_in(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(FLEET)
    fleet = load_fleet(path)
    assert [g.name for g in fleet.guests] == ["hang", "web-1", "web-2"]
    assert fleet.guests[1].tags == {"chaos:nmi": "allowed"} and fleet.guests[1].os == "ubuntu"


def test_inspect_command_exit_codes_and_json(tmp_path):
    real = Path(__file__).parent / "fixtures" / "real"
    ok = subprocess.run(
        [CLI, "inspect", "--json", str(real / "vmcore-dmesg.txt")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0
    [found] = json.loads(ok.stdout)
    assert list(found) == KEYS
    assert (found["kind"], found["nmi_panic"], found["panic_message"]) == (
        "dmesg",
        True,
        "NMI: Not continuing",
    )
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01not a dump")
    bad = subprocess.run(
        [CLI, "inspect", str(junk), str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1 and "missing" in bad.stdout
    usage = subprocess.run([CLI, "inspect"], capture_output=True, text=True, timeout=60, check=False)
    assert usage.returncode == 2


def test_a_lab_of_real_guests_without_qemu_says_what_to_install(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("instances:\n  - {name: r, kind: qemu}\n")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run(
        [CLI, "lab", "up", "--fleet", str(fleet), "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert (
        "the lab cannot start: qemu-system-x86_64 is missing (as root: apt-get install qemu-system-x86"
        in (done.stderr)
    )


def test_the_summary_takes_an_slo_given_by_reference_as_unknown():
    journal = {
        "experiment": {
            "title": "drill",
            "steady-state-hypothesis": {
                "probes": [
                    {
                        "provider": {
                            "module": "chaosec2panic.probes",
                            "func": "recovered_within",
                            "arguments": {"seconds": "${slo_seconds}"},
                        }
                    }
                ]
            },
        },
        "status": "completed",
        "deviated": False,
        "run": [
            {
                "activity": {"name": "recovery"},
                "status": "succeeded",
                "output": {"instances": {"i-1": 12.5}, "max": 12.5},
            }
        ],
    }
    assert summarise(journal)[-1] == "i-1 back after 12.5 s"


def test_python_dash_m_runs_the_same_command():
    command = ["policy", "--activity", "panic_on_console"]
    installed = subprocess.run([CLI, *command], capture_output=True, text=True, timeout=60, check=True)
    python_m = [sys.executable, "-m", "chaosec2panic", *command]
    module = subprocess.run(python_m, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(module.stdout) == json.loads(installed.stdout)
    assert json.loads(module.stdout)["Statement"][0]["Action"] == ["ec2:GetConsoleOutput"]
