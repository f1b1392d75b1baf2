"""The real `chaos` CLI: discover, validate every experiment, and run them against the lab."""

import json

import pytest
from conftest import ROOT, chaos, failed_probes, make_alarm, opted_in, run_experiment, variant, vary

from chaosec2panic.actions import send_nmi

EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


def test_discover_lists_every_activity_with_its_doc_and_typed_arguments(tmp_path):
    out = tmp_path / "discovery.json"
    done = chaos(
        "discover", "--no-system-info", "--no-install", "--discovery-path", str(out), "chaosec2panic"
    )
    assert done.returncode == 0, done.stderr
    activities = {a["name"]: a for a in json.loads(out.read_text())["activities"]}
    assert set(activities) == {
        "send_nmi",
        "instance_healthy",
        "kdump_armed",
        "crash_dump_present",
        "crash_dumps",
        "panic_on_console",
        "recovery_seconds",
        "recovered_within",
        "recover_instances",
        "ready_for_nmi",
        "arm_kdump",
        "restore_kdump_settings",
        "collect_crash_dump",
    }
    for activity in activities.values():
        assert activity["doc"], activity["name"]
        assert {"configuration", "secrets"} <= {a["name"] for a in activity["arguments"]}
    send = {a["name"]: a for a in activities["send_nmi"]["arguments"]}
    assert send["instance_ids"]["type"] == "list" and send["tags"]["type"] == "mapping"
    assert send["max_instances"] == {"name": "max_instances", "default": 1, "type": "integer"}
    assert activities["send_nmi"]["type"] == "action" and activities["recovered_within"]["type"] == "probe"


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_validates(experiment):
    done = chaos("validate", str(experiment))
    assert done.returncode == 0, done.stdout + done.stderr


def test_crash_capture_runs_green_against_the_lab(make_lab, tmp_path):
    lab = make_lab(
        [
            opted_in("a", tags={"role": "crash-capture"}),
            opted_in("b", tags={"role": "crash-capture"}),
            {"name": "bystander", "tags": {"role": "other"}},
        ]
    )
    journal = run_experiment(lab, ROOT / "experiments" / "crash-capture.yaml", tmp_path / "journal.json")
    assert journal["status"] == "completed" and journal["deviated"] is False
    assert all(p["tolerance_met"] for p in journal["steady_states"]["after"]["probes"])
    outputs = {r["activity"]["name"]: r["output"] for r in journal["run"]}
    [injection] = outputs["send-nmi-to-one-target"]["injections"]
    hit = lab.lab.guests[injection["instance_id"]].spec.name
    assert lab.nmi_names() == [hit] and hit in ("a", "b")
    seconds = outputs["recovery-seconds"]["instances"][injection["instance_id"]]
    truth = lab.events("recovered", hit)[0]["epoch"] - lab.events("nmi", hit)[0]["epoch"]
    assert abs(seconds - truth) < 0.5
    dump = outputs["crash-dumps"]["instances"][injection["instance_id"]]
    assert dump["verdict"] == "complete-dump" and dump["path"] == lab.events("dump-written", hit)[0]["detail"]
    assert journal["rollbacks"][0]["output"] == {"instances": {}}


def test_an_unarmed_instance_deviates_without_a_dump(make_lab, tmp_path):
    lab = make_lab([opted_in("bare", kdump=False, tags={"role": "crash-capture"})])
    journal = run_experiment(lab, variant(tmp_path, allow_unarmed=True), tmp_path / "journal.json")
    assert journal["deviated"] is True
    assert failed_probes(journal) == {"complete-dump-after-each-nmi"}
    assert lab.nmi_names() == ["bare"]


def test_no_panic_deviates_and_reports_no_crash(make_lab, tmp_path):
    lab = make_lab([opted_in("calm", unknown_nmi_panic=0, tags={"role": "crash-capture"})])
    experiment = vary(variant(tmp_path, allow_unarmed=True), slo=2)
    journal = run_experiment(lab, experiment, tmp_path / "journal.json")
    assert journal["deviated"] is True
    assert failed_probes(journal) == {
        "hit-instances-back-within-slo"
    }  # the hypothesis stops at its first miss
    outputs = {r["activity"]["name"]: r["output"] for r in journal["run"]}
    assert outputs["recovery-seconds"]["pending"] == [lab.id("calm")]
    assert outputs["crash-dumps"]["instances"][lab.id("calm")]["verdict"] == "no-dump"


