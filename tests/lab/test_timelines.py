"""Recovery timelines against the lab's own record of what each guest did, and what they cost."""

import pytest
from conftest import opted_in, wait_for

from chaosec2panic.actions import send_nmi
from chaosec2panic.aws import client
from chaosec2panic.errors import InvalidRequest
from chaosec2panic.health import REASK_ABOVE
from chaosec2panic.lab.simguest import MODEL_SECONDS
from chaosec2panic.ledger import Ledger
from chaosec2panic.probes import (
    crash_dumps,
    instance_healthy,
    panic_on_console,
    recovered_within,
    recovery_seconds,
)
from chaosec2panic.recovery import APP_NOT_FALLEN, parse_iso

SCALE = 0.2  # a 40-second model cycle in about 8 wall seconds
DEFAULT_SETTINGS = {"chaosec2panic_poll_interval": 5}  # the extension's default pace


def epoch(text: str) -> float:
    return parse_iso(text).timestamp()


def truth(lab, name: str) -> dict:
    """When the lab says each step happened after the NMI (epoch seconds): its events."""
    first = {}
    for e in lab.events(name=name):
        first.setdefault(e["kind"], e["epoch"])
    after = [e for e in lab.events(name=name) if e["epoch"] >= first["nmi"]]
    step = {}
    for e in after:
        step.setdefault(e["kind"], e["epoch"])
    return {
        "nmi": first["nmi"],
        "panic": step["panic"],
        "capture_started": step["capture-start"],
        "dump_written": step["dump-written"],
        "kernel_started": step["boot"],
        "userspace": step["boot"] + MODEL_SECONDS["boot"] * SCALE * 0.5,  # status checks ok from here
        "agent_online": step["agent-online"],
        "recovered": step["recovered"],
    }


def check_against_the_truth(line: dict, real: dict, tolerance: float) -> None:
    """Each milestone the lab records within ``tolerance`` of it and inside its own error bar;
    the order of the crash kept; the durations adding up."""
    seen = {k: epoch(v) for k, v in line["milestones"].items() if v}
    truths = {
        "nmi_sent": real["nmi"],
        "panic": real["panic"],
        "capture_started": real["capture_started"],
        "kernel_back": real["kernel_started"],
        "agent_online": real["agent_online"],
    }
    if "dump_written" in seen:
        truths["dump_written"] = real["dump_written"]
    for milestone, when in truths.items():
        bar = line["evidence"][milestone]
        low = seen[milestone] - (0 if bar.get("lower_bound") else bar["uncertainty_s"]) - 0.005
        high = seen[milestone] + (0 if bar["upper_bound"] else bar["uncertainty_s"]) + 0.005
        assert abs(seen[milestone] - when) <= max(tolerance, bar["uncertainty_s"]), (milestone, bar)
        assert low <= when <= high, (milestone, when, bar)
    assert line["evidence"]["panic"]["source"] == "console-printk"
    assert line["evidence"]["capture_started"]["source"] == "console-printk"
    assert line["evidence"]["kernel_back"]["source"] == "boot-time"
    # The agent's own unit dates it, from below, whenever the watch began.
    assert line["evidence"]["agent_online"]["source"] == "agent-start"
    assert line["evidence"]["agent_online"]["lower_bound"] is True
    # The crash in its order within the error bars: the evidence never contradicted itself.
    assert line["conflicts"] == []
    assert real["userspace"] <= seen["status_ok"] + 0.005
    d = line["durations"]
    assert round(d["time_to_reboot"] + d["time_to_healthy"], 3) == d["total_recovery"]
    assert abs(d["total_recovery"] - (real["recovered"] - real["nmi"])) <= 1.0


def test_each_measured_milestone_is_within_a_second_of_the_truth(make_lab):
    names = ["small", "medium", "large"]
    lab = make_lab(
        [opted_in(n, memory_mib=m) for n, m in zip(names, (2048, 16384, 65536), strict=True)],
        time_scale=SCALE,
    )
    conf = lab.configuration(**DEFAULT_SETTINGS)
    send_nmi(tags={"chaos:nmi": "allowed"}, max_instances=3, configuration=conf)
    result = recovery_seconds(timeout=120, slo=15, configuration=conf)
    assert result["recovered"] == 3 and result["pending"] == []
    for name in names:
        line = result["timelines"][lab.id(name)]
        check_against_the_truth(line, truth(lab, name), 1.0)
        assert result["instances"][lab.id(name)] == line["durations"]["total_recovery"]
        assert set(line["missing"]) <= {"app_healthy", "dump_written"}
    # The larger the memory, the longer the dump: the fleet aggregates see it.
    seconds = [result["instances"][lab.id(n)] for n in names]
    assert seconds == sorted(seconds) and result["max"] == seconds[-1]
    assert result["over_slo"] == sum(1 for s in seconds if s > 15)
    recovered_at = {e.instance_id: e.recovered_at for e in Ledger.of(conf).entries()}
    assert all(recovered_at[lab.id(n)] for n in names)


