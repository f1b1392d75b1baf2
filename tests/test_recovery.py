"""Recovery verdicts, timelines and fleet aggregates."""

from dataclasses import replace
from datetime import timedelta

from chaosec2panic.recovery import (
    APP_NOT_FALLEN,
    MILESTONES,
    Boot,
    Evidence,
    Observation,
    Timeline,
    Track,
    best,
    first_seen,
    fleet_summary,
    guest_boot,
    guest_seconds,
    is_back,
    is_up,
    iso,
    parse_iso,
    seconds_between,
    timeline,
)

SENT = "2026-01-01T00:00:00.000Z"


def seen(**kw) -> Observation:
    base = {
        "at": "2026-01-01T00:01:00.000Z",
        "status_ok": True,
        "agent_online": True,
        "boot_id": "new",
        "uptime": 30.0,
    }
    return Observation(**{**base, **kw})


def test_back_needs_a_new_boot_status_ok_and_agent_online():
    assert is_back(seen(), SENT, "old")
    assert not is_back(seen(boot_id="old"), SENT, "old")
    assert not is_back(seen(status_ok=False), SENT, "old")
    assert not is_back(seen(agent_online=False), SENT, "old")
    assert not is_back(seen(boot_id=""), SENT, "old")


def test_without_the_old_boot_id_a_kernel_booted_after_the_nmi_counts():
    assert is_back(seen(uptime=30.0), SENT, "")
    assert not is_back(seen(uptime=90.0), SENT, "")
    assert not is_back(seen(uptime=None), SENT, "")


def test_seconds_between_iso_times():
    assert seconds_between(SENT, "2026-01-01T00:00:42.250Z") == 42.25


def test_fleet_summary_nearest_rank_percentiles_and_slo():
    seconds = {f"i-{n}": float(n) for n in range(1, 21)} | {"i-late": None}
    summary = fleet_summary(seconds, slo=15)
    assert summary["count"] == 21 and summary["recovered"] == 20
    assert summary["pending"] == ["i-late"]
    assert (summary["max"], summary["p50"], summary["p95"]) == (20.0, 10.0, 19.0)
    assert summary["over_slo"] == 6


def test_fleet_summary_of_nothing():
    assert fleet_summary({}) == {
        "count": 0,
        "recovered": 0,
        "pending": [],
        "max": None,
        "p50": None,
        "p95": None,
    }


def test_up_in_the_same_boot_is_up_but_not_back():
    survived = seen(boot_id="old", uptime=4000.0)
    assert is_up(survived) and not is_back(survived, SENT, "old")
    assert not is_up(seen(boot_id=""))


# Timelines ------------------------------------------------------------------------------------


def t(seconds: float) -> str:
    """An ISO time ``seconds`` after SENT."""
    return iso(parse_iso(SENT) + timedelta(seconds=seconds))


def crashed_and_back() -> Track:
    printk = {"panic": Evidence(t(0.05), "console-printk", 0.01)}
    track = Track("i-1", SENT, boot_id_before="old").with_evidence(printk)
    for at, ok in ((0.5, True), (2, False), (20, False), (31, True), (36, True)):
        track = track.with_status(t(at), ok)
    return track.with_boot(Boot("new", t(25), t(35)))


def test_a_timeline_dates_every_milestone_with_its_evidence_and_the_durations_add_up():
    line = timeline(crashed_and_back())
    assert line.milestones == {
        "nmi_sent": SENT,
        "panic": t(0.05),
        "capture_started": None,
        "dump_written": None,
        "went_down": t(2),
        "kernel_back": t(25),
        "status_ok": t(31),
        "agent_online": t(35),
        "app_healthy": None,
    }
    assert {m: (e.source, e.uncertainty_s, e.upper_bound) for m, e in line.evidence.items()} == {
        "nmi_sent": ("api-call", 0.0, False),
        "panic": ("console-printk", 0.01, False),
        "went_down": ("status-check", 1.5, True),  # seen down at 2 s, ok at the look before (0.5 s)
        "kernel_back": ("boot-time", 0.01, False),
        "status_ok": ("status-check", 6.0, True),  # not ok at 20 s; the new kernel started at 25 s
        "agent_online": ("agent-answer", 10.0, True),  # online after the kernel started, by its answer
    }
    assert line.durations == {
        "time_to_crash": 0.05,
        "time_to_capture": None,
        "reboot_after_capture": None,
        "time_to_reboot": 25.0,
        "time_to_healthy": 10.0,
        "total_recovery": 35.0,
    }
    assert line.durations["time_to_reboot"] + line.durations["time_to_healthy"] == line.recovery_seconds
    assert line.back and line.recovered_at == t(35) and line.conflicts == ()
    assert set(line.missing) == {"capture_started", "dump_written", "app_healthy"}
    assert list(line.to_dict()["milestones"]) == list(MILESTONES)
    assert Timeline.from_dict("i-1", line.to_dict()) == line