def test_a_refused_nmi_fails_the_run_instead_of_passing_vacuously(make_lab, tmp_path):
    lab = make_lab([opted_in("bare", kdump=False, tags={"role": "crash-capture"})])
    journal = run_experiment(lab, variant(tmp_path), tmp_path / "journal.json")
    assert journal["deviated"] is True
    assert journal["run"][0]["status"] == "failed"
    assert "kdump is not proven armed" in journal["run"][0]["exception"][-1]
    assert lab.nmi_names() == []


def test_hang_deviates_and_the_rollback_brings_it_back(make_lab, tmp_path):
    lab = make_lab([opted_in("hang", kdump=False, panic_timeout=0, tags={"role": "crash-capture"})])
    experiment = vary(variant(tmp_path, allow_unarmed=True), slo=2)
    journal = run_experiment(lab, experiment, tmp_path / "journal.json")
    assert journal["deviated"] is True
    [rollback] = journal["rollbacks"]
    assert rollback["output"]["instances"][lab.id("hang")] == {"actions": ["reboot"], "recovered": True}
    assert [e["kind"] for e in lab.events(name="hang") if e["kind"] in ("reboot", "recovered")] == [
        "reboot",
        "recovered",
    ]


def test_fleet_game_day_rolls_out_in_batches_under_its_alarms(make_lab, tmp_path):
    lab = make_lab(
        [opted_in("web", count=4, tags={"role": "game-day"}), {"name": "db", "tags": {"role": "db"}}]
    )
    make_alarm("checkout-5xx", tags={"chaos-stop": "true"})
    journal = run_experiment(lab, ROOT / "experiments" / "fleet-game-day.yaml", tmp_path / "journal.json")
    assert journal["status"] == "completed" and journal["deviated"] is False, failed_probes(journal)
    rollout = journal["run"][0]["output"]
    assert [len(b) for b in rollout["batches"]] == [2, 2] and rollout["halted"] is None
    assert sorted(lab.nmi_names()) == ["web-1", "web-2", "web-3", "web-4"]


def test_preflight_experiment_passes_on_a_ready_fleet_and_fails_on_an_unarmed_one(make_lab, tmp_path):
    lab = make_lab(
        [opted_in("ok", tags={"role": "crash-capture"}), opted_in("bare", kdump=False, tags={"role": "x"})]
    )
    experiment = ROOT / "experiments" / "preflight-readiness.yaml"
    green = run_experiment(lab, experiment, tmp_path / "green.json")
    assert green["status"] == "completed" and green["deviated"] is False
    red = run_experiment(lab, experiment, tmp_path / "red.json", CHAOSEC2PANIC_TARGET_ROLE="x")
    assert red["steady_states"]["before"]["steady_state_met"] is False and red["run"] == []
    assert lab.nmi_names() == []


def test_a_hypothesis_unmet_before_the_method_fails_the_run_and_its_exit_code(make_lab, tmp_path):
    lab = make_lab([opted_in("bare", kdump=False, tags={"role": "crash-capture"})])
    journal = tmp_path / "journal.json"
    environment = {**lab.server.environment(), "CHAOSEC2PANIC_LEDGER": str(lab.ledger)}
    experiment = ROOT / "experiments" / "crash-capture.yaml"
    done = chaos("run", "--journal-path", str(journal), str(experiment), env=environment)
    red = json.loads(journal.read_text())
    assert red["steady_states"]["before"]["steady_state_met"] is False and red["run"] == []
    assert done.returncode == 1 and red["status"] == "failed", done.stderr
    [verdict] = [e for e in red.get("extensions", []) if "verdict" in e]
    assert "kdump-armed-on-targets" in verdict["reason"] and "nothing was tested" in verdict["reason"]
    assert lab.nmi_names() == []


