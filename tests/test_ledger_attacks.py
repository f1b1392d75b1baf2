"""The ledger attacked: wrong shapes, names that collide with its own files, symbolic and hard
links planted beside it, FIFOs, and who else may read it. It must refuse, name the file and the
entry, and leave every byte where it was."""

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT

from chaosec2panic.errors import Ec2PanicError
from chaosec2panic.ledger import RUN_ID, Injection, Ledger
from chaosec2panic.rollbacks import recover_instances
from chaosec2panic.settings import settings

INSTANCE = "i-0123456789abcdef0"
SENT = "2026-01-01T00:00:00.000Z"
GOOD = {"instance_id": INSTANCE, "sent_at": SENT, "outcome": "sent"}
DEEP = 100_000


def ledger_of(entries) -> str:
    return json.dumps({"injections": entries})


WRONG_SHAPES = [
    ("[]", "it is a list, not an object"),
    ('[["injections", []]]', "it is a list, not an object"),  # dict() of it would be a ledger
    ("null", "it is null, not an object"),
    ('{"injections": {}}', "injections is an object, not a list"),
    ('{"injections": [], "owner": "me"}', "unknown keys ['owner']"),
    (ledger_of([1]), "entry 0 is a number, not an object"),
    (ledger_of([GOOD, {**GOOD, "extra": 1}]), f"entry 1 ({INSTANCE} at {SENT}) has unknown keys ['extra']"),
    (
        ledger_of([{"instance_id": INSTANCE, "sent_at": SENT}]),
        "entry 0 (i-0123456789abcdef0 at 2026-01-01T00:00:00.000Z) lacks ['outcome']",
    ),
    (ledger_of([{**GOOD, "outcome": "maybe"}]), "outcome is 'maybe', not one of pending, sent"),
    (ledger_of([{**GOOD, "batch": "1"}]), "batch is '1', not a whole number >= 1"),
    (ledger_of([{**GOOD, "batch": True}]), "batch is True, not a whole number >= 1"),
    (ledger_of([{**GOOD, "sent_at": 5}]), "sent_at is 5, not a UTC time"),
    (ledger_of([{**GOOD, "sent_at": SENT + "\n"}]), "not a UTC time"),
    (ledger_of([{**GOOD, "recovered_at": "soon"}]), "recovered_at is 'soon', not a UTC time"),
    (ledger_of([{**GOOD, "timeline": []}]), "timeline is a list, not an object"),
    (ledger_of([{**GOOD, "timeline": {"milestones": 1}}]), "timeline holds ['milestones'], not milestones"),
    (ledger_of([{**GOOD, "rollback": "reboot"}]), "rollback is a string, not a list of strings"),
    (ledger_of([{**GOOD, "error": None}]), "error is null, not a string"),
    (ledger_of([{**GOOD, "instance_id": ""}]), "instance_id is empty"),
    ('{"injections": [' + "[" * DEEP + "]" * DEEP + "]}", "RecursionError"),
    ('{"injections": [', "is not readable JSON"),
    ("", "is not readable JSON"),
]


def recorded(path: Path) -> None:
    Ledger(path).record([Injection(INSTANCE, "2026-01-02T00:00:00.000Z", "sent")])


@pytest.mark.parametrize(("text", "needle"), WRONG_SHAPES)
def test_a_wrong_shaped_ledger_is_refused_naming_the_file_and_the_entry_and_never_overwritten(
    tmp_path, text, needle
):
    path = tmp_path / "ledger.json"
    path.write_text(text)
    for attempt in (Ledger(path).entries, Ledger(path).unrecovered, lambda: recorded(path)):
        with pytest.raises(Ec2PanicError) as refused:
            attempt()
        assert str(path) in str(refused.value) and needle in str(refused.value)
        assert "Nothing was changed" in str(refused.value)
    assert path.read_text() == text


def test_a_rollback_on_a_wrong_shaped_ledger_fails_with_the_reason_not_a_type_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    path = tmp_path / "ledger.json"
    path.write_text(ledger_of([{"instance_id": INSTANCE, "sent_at": SENT}]))
    with pytest.raises(Ec2PanicError, match=r"entry 0 .* lacks \['outcome'\]"):
        recover_instances(configuration={"chaosec2panic_ledger_path": str(path)})


