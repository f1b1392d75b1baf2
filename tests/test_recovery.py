"""Recovery verdicts, timelines and fleet aggregates."""

from dataclasses import replace

from chaosec2panic.recovery import (
    APP_NOT_FALLEN,
    MILESTONES,
    Boot,
    Observation,
    Track,
    fleet_summary,
    guest_boot,
    is_back,
    is_up,
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
    return f"2026-01-01T00:{int(seconds // 60):02d}:{seconds % 60:06.3f}Z"


def crashed_and_back() -> Track:
    track = Track("i-1", SENT, boot_id_before="old", panic_seen=t(1))
    for at, ok in ((0.5, True), (2, False), (20, False), (31, True), (36, True)):
        track = track.with_status(t(at), ok)
    return track.with_boot(Boot("new", t(25), t(35)))


def test_a_timeline_dates_every_milestone_and_derives_the_durations():
    line = timeline(crashed_and_back())
    assert line.milestones == {
        "nmi_sent": SENT,
        "panic_seen": t(1),
        "went_down": t(2),
        "kernel_back": t(25),
        "status_ok": t(31),
        "agent_online": t(35),
        "app_healthy": None,
        "dump_found": None,
    }
    assert line.durations == {
        "time_to_crash": 1.0,
        "time_to_reboot": 25.0,
        "time_to_healthy": 10.0,
        "total_recovery": 35.0,
    }
    assert line.back and line.recovered_at == t(35) and line.recovery_seconds == 35.0
    assert set(line.missing) == {"app_healthy", "dump_found"}
    assert list(line.to_dict()["milestones"]) == list(MILESTONES)


def test_missing_milestones_stay_missing_with_the_reason():
    track = Track("i-1", SENT, boot_id_before="old").with_status(t(3), True)
    line = timeline(track)
    assert not line.back and line.recovery_seconds is None
    assert {k for k, v in line.milestones.items() if v is None} == set(MILESTONES) - {"nmi_sent"}
    assert line.missing["went_down"] == "every status check looked at was ok"
    assert line.missing["kernel_back"] == "no answer yet from a kernel started after the NMI"
    assert line.durations == dict.fromkeys(
        ("time_to_crash", "time_to_reboot", "time_to_healthy", "total_recovery")
    )


def test_the_old_kernel_answering_is_not_a_new_boot():
    track = Track("i-1", SENT, boot_id_before="old").with_boot(Boot("old", t(-3600), t(5)))
    assert track.boot is None
    unknown_before = Track("i-1", SENT)
    assert unknown_before.with_boot(Boot("x", t(-3600), t(5))).boot is None
    assert unknown_before.with_boot(Boot("x", t(20), t(30))).boot == Boot("x", t(20), t(30))


def test_the_first_answer_of_the_new_boot_is_kept():
    track = crashed_and_back().with_boot(Boot("new", t(25), t(50)))
    assert timeline(track).milestones["agent_online"] == t(35)


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


def test_guest_boot_takes_the_guest_clock_within_what_the_caller_saw():
    epoch = parse_iso(t(35)).timestamp()
    assert guest_boot("b", 10.0, epoch, t(30), t(40)) == Boot("b", t(25), t(35))
    # A guest clock 3 s ahead of ours: the answer cannot be later than when it was read.
    assert guest_boot("b", 10.0, epoch + 3, t(30), t(36)) == Boot("b", t(26), t(36))
    assert guest_boot("b", 10.0, epoch - 9, t(30), t(40)) == Boot("b", t(20), t(30))