def test_a_clock_not_synchronised_is_asked_again_before_the_instance_counts_as_back(make_lab):
    # Its answer held while the instance was down dates the boot only by the command's window
    # (here the whole outage); the watch asks again once the agent is online, and only then
    # writes the recovery, with its timeline, to the ledger (panic_on_console reads it there).
    lab = make_lab([opted_in("drifting", clock_synced=False)], time_scale=SCALE)
    conf = lab.configuration(**DEFAULT_SETTINGS)
    send_nmi(instance_ids=[lab.id("drifting")], configuration=conf)
    result = recovery_seconds(timeout=120, configuration=conf)
    line = result["timelines"][lab.id("drifting")]
    check_against_the_truth(line, truth(lab, "drifting"), 1.0)
    assert line["evidence"]["kernel_back"]["uncertainty_s"] <= REASK_ABOVE
    (entry,) = Ledger.of(conf).entries()
    assert (entry.recovered_at, entry.timeline) == (line["recovered_at"], line)
    assert panic_on_console(configuration=conf) is True


def test_instances_back_while_the_nmis_are_still_being_sent_are_dated_then(make_lab):
    # EC2 lets mutating calls through at 5 a second once its 50 tokens are spent, DryRun and NMI
    # alike: the NMIs to 80 instances take some 16 s to send, and each is back in about 8 s. The
    # watch send_nmi runs while it sends them records the first ones back then, as the lab did
    # it, and goes on after the last NMI until every instance is back: none waits for a probe.
    lab = make_lab([{**opted_in("web"), "count": 80}], time_scale=SCALE)
    conf = lab.configuration(**DEFAULT_SETTINGS)
    sent = send_nmi(tags={"role": "web"}, max_instances=80, configuration=conf)["injections"]
    last_sent = max(e["sent_at"] for e in sent)
    names = {lab.id(f"web-{n}"): f"web-{n}" for n in range(1, 81)}
    first = sorted(sent, key=lambda e: e["sent_at"])[:10]
    ledger = {e.instance_id: e for e in Ledger.of(conf).entries()}
    for e in first:
        entry = ledger[e["instance_id"]]
        assert entry.recovered_at and entry.recovered_at < last_sent, (entry.recovered_at, last_sent)
    recorded = wait_for(
        lambda: {e.instance_id: e for e in Ledger.of(conf).entries() if e.recovered_at},
        lambda found: len(found) == 80,
        "every instance recorded back by send_nmi's watch",
    )
    for i, entry in recorded.items():
        check_against_the_truth(entry.timeline, truth(lab, names[i]), 1.0)
    # The probe takes them as they are, and has nothing left to look at.
    before = dict(lab.lab.calls)
    result = recovery_seconds(timeout=120, configuration=conf)
    assert result["recovered"] == 80
    assert result["timelines"] == {i: e.timeline for i, e in recorded.items()}
    assert lab.lab.calls.get("ec2:DescribeInstanceStatus", 0) == before.get("ec2:DescribeInstanceStatus", 0)


def test_one_identity_command_per_instance_and_no_agent_listing_while_waiting(make_lab):
    lab = make_lab([opted_in(f"web-{n}", tags={"role": "web"}) for n in range(6)], time_scale=SCALE)
    conf = lab.configuration(**DEFAULT_SETTINGS)
    send_nmi(tags={"role": "web"}, max_instances=6, configuration=conf)
    before = dict(lab.lab.calls)
    assert recovered_within(120, configuration=conf) is True
    made = {k: v - before.get(k, 0) for k, v in lab.lab.calls.items() if v != before.get(k, 0)}
    assert made["ssm:SendCommand"] == 1  # one command carries all six, held until each agent is back
    assert "ssm:DescribeInstanceInformation" not in made
    assert made["ec2:GetConsoleOutput"] <= 2 * 6
    looks = made["ec2:DescribeInstanceStatus"]
    assert made["ssm:ListCommands"] == looks
    assert made.get("ssm:ListCommandInvocations", 0) <= looks