@pytest.mark.parametrize(
    "text", ["[]", ledger_of([{"instance_id": INSTANCE, "sent_at": SENT}]), "[" * DEEP + "]" * DEEP]
)
def test_recover_on_a_wrong_shaped_ledger_says_why_without_a_traceback(tmp_path, text):
    path = tmp_path / "ledger.json"
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "chaosec2panic", "recover", "--ledger", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AWS_REGION": "us-east-1"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"chaosec2panic: {path}") and "Traceback" not in done.stderr
    assert path.read_text() == text


@pytest.mark.parametrize("suffix", [".lock", ".tmp"])
def test_a_ledger_named_like_its_own_lock_or_temporary_file_is_refused_and_left_whole(tmp_path, suffix):
    path = tmp_path / f"ledger{suffix}"
    text = ledger_of([GOOD])
    path.write_text(text)
    for attempt in (
        lambda: Ledger(path).record([Injection(INSTANCE, "2026-01-02T00:00:00.000Z", "sent")]),
        lambda: Ledger.of({"chaosec2panic_ledger_path": str(path)}).entries(),
    ):
        with pytest.raises(Ec2PanicError, match=f"may not end in \\{suffix}"):
            attempt()
    assert path.read_text() == text


@pytest.mark.parametrize("beside", [".tmp", ".lock"])
def test_a_symbolic_link_planted_beside_the_ledger_is_not_followed(tmp_path, beside):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "ledger.json"
    path.with_suffix(beside).symlink_to(victim)
    with pytest.raises(Ec2PanicError, match=str(path.with_suffix(beside))):
        recorded(path)
    assert victim.read_text() == "precious" and not path.exists()
    assert path.with_suffix(beside).is_symlink()


def test_a_dangling_lock_link_creates_nothing_where_it_points(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = tmp_path / "ledger.json"
    path.with_suffix(".lock").symlink_to(elsewhere / "planted")
    with pytest.raises(Ec2PanicError, match="symbolic link"):
        recorded(path)
    assert list(elsewhere.iterdir()) == []


def test_a_hard_link_left_as_the_temporary_file_is_replaced_not_written_into(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "ledger.json"
    os.link(victim, path.with_suffix(".tmp"))
    recorded(path)
    assert victim.read_text() == "precious"
    assert [e.instance_id for e in Ledger(path).entries()] == [INSTANCE]


def test_a_symlinked_ledger_is_refused_and_stays_a_link(tmp_path):
    target = tmp_path / "real.json"
    text = ledger_of([GOOD])
    target.write_text(text)
    path = tmp_path / "ledger.json"
    path.symlink_to(target)
    for attempt in (Ledger(path).entries, lambda: recorded(path)):
        with pytest.raises(Ec2PanicError, match="is a symbolic link, and chaosec2panic follows none"):
            attempt()
    assert path.is_symlink() and target.read_text() == text


def test_a_fifo_as_the_ledger_is_refused_at_once(tmp_path):
    path = tmp_path / "ledger.json"
    os.mkfifo(path)
    found = []
    reader = threading.Thread(target=lambda: found.append(_error_of(Ledger(path).entries)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():
        with open(path, "w"):  # let the blocked reader go before failing
            pass
    assert found and "not a regular file" in found[0]


def _error_of(call) -> str:
    try:
        call()
    except Ec2PanicError as exc:
        return str(exc)
    return "no error"


def test_the_ledger_and_its_lock_are_private_to_the_user(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "state" / "chaosec2panic" / "ledger.json"
        recorded(path)
        for made in (path, path.with_suffix(".lock"), path.parent):
            assert stat.S_IMODE(made.stat().st_mode) & 0o077 == 0, made
        path.chmod(0o644)  # written by an older version: private again once rewritten
        recorded(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_the_default_ledger_is_in_the_users_state_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("CHAOSEC2PANIC_LEDGER", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # the XDG spec: ignored
    assert settings({}).ledger_path == tmp_path / ".local" / "state" / "chaosec2panic" / "ledger.json"


def test_no_page_of_the_docs_puts_the_ledger_in_a_shared_directory():
    for page in (ROOT / "docs").rglob("*.md"):
        text = page.read_text()
        assert "/tmp/ledger" not in text and "LEDGER=/tmp" not in text, page


def test_a_pending_nmi_counts_as_a_hit_until_it_is_seen_back(tmp_path):
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.record([Injection(INSTANCE, SENT, "pending")])
    assert list(ledger.latest(RUN_ID)) == [INSTANCE] and list(ledger.unrecovered()) == [INSTANCE]
    assert ledger.misses(RUN_ID) == []