def test_the_best_source_wins_then_the_narrowest_error_bar():
    seen = [
        first_seen(t(20), t(0)),
        Evidence(t(1.2), "vmcore", 0.5),
        Evidence(t(0.9), "dump-dmesg", 0.3),
        Evidence(t(0.8), "console-printk", 0.01),
    ]
    assert best(seen) == Evidence(t(0.8), "console-printk", 0.01)
    assert best(seen[:2]) == Evidence(t(1.2), "vmcore", 0.5)
    assert best([]) is None


def test_the_capture_durations_add_up_to_the_time_to_reboot():
    track = crashed_and_back().with_evidence(
        {
            "capture_started": Evidence(t(0.5), "console-printk", 0.5),
            "dump_written": Evidence(t(9), "vmcore", 1.0),
        }
    )
    line = timeline(track)
    assert line.durations["time_to_capture"] == 9.0 and line.durations["reboot_after_capture"] == 16.0
    assert line.durations["time_to_capture"] + line.durations["reboot_after_capture"] == 25.0
    assert line.conflicts == ()


def test_evidence_out_of_order_is_said_and_its_error_bar_widened_never_reordered():
    # A guest clock 4 s behind: the dump's file time puts the dump before the NMI.
    line = timeline(crashed_and_back().with_evidence({"dump_written": Evidence(t(-3), "vmcore", 1.0)}))
    assert line.milestones["dump_written"] == t(-3)  # kept where its evidence put it
    assert line.evidence["dump_written"].uncertainty_s == 3.04  # widened to reach the panic's bar
    assert len(line.conflicts) == 1
    assert line.conflicts[0].startswith("dump_written (vmcore) is 2.040s before panic (console-printk)")
    # Within both error bars is no conflict.
    close = timeline(crashed_and_back().with_evidence({"dump_written": Evidence(t(0.0), "vmcore", 1.0)}))
    assert close.conflicts == () and close.evidence["dump_written"].uncertainty_s == 1.0


def test_a_kept_timeline_is_refined_by_the_dumps_evidence_later():
    kept = Timeline.from_dict("i-1", timeline(crashed_and_back()).to_dict())
    dump = {"panic": Evidence(t(0.5), "vmcore", 0.5), "dump_written": Evidence(t(12), "vmcore", 1.0)}
    line = kept.refined(dump)
    assert line.milestones["panic"] == t(0.05)  # the printk time is better than the dump's seconds
    assert line.milestones["dump_written"] == t(12) and "dump_written" not in line.missing
    assert line.durations["time_to_capture"] == 12.0 and line.recovered_at == kept.recovered_at
    assert kept.refined({}) is kept


def test_the_old_kernel_answering_is_not_a_new_boot():
    track = Track("i-1", SENT, boot_id_before="old").with_boot(Boot("old", t(-3600), t(5)))
    assert track.boot is None
    unknown_before = Track("i-1", SENT)
    assert unknown_before.with_boot(Boot("x", t(-3600), t(5))).boot is None
    assert unknown_before.with_boot(Boot("x", t(20), t(30))).boot == Boot("x", t(20), t(30))


def test_the_first_answer_of_the_new_boot_is_kept():
    track = crashed_and_back().with_boot(Boot("new", t(25), t(50)))
    assert timeline(track).milestones["agent_online"] == t(35)


def test_an_agent_asked_after_the_boot_may_have_been_online_since_the_boot():
    """Asked at 38 and answered at 40, it may have come online at 26: an agent already online
    answers at once. (The bar once began at the asking; at N=500, where the NMIs take minutes and
    most instances are back before the watch begins, the lab's truth fell outside it 416 times.)"""
    track = Track("i-1", SENT, boot_id_before="old").with_boot(Boot("new", t(25), t(40)))
    assert timeline(track).evidence["agent_online"] == Evidence(t(40), "agent-answer", 15.0, True)