def test_an_instance_that_never_panics_has_no_new_boot_and_says_why(make_lab):
    lab = make_lab([opted_in("calm", unknown_nmi_panic=0)], time_scale=SCALE)
    conf = lab.configuration(chaosec2panic_poll_interval=0.5)
    send_nmi(instance_ids=[lab.id("calm")], allow_unarmed=True, configuration=conf)
    result = recovery_seconds(timeout=3, configuration=conf)
    line = result["timelines"][lab.id("calm")]
    assert result["instances"] == {lab.id("calm"): None} and result["pending"] == [lab.id("calm")]
    assert line["milestones"]["kernel_back"] is None and line["durations"]["total_recovery"] is None
    assert line["missing"]["kernel_back"] == "no answer yet from a kernel started after the NMI"
    assert line["missing"]["went_down"] == "every status check looked at was ok"
    assert line["missing"]["panic"] == "no panic after the NMI in the console or in a dump's log"


def test_an_application_check_holds_recovery_until_the_app_answers(make_lab):
    lab = make_lab([opted_in("api")], time_scale=SCALE)
    conf = lab.configuration(**DEFAULT_SETTINGS)
    send_nmi(instance_ids=[lab.id("api")], configuration=conf)
    check = {"url": lab.server.url + "/_lab/app/{instance_id}"}
    result = recovery_seconds(timeout=60, app_check=check, configuration=conf)
    line = result["timelines"][lab.id("api")]
    real = truth(lab, "api")
    app_up = real["agent_online"] + MODEL_SECONDS["app"] * SCALE
    assert abs(epoch(line["milestones"]["app_healthy"]) - app_up) <= 1.0
    assert line["milestones"]["app_healthy"] > line["milestones"]["agent_online"]
    assert abs(line["durations"]["total_recovery"] - (app_up - real["nmi"])) <= 1.0
    assert "app_healthy" not in line["missing"]


def test_an_application_that_never_answers_keeps_the_instance_pending(make_lab):
    lab = make_lab([opted_in("api")], time_scale=SCALE)
    conf = lab.configuration(chaosec2panic_poll_interval=0.5)
    send_nmi(instance_ids=[lab.id("api")], configuration=conf)
    closed = {"tcp": "127.0.0.1:9", "timeout": 0.2}  # the discard port: nothing listens there
    lab.wait_for_event("agent-online", "api")  # the new boot's agent: the lab's own record
    result = recovery_seconds(timeout=20, app_check=closed, configuration=conf)
    line = result["timelines"][lab.id("api")]
    assert result["instances"] == {lab.id("api"): None}
    assert line["milestones"]["agent_online"] and line["milestones"]["app_healthy"] is None
    assert line["missing"]["app_healthy"] == "the application check has not passed in the new boot"
    assert recovered_within(1, app_check=closed, configuration=conf) is False


def test_throttled_looks_are_retried_by_the_sdk_in_adaptive_mode(make_lab):
    lab = make_lab([opted_in("web")], time_scale=SCALE)
    conf = lab.configuration()
    lab.lab.faults.append(
        {"operation": "DescribeInstanceStatus", "code": "RequestLimitExceeded", "status": 503, "count": 2}
    )
    assert instance_healthy(instance_ids=[lab.id("web")], configuration=conf) is True
    assert lab.lab.calls["ec2:DescribeInstanceStatus"] == 3
    assert client("ec2", conf, None).meta.config.retries["mode"] == "adaptive"


def test_a_second_look_reuses_the_timeline_and_adds_what_the_dump_tells(make_lab):
    lab = make_lab([opted_in("web")], time_scale=SCALE)
    conf = lab.configuration(**DEFAULT_SETTINGS)
    send_nmi(instance_ids=[lab.id("web")], configuration=conf)
    first = recovery_seconds(timeout=60, configuration=conf)["timelines"][lab.id("web")]
    dump = crash_dumps(configuration=conf)["instances"][lab.id("web")]
    before = dict(lab.lab.calls)
    again = recovery_seconds(timeout=60, configuration=conf)["timelines"][lab.id("web")]
    assert lab.lab.calls["ssm:SendCommand"] == before["ssm:SendCommand"]  # nothing watched again
    assert again["recovered_at"] == first["recovered_at"]
    # The console already dated the dump by the capture kernel's clock: the dump's own file time
    # (whole seconds) is no better, and the timeline keeps the console's.
    assert first["evidence"]["dump_written"]["source"] == "console-printk"
    assert again["milestones"] == first["milestones"] and again["durations"] == first["durations"]
    written = dump["evidence"]["dump_written"]
    truth_written = lab.events("dump-written", "web")[0]["epoch"]
    assert written["source"] == "vmcore" and abs(epoch(written["at"]) - truth_written) <= 1.0
    # The dump's log dates the panic as the console did: the same printk time, the same boot.
    assert dump["evidence"]["panic"]["source"] == "dump-dmesg"
    assert abs(epoch(dump["evidence"]["panic"]["at"]) - epoch(first["milestones"]["panic"])) <= 0.002
    assert recovered_within(1, configuration=conf) is (first["durations"]["total_recovery"] <= 1)