def test_recovery_slo_waits_for_the_application_and_journals_the_timeline(make_lab, tmp_path):
    lab = make_lab([opted_in("web", tags={"role": "staging-web"}, kdump=False, panic_timeout=5)])
    app_url = lab.server.url + "/_lab/app/{instance_id}"
    experiment = ROOT / "experiments" / "recovery-slo.yaml"
    journal = run_experiment(
        lab,
        experiment,
        tmp_path / "j.json",
        CHAOSEC2PANIC_APP_CHECK_URL=app_url,
        CHAOSEC2PANIC_SLO_SECONDS="30",
    )
    assert journal["status"] == "completed" and journal["deviated"] is False
    [line] = journal["run"][1]["output"]["timelines"].values()
    assert line["milestones"]["app_healthy"] > line["milestones"]["agent_online"]
    assert line["durations"]["total_recovery"] <= 30
    # The same drill with an application that never answers deviates, and says which check.
    dead = tmp_path / "dead.json"
    journal = run_experiment(
        lab,
        experiment,
        dead,
        CHAOSEC2PANIC_APP_CHECK_URL="http://127.0.0.1:9/",
        CHAOSEC2PANIC_SLO_SECONDS="3",
    )
    assert journal["deviated"] is True and failed_probes(journal) == {"back-with-app-within-slo"}
    [line] = journal["run"][1]["output"]["timelines"].values()
    assert line["missing"]["app_healthy"] == "the application check has not passed in the new boot"


def _named_target_experiment(tmp_path, judged: str, target: str):
    """An experiment whose hypothesis names ``judged`` and whose method hits ``target``."""
    probe = {
        "type": "probe",
        "name": "named-back-within-slo",
        "tolerance": True,
        "provider": {
            "type": "python",
            "module": "chaosec2panic.probes",
            "func": "recovered_within",
            "arguments": {"seconds": 120, "instance_ids": [judged]},
        },
    }
    experiment = {
        "version": "1.0.0",
        "title": "A hypothesis that names its target",
        "description": "recovered_within names the instance before any NMI has hit it",
        "steady-state-hypothesis": {"title": "the named instance is back", "probes": [probe]},
        "method": [
            {
                "type": "action",
                "name": "send-nmi",
                "provider": {
                    "type": "python",
                    "module": "chaosec2panic.actions",
                    "func": "send_nmi",
                    "arguments": {"instance_ids": [target]},
                },
            },
            {
                "type": "probe",
                "name": "recovery",
                "provider": {
                    "type": "python",
                    "module": "chaosec2panic.probes",
                    "func": "recovery_seconds",
                    "arguments": {"timeout": 120},
                },
            },
        ],
    }
    path = tmp_path / "named.json"
    path.write_text(json.dumps(experiment))
    return path


def test_a_hypothesis_may_name_its_target_before_any_nmi_hit_it(make_lab, tmp_path):
    lab = make_lab([opted_in("a")])
    target = lab.id("a")
    journal = run_experiment(lab, _named_target_experiment(tmp_path, target, target), tmp_path / "j.json")
    before = journal["steady_states"]["before"]["probes"][0]
    assert before["status"] == "succeeded" and before["output"] is True, before
    after = journal["steady_states"]["after"]["probes"][0]
    assert after["status"] == "succeeded" and after["output"] is True, after
    assert journal["status"] == "completed" and journal["deviated"] is False
    assert lab.nmi_names() == ["a"]


def test_after_the_method_a_named_instance_the_run_did_not_hit_is_an_error(make_lab, tmp_path):
    lab = make_lab([opted_in("a"), opted_in("b")])
    experiment = _named_target_experiment(tmp_path, lab.id("b"), lab.id("a"))
    journal = run_experiment(lab, experiment, tmp_path / "j.json")
    assert journal["steady_states"]["before"]["probes"][0]["output"] is True  # nothing hit b yet
    after = journal["steady_states"]["after"]["probes"][0]
    assert after["status"] == "failed" and f"this run sent no NMI to ['{lab.id('b')}']" in str(
        after["exception"]
    )
    assert journal["deviated"] is True and lab.nmi_names() == ["a"]


def test_a_named_instance_an_earlier_run_left_down_is_judged_not_back(make_lab, tmp_path):
    lab = make_lab([opted_in("hang", kdump=False, panic_timeout=0)])
    target = lab.id("hang")
    send_nmi(instance_ids=[target], allow_unarmed=True, configuration=lab.configuration())  # another run
    journal = run_experiment(lab, _named_target_experiment(tmp_path, target, target), tmp_path / "j.json")
    before = journal["steady_states"]["before"]["probes"][0]
    assert before["output"] is False  # the protection stays: the earlier run's NMI is not back
    assert journal["run"] == [] and lab.nmi_names() == ["hang"]  # so the method never ran