def test_the_agents_unit_start_dates_it_from_below_and_its_answer_proves_it():
    """An agent whose unit started at 27 and that answered at 60 (back before the watch began):
    online at 27 at the earliest, and proven by 60; recovered counts from the proof, so the
    recovery seconds never count it back before the evidence shows it."""
    back = Boot("new", t(25), t(60), agent_started_at=t(27))
    line = timeline(replace(crashed_and_back(), boot=back).with_status(t(60), True))
    # Its unit's start less the boot time's bar (0.01 s): the earliest it can have been online.
    assert line.evidence["agent_online"] == Evidence(t(26.99), "agent-start", 33.01, lower_bound=True)
    assert line.milestones["agent_online"] == t(26.99) and line.recovery_seconds == 60.0
    assert line.durations["time_to_healthy"] == 35.0 and line.conflicts == ()
    assert Timeline.from_dict("i-1", line.to_dict()) == line
    # Before lower bounds existed, evidence was written without the key: it reads as none.
    old = {k: v for k, v in line.evidence["status_ok"].to_dict().items() if k != "lower_bound"}
    assert Evidence.from_dict(old) == line.evidence["status_ok"]


def test_guest_boot_keeps_the_agents_start_within_its_boot_dated_as_the_boot_is():
    epoch = parse_iso(t(35)).timestamp()
    assert guest_boot("b", 10.0, epoch, t(30), t(40), 2.5, clock_synced=True).agent_started_at == t(27.5)
    assert guest_boot("b", 10.0, epoch, t(30), t(40), None, clock_synced=True).agent_started_at == ""
    assert (
        guest_boot("b", 10.0, epoch, t(30), t(40), 0.0, clock_synced=True).agent_started_at == ""
    )  # never active
    assert (
        guest_boot("b", 10.0, epoch, t(30), t(40), 11.0, clock_synced=True).agent_started_at == ""
    )  # after the answer
    ahead = guest_boot(
        "b", 10.0, epoch + 3, t(30), t(36), 2.5, clock_synced=True
    )  # moved with the boot, its bar widened
    assert (ahead.agent_started_at, ahead.uncertainty_s) == (t(28.5), 8.01)
    started = timeline(Track("i-1", SENT, boot_id_before="old").with_boot(ahead)).evidence["agent_online"]
    assert (started.at, started.uncertainty_s, started.lower_bound) == (t(20.49), 15.51, True)


def test_status_ok_is_the_start_of_the_last_good_run_in_the_new_boot():
    track = crashed_and_back().with_status(t(40), False).with_status(t(45), True)
    line = timeline(track)
    assert line.milestones["status_ok"] == t(45) and line.recovery_seconds == 45.0


def test_an_application_check_must_pass_in_the_new_boot():
    track = crashed_and_back().with_app(t(10), True).with_app(t(30), False)
    assert not timeline(track).back
    assert timeline(track).missing["app_healthy"] == "the application check has not passed in the new boot"
    line = timeline(track.with_app(t(38), True))
    assert line.milestones["app_healthy"] == t(38) and line.recovery_seconds == 38.0
    assert line.durations["time_to_healthy"] == 13.0
    assert line.evidence["app_healthy"] == Evidence(t(38), "app-check", 8.0, True)


def test_a_load_balancer_counts_only_once_it_has_seen_the_instance_fail():
    lagging = replace(crashed_and_back(), app_lags=True)
    # Healthy all along: the balancer never noticed the crash, so its healthy proves nothing.
    stale = lagging.with_app(t(1), True).with_app(t(30), True).with_app(t(40), True)
    assert timeline(stale).milestones["app_healthy"] is None and not timeline(stale).back
    assert timeline(stale).missing["app_healthy"] == APP_NOT_FALLEN
    # It failed its checks while the instance was down, then passed again in the new boot.
    line = timeline(lagging.with_app(t(1), True).with_app(t(20), False).with_app(t(30), True))
    assert line.milestones["app_healthy"] == t(30) and line.recovery_seconds == 35.0
    # It noticed only after the new kernel was back: healthy counts from its next pass.
    late = lagging.with_app(t(26), True).with_app(t(33), False).with_app(t(44), True)
    assert timeline(late).milestones["app_healthy"] == t(44)
    # The same sightings from a direct check count from the new boot on.
    assert timeline(replace(stale, app_lags=False)).milestones["app_healthy"] == t(30)