def target_group(lab, *names: str, interval: int = 5, unhealthy_after: int = 2) -> str:
    """A target group of the lab's load balancer (checks every ``interval`` model seconds,
    healthy after 2 passes) with the named instances registered; its ARN."""
    elbv2 = client("elbv2", lab.configuration(), None)
    vpc = client("ec2", lab.configuration(), None).describe_vpcs()["Vpcs"][0]["VpcId"]
    arn = elbv2.create_target_group(
        Name="web",
        Protocol="HTTP",
        Port=80,
        VpcId=vpc,
        TargetType="instance",
        HealthCheckIntervalSeconds=interval,
        HealthyThresholdCount=2,
        UnhealthyThresholdCount=unhealthy_after,
    )["TargetGroups"][0]["TargetGroupArn"]
    if names:
        elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": lab.id(n), "Port": 80} for n in names])
    return arn


def balancer_says(lab, arn: str) -> dict:
    found = client("elbv2", lab.configuration(), None).describe_target_health(TargetGroupArn=arn)
    return {d["Target"]["Id"]: d["TargetHealth"]["State"] for d in found["TargetHealthDescriptions"]}


def test_a_target_group_holds_recovery_until_the_balancer_reports_the_instance_healthy_again(make_lab):
    lab = make_lab([opted_in("web-1"), opted_in("web-2")], time_scale=SCALE)
    conf = lab.configuration(**DEFAULT_SETTINGS)
    arn = target_group(lab, "web-1", "web-2")
    assert balancer_says(lab, arn) == {lab.id("web-1"): "healthy", lab.id("web-2"): "healthy"}
    send_nmi(instance_ids=[lab.id("web-1")], configuration=conf)
    result = recovery_seconds(timeout=60, app_check={"target_group": arn}, configuration=conf)
    line = result["timelines"][lab.id("web-1")]
    events = {e["kind"]: e["epoch"] for e in lab.events(name="web-1")}
    real = truth(lab, "web-1")
    # The balancer saw the instance fail after the NMI, and pass again only after the app was up.
    assert real["nmi"] < events["balancer-unhealthy"] < real["agent_online"]
    assert events["balancer-healthy"] >= real["agent_online"] + MODEL_SECONDS["app"] * SCALE
    assert abs(epoch(line["milestones"]["app_healthy"]) - events["balancer-healthy"]) <= 1.0
    assert abs(line["durations"]["total_recovery"] - (events["balancer-healthy"] - real["nmi"])) <= 1.0
    assert "app_healthy" not in line["missing"] and result["recovered"] == 1
    assert not [e for e in lab.events(name="web-2") if e["kind"].startswith("balancer-")]
    assert balancer_says(lab, arn) == {lab.id("web-1"): "healthy", lab.id("web-2"): "healthy"}


def test_a_balancer_that_never_saw_the_instance_fail_does_not_count_as_healthy(make_lab):
    lab = make_lab([opted_in("web")], time_scale=SCALE)
    conf = lab.configuration(chaosec2panic_poll_interval=0.5)
    # Ten failed checks 30 model seconds apart: far longer than the crash cycle, so it never notices.
    arn = target_group(lab, "web", interval=30, unhealthy_after=10)
    send_nmi(instance_ids=[lab.id("web")], configuration=conf)
    result = recovery_seconds(timeout=20, app_check={"target_group": arn}, configuration=conf)
    line = result["timelines"][lab.id("web")]
    assert line["milestones"]["agent_online"] and line["milestones"]["app_healthy"] is None
    assert line["missing"]["app_healthy"] == APP_NOT_FALLEN
    assert result["pending"] == [lab.id("web")]
    assert not [e for e in lab.events(name="web") if e["kind"].startswith("balancer-")]


def test_a_target_group_must_hold_every_hit_instance(make_lab):
    lab = make_lab([opted_in("web"), opted_in("db")], time_scale=SCALE)
    conf = lab.configuration()
    arn = target_group(lab, "web")
    send_nmi(instance_ids=[lab.id("db")], configuration=conf)
    with pytest.raises(InvalidRequest, match=f"{lab.id('db')} not registered in target group {arn}"):
        recovery_seconds(timeout=5, app_check={"target_group": arn}, configuration=conf)
    gone = arn.replace(arn.rsplit("/", 1)[1], "0123456789abcdef")
    with pytest.raises(InvalidRequest, match="not found: give the ARN of a target group in this region"):
        recovered_within(5, app_check={"target_group": gone}, configuration=conf)
