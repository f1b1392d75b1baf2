"""The experiment catalogue: each file is documented, and the Windows memory dump runs green."""

import pytest
from conftest import ROOT, failed_probes, opted_in, run_experiment

EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
CATALOGUE = ROOT / "docs" / "catalogue.md"


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_starts_with_a_header_comment(experiment):
    lines = experiment.read_text().splitlines()
    header = lines[: next(n for n, line in enumerate(lines) if not line.startswith("#"))]
    assert len(header) >= 2 and all(line.strip("# ") for line in header), experiment.name


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_is_in_the_catalogue(experiment):
    assert f"experiments/{experiment.name}" in CATALOGUE.read_text(), experiment.name


def test_windows_memory_dump_runs_green_against_a_windows_fleet(make_lab, tmp_path):
    lab = make_lab(
        [
            opted_in("win-2019", os="windows-2019", tags={"role": "windows-crash"}),
            opted_in("win-2022", os="windows-2022", tags={"role": "windows-crash"}),
            opted_in("win-other", os="windows-2022", tags={"role": "other"}),
            opted_in("linux", tags={"role": "windows-crash-not"}),
        ]
    )
    journal = run_experiment(lab, ROOT / "experiments" / "windows-memory-dump.yaml", tmp_path / "j.json")
    assert journal["status"] == "completed" and journal["deviated"] is False, failed_probes(journal)
    assert all(p["tolerance_met"] for p in journal["steady_states"]["before"]["probes"])
    assert all(p["tolerance_met"] for p in journal["steady_states"]["after"]["probes"])
    outputs = {r["activity"]["name"]: r["output"] for r in journal["run"]}
    [injection] = outputs["send-nmi-to-one-target"]["injections"]
    instance_id = injection["instance_id"]
    hit = lab.lab.guests[instance_id].spec.name
    assert injection["outcome"] == "sent" and hit in ("win-2019", "win-2022")
    assert lab.nmi_names() == [hit] and [e["name"] for e in lab.events("bugcheck")] == [hit]
    dump = outputs["memory-dumps"]["instances"][instance_id]
    assert dump["verdict"] == "complete-dump" and dump["complete"] is True
    assert dump["format"] in ("windows-full", "windows-kernel") and dump["bugcheck"] == 0x80
    assert dump["nmi_panic"] is True and "NMI_HARDWARE_FAILURE" in dump["panic_message"]
    assert dump["path"] == "C:\\Windows\\MEMORY.DMP" == lab.events("dump-written", hit)[0]["detail"]
    # The dump's time is its file's, in whole seconds: it may fall in the NMI's own second.
    assert dump["written_at"][:19] >= injection["sent_at"][:19]
    seconds = outputs["recovery-seconds"]["instances"][instance_id]
    assert seconds is not None and 0 < seconds <= 900
    assert journal["rollbacks"][0]["output"] == {"instances": {}}