def test_guest_boot_takes_a_synchronised_guest_clock_within_what_the_caller_saw():
    epoch = parse_iso(t(35)).timestamp()
    assert guest_boot("b", 10.0, epoch, t(30), t(40), clock_synced=True) == Boot("b", t(25), t(35))
    # A guest clock 3 s ahead of ours: the answer cannot be later than when it was read; the
    # boot time is then known only within the window widened by the 2 s the clocks disagree by
    # (its uptime may be as far off: the real busybox guest's clock, set from the hardware
    # clock's whole seconds and slowed by TCG, was found 2.07 s behind), and the skew is said.
    ahead = guest_boot("b", 10.0, epoch + 3, t(30), t(36), clock_synced=True)
    assert (ahead.booted_at, ahead.answered_at, ahead.uncertainty_s) == (t(26), t(36), 8.01)
    assert ahead.skew.startswith("the guest's clock was 2.000s ahead of the window")
    behind = guest_boot("b", 10.0, epoch - 9, t(30), t(40), clock_synced=True)
    assert (behind.booted_at, behind.answered_at) == (t(20), t(30)) and "behind" in behind.skew
    line = timeline(Track("i-1", SENT, boot_id_before="old").with_boot(ahead))
    assert line.conflicts == (ahead.skew,) and line.evidence["kernel_back"].uncertainty_s == 8.01


def test_a_guest_clock_not_said_synchronised_is_no_evidence_within_its_window():
    # Read 3 s after the command was sent and 7 s before its answer was: the boot was 10 s before
    # some moment of the window, and the answer was written by its end (a clock set from the
    # hardware clock's whole seconds is off by a fraction of a second that nothing shows).
    epoch = parse_iso(t(33)).timestamp()
    boot = guest_boot("b", 10.0, epoch, t(30), t(40), 2.5)
    assert (boot.booted_at, boot.answered_at, boot.uncertainty_s, boot.skew) == (t(23), t(40), 7.01, "")
    assert boot.agent_started_at == t(25.5)
    line = timeline(Track("i-1", SENT, boot_id_before="old").with_boot(boot))
    assert line.evidence["kernel_back"] == Evidence(t(23), "boot-time", 7.01) and line.conflicts == ()
    assert line.evidence["agent_online"].proven_at == t(40)
    # Outside the window, it is moved into it and the skew is said, as a synchronised one's.
    ahead = guest_boot("b", 10.0, epoch + 10, t(30), t(40))
    assert (ahead.booted_at, ahead.answered_at, ahead.uncertainty_s) == (t(30), t(40), 13.01)
    assert ahead.skew.startswith("the guest's clock was 3.000s ahead of the window")


def test_guest_seconds_read_whole_strings_only():
    assert guest_seconds("12.34") == 12.34 and guest_seconds("1700000000.%N") == 1700000000.0
    assert guest_seconds("12abc") is None and guest_seconds("") is None and guest_seconds("-1") is None


def test_a_boot_is_dated_by_its_narrowest_answer_and_its_agent_proven_by_its_first():
    held = guest_boot("new", 10.0, parse_iso(t(28)).timestamp(), t(5), t(30), 2.5)  # held while down
    track = Track("i-1", SENT, boot_id_before="old").with_boot(held)
    asked = guest_boot("new", 13.1, parse_iso(t(31.2)).timestamp(), t(31), t(31.4), 4.5)  # a round trip
    refined = track.with_boot(asked).boot
    assert (refined.booted_at, refined.uncertainty_s, refined.answered_at) == (t(18.1), 0.21, t(30))
    assert refined.agent_started_at == t(22.6) and held.uncertainty_s == 23.01
    assert track.with_boot(asked).with_boot(held).boot == refined  # a looser answer changes nothing
    other = guest_boot("newer", 1.0, parse_iso(t(50)).timestamp(), t(49.9), t(50.1))
    assert track.with_boot(asked).with_boot(other).boot == refined  # nor does another boot's
