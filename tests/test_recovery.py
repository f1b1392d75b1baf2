"""Recovery verdicts and fleet aggregates."""

from chaosec2panic.recovery import Observation, fleet_summary, is_back, is_up, seconds_between

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
