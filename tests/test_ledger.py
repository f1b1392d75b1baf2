"""The ledger: persisted, shared between processes, latest hit per instance."""

import json

from chaosec2panic.ledger import RUN_ID, Injection, Ledger
from chaosec2panic.settings import settings


def test_where_the_ledger_lives(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAOSEC2PANIC_LEDGER", str(tmp_path / "env.json"))
    assert (
        settings({"chaosec2panic_ledger_path": str(tmp_path / "conf.json")}).ledger_path
        == tmp_path / "conf.json"
    )
    assert settings({}).ledger_path == tmp_path / "env.json"
    monkeypatch.delenv("CHAOSEC2PANIC_LEDGER")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert settings({}).ledger_path == tmp_path / "state" / "chaosec2panic" / "ledger.json"


def test_record_latest_update_and_unrecovered(tmp_path):
    ledger = Ledger(tmp_path / "l.json")
    ledger.record(
        [
            Injection("i-1", "2026-01-01T00:00:00.000Z", "sent"),
            Injection("i-2", "2026-01-01T00:00:00.000Z", "failed", error="Throttling"),
        ]
    )
    ledger.record([Injection("i-1", "2026-01-01T00:05:00.000Z", "unknown", run_id="other")])
    assert set(ledger.latest()) == {"i-1"}
    assert ledger.latest()["i-1"].sent_at.endswith("05:00.000Z")
    assert ledger.latest(RUN_ID)["i-1"].sent_at.endswith("00:00.000Z")
    ledger.update({("i-1", "2026-01-01T00:05:00.000Z"): {"recovered_at": "2026-01-01T00:06:00.000Z"}})
    assert ledger.unrecovered() == {}
    assert json.loads((tmp_path / "l.json").read_text())["injections"][2]["recovered_at"]


def test_a_second_process_reads_what_the_first_wrote(tmp_path):
    Ledger(tmp_path / "l.json").record([Injection("i-9", "2026-01-01T00:00:00.000Z", "sent")])
    assert list(Ledger(tmp_path / "l.json").unrecovered()) == ["i-9"]


def test_misses_are_kept_per_run(tmp_path):
    ledger = Ledger(tmp_path / "l.json")
    ledger.record(
        [
            Injection("", "2026-01-01T00:00:00.000Z", "refused", error="no"),
            Injection("i-1", "2026-01-01T00:00:01.000Z", "failed", error="Throttling"),
            Injection("i-2", "2026-01-01T00:00:01.000Z", "failed", run_id="other"),
        ]
    )
    assert [e.error for e in ledger.misses(RUN_ID)] == ["no", "Throttling"]
    assert ledger.latest() == {}
