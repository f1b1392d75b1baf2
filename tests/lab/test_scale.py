"""Five hundred simulated instances through the real ``chaos run``: every probe, batched."""

from conftest import opted_in, run_experiment, variant

FLEET = 500


def test_a_fleet_of_500_runs_the_crash_capture_experiment(make_lab, tmp_path):
    lab = make_lab([{**opted_in("web", tags={"role": "crash-capture"}), "count": FLEET}], time_scale=0.05)
    experiment = variant(tmp_path, count=FLEET, max_instances=FLEET)
    journal = run_experiment(lab, experiment, tmp_path / "journal.json", CHAOSEC2PANIC_POLL_INTERVAL="5")
    assert journal["status"] == "completed" and journal["deviated"] is False, [
        (p["activity"]["name"], p.get("output")) for p in journal["steady_states"]["after"]["probes"]
    ]
    sent = journal["run"][0]["output"]["injections"]
    assert len(sent) == FLEET and {e["outcome"] for e in sent} == {"sent"}
    recovery = journal["run"][1]["output"]
    assert recovery["count"] == recovery["recovered"] == FLEET
    assert len(recovery["timelines"]) == FLEET
    assert all(t["durations"]["total_recovery"] is not None for t in recovery["timelines"].values())
    dumps = journal["run"][2]["output"]["instances"]
    assert {d["verdict"] for d in dumps.values()} == {"complete-dump"}
    # Batched (100 ids per DescribeInstanceStatus, 50 per SendCommand and agent listing), and
    # each batched look is made a few times in the whole run: never once per instance.
    per_instance = {
        op: n
        for op, n in lab.lab.calls.items()
        if op.split(":")[1].startswith(("Describe", "SendCommand", "List")) and n >= FLEET / 4
    }
    assert per_instance == {}
    assert len(lab.events("recovered")) == FLEET
