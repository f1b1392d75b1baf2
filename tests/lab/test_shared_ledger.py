"""The shared ledger on DynamoDB, over real boto3 against the lab's DynamoDB (moto's, one request at
a time as AWS serializes transactions): the file ledger's contract, a wrong item refused and never
written over, and runners that share nothing but the table (each its own ledger file and state
directory) hitting an instance exactly once between them, as separate OS processes."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List

import boto3
import pytest
from conftest import CHAOS, ROOT, opted_in
from test_write_ahead import HoldingProxy

from chaosec2panic.actions import send_nmi
from chaosec2panic.errors import Refused
from chaosec2panic.iam import policy
from chaosec2panic.ledger import RUN_ID, Injection, Ledger, LedgerError
from chaosec2panic.ledger.dynamodb import DynamoDbLedger, create_table

TABLE = "chaos-ledger"
ROUNDS = 20
CHAOS_ROUNDS = 20  # two full `chaos run`s a round, about 7 s on an idle machine
CLI = str(Path(sys.executable).with_name("chaosec2panic"))
# One runner: at round n, when the test says go, one NMI to its n-th instance within the n-th cap.
RUNNER = r"""
import sys, time
from pathlib import Path
from chaosec2panic.actions import send_nmi

work, ids, caps, me = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(","), sys.argv[4]
for n, (target, cap) in enumerate(zip(ids, caps)):
    (work / f"ready-{me}-{n}").touch()
    while not (work / f"go-{n}").exists():
        time.sleep(0.001)
    try:
        send_nmi(instance_ids=[target], max_instances=int(cap), allow_unarmed=True)
        said = "SENT"
    except Exception as exc:
        said = f"{type(exc).__name__}: {exc}".replace("\n", " | ")
    (work / f"saying-{me}-{n}").write_text(said)
    (work / f"saying-{me}-{n}").rename(work / f"said-{me}-{n}")  # whole, or not there
"""


def shared_table(lab) -> Dict[str, str]:
    """The table made in the lab, and the environment of a runner that shares only it."""
    create_table(boto3.client("dynamodb"), TABLE)
    return {**lab.server.environment(), "CHAOSEC2PANIC_LEDGER_TABLE": TABLE}


def ledger() -> DynamoDbLedger:
    found = Ledger.of({"chaosec2panic_ledger_table": TABLE})
    assert isinstance(found, DynamoDbLedger)
    return found


def test_create_table_makes_an_on_demand_table_with_ttl_once(make_lab):
    lab = make_lab([opted_in("web")])
    env = {**os.environ, **lab.server.environment()}
    command = [CLI, "ledger", "create-table", TABLE, "--region", "eu-west-1", "--endpoint", lab.server.url]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"dynamodb table {TABLE} in eu-west-1: made, TTL on expires_at"
    assert again.returncode == 0 and "already there" in again.stdout, again.stderr
    db = boto3.client("dynamodb", region_name="eu-west-1")
    assert (
        db.describe_table(TableName=TABLE)["Table"]["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    )
    ttl = db.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")


def test_the_table_keeps_the_file_ledgers_contract(make_lab, monkeypatch):
    lab = make_lab([opted_in("web")])
    shared_table(lab)
    made = {c for c in lab.lab.calls if c.startswith("dynamodb:")}
    monkeypatch.setenv("CHAOSEC2PANIC_LEDGER_TABLE", TABLE)
    shared = Ledger.of({})  # the environment names the table, the file is not used
    assert shared.where == f"dynamodb table {TABLE} in us-east-1"
    shared.record(
        [
            Injection("i-1", "2026-01-01T00:00:00.000Z", "sent"),
            Injection("i-2", "2026-01-01T00:00:00.000Z", "failed", error="Throttling"),
            Injection("", "2026-01-01T00:00:01.000Z", "refused", error="no"),
        ]
    )
    shared.record([Injection("i-1", "2026-01-01T00:05:00.000Z", "unknown", run_id="other")])
    assert ledger().latest()["i-1"].sent_at.endswith("05:00.000Z")  # another reader sees it all
    assert ledger().latest(RUN_ID)["i-1"].sent_at.endswith("00:00.000Z")
    assert [e.error for e in ledger().misses(RUN_ID)] == ["Throttling", "no"]
    assert list(ledger().unrecovered()) == ["i-1"]
    ledger().update({("i-1", "2026-01-01T00:05:00.000Z"): {"recovered_at": "2026-01-01T00:06:00.000Z"}})
    assert shared.unrecovered() == {}
    # What a ledger calls, for the policy: reads, and transactions (of puts and updates).
    used = {c for c in lab.lab.calls if c.startswith("dynamodb:")} - made
    assert used == {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:TransactWriteItems"}
    [item] = boto3.client("dynamodb").query(
        TableName=TABLE,
        KeyConditionExpression="ledger = :l AND seq = :s",
        ExpressionAttributeValues={":l": {"S": "injections"}, ":s": {"N": "4"}},
        ConsistentRead=True,
    )["Items"]
    assert json.loads(item["entry"]["S"])["recovered_at"] == "2026-01-01T00:06:00.000Z"
    assert item["expires_at"]["N"] == str(1767225900 + 90 * 86400)  # sent_at + the TTL's 90 days


def test_an_item_of_the_wrong_shape_is_an_error_and_never_written_over(make_lab):
    lab = make_lab([opted_in("web")])
    shared_table(lab)
    ledger().record([Injection("i-1", "2026-01-01T00:00:00.000Z", "sent")])
    db = boto3.client("dynamodb")
    bad = {"ledger": {"S": "injections"}, "seq": {"N": "2"}, "entry": {"S": '{"instance_id": "i-2"}'}}
    db.put_item(TableName=TABLE, Item=bad)
    before = db.scan(TableName=TABLE, ConsistentRead=True)["Items"]
    for attempt in (
        ledger().entries,
        lambda: ledger().record([Injection("i-3", "2026-01-01T00:00:00.000Z", "sent")]),
        lambda: ledger().update({("i-1", "2026-01-01T00:00:00.000Z"): {"recovered_at": ""}}),
    ):
        with pytest.raises(LedgerError) as wrong:
            attempt()
        assert f"dynamodb table {TABLE} in us-east-1" in str(wrong.value)
        assert "at seq 2" in str(wrong.value) and "lacks ['sent_at', 'outcome']" in str(wrong.value)
    assert db.scan(TableName=TABLE, ConsistentRead=True)["Items"] == before


def test_a_ledger_larger_than_a_page_is_read_whole(make_lab):
    lab = make_lab([opted_in("web")])
    shared_table(lab)
    tail = "x" * 200_000  # a console tail: five entries pass the 1 MB a Query answers at once
    ledger().record(
        [Injection(f"i-{n}", "2026-01-01T00:00:00.000Z", "sent", console_anchor=tail) for n in range(8)]
    )
    queries = lab.lab.calls["dynamodb:Query"]
    assert [e.instance_id for e in ledger().entries()] == [f"i-{n}" for n in range(8)]
    assert lab.lab.calls["dynamodb:Query"] - queries >= 2


def test_more_entries_than_one_transaction_holds_are_refused_unwritten(make_lab):
    lab = make_lab([opted_in("web")])
    shared_table(lab)
    batch = [Injection(f"i-{n}", "2026-01-01T00:00:00.000Z", "pending") for n in range(100)]
    with pytest.raises(LedgerError, match=r"at most 99 entries at once .* \(batch_size <= 99\)"):
        ledger().admit(lambda entries: batch)
    assert ledger().entries() == []
    ledger().admit(lambda entries: batch[:99])
    assert len(ledger().entries()) == 99


def test_a_missing_table_says_how_to_make_it(make_lab):
    make_lab([opted_in("web")])
    with pytest.raises(LedgerError, match=f"chaosec2panic ledger create-table {TABLE} --region us-east-1"):
        ledger().entries()


def race(lab, tmp_path: Path, targets: Dict[str, List[str]], caps: List[int]) -> List[List[str]]:
    """One runner per name in ``targets``, each with a ledger file and state directory of its
    own and the shared table; at round n all go at once on their n-th instance, with
    max_instances ``caps[n]``. What each said, by round."""
    env = shared_table(lab)
    runners = {
        me: subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(tmp_path), ",".join(ids), ",".join(map(str, caps)), me],
            env={
                **os.environ,
                **env,
                "CHAOSEC2PANIC_LEDGER": str(tmp_path / f"ledger-{me}.json"),
                "XDG_STATE_HOME": str(tmp_path / f"state-{me}"),
            },
            cwd=ROOT,
        )
        for me, ids in targets.items()
    }
    said = []
    for n in range(len(next(iter(targets.values())))):
        for stage in ("ready", "said"):
            deadline = time.monotonic() + 120
            while not all((tmp_path / f"{stage}-{me}-{n}").exists() for me in runners):
                assert all(p.poll() is None for p in runners.values()) or stage == "said", "a runner died"
                assert time.monotonic() < deadline, f"round {n}: no {stage} from every runner"
                time.sleep(0.005)
            if stage == "ready":
                (tmp_path / f"go-{n}").touch()
        said.append([(tmp_path / f"said-{me}-{n}").read_text() for me in runners])
    for p in runners.values():
        assert p.wait(60) == 0
    return said


def test_two_runners_on_one_instance_land_exactly_one_nmi_round_after_round(make_lab, tmp_path):
    lab = make_lab([opted_in("hang", count=ROUNDS, kdump=False, panic_timeout=0)])
    targets = [lab.id(f"hang-{n}") for n in range(1, ROUNDS + 1)]
    # The hung instances stay down: a cap of ROUNDS leaves the ledger's "hit and not back" to refuse.
    said = race(lab, tmp_path, {"a": targets, "b": targets}, [ROUNDS] * ROUNDS)
    assert Counter(e["instance_id"] for e in lab.events("nmi")) == {i: 1 for i in targets}, said
    for answers in said:
        assert sorted(s.split(":")[0] for s in answers) == ["Refused", "SENT"], answers
        assert "hit before and has not come back" in max(answers, key=len)
    entries = ledger().entries()  # one hit each and one refusal each, none lost
    assert [e.instance_id for e in entries if e.hit] == targets
    assert [e.outcome for e in entries].count("refused") == ROUNDS


def test_two_runners_each_within_max_instances_do_not_add_up_past_it(make_lab, tmp_path):
    rounds = 3
    lab = make_lab([opted_in("hang", count=2 * rounds, kdump=False, panic_timeout=0)])
    targets = [lab.id(f"hang-{n}") for n in range(1, 2 * rounds + 1)]
    # Round n (from 0): n instances are down, and each runner's own instance would make n+2.
    said = race(lab, tmp_path, {"a": targets[::2], "b": targets[1::2]}, [n + 1 for n in range(rounds)])
    hit = {e["instance_id"] for e in lab.events("nmi")}
    for n, answers in enumerate(said):
        assert len(hit & {targets[2 * n], targets[2 * n + 1]}) == 1, said
        assert sorted(s.split(":")[0] for s in answers) == ["Refused", "SENT"], answers
        assert f"max_instances={n + 1} caps the instances down at once" in max(answers, key=len)


def test_a_runner_killed_after_its_nmi_leaves_a_pending_item_another_process_recovers(make_lab, tmp_path):
    lab = make_lab([opted_in("hang", kdump=False, panic_timeout=0)])
    hang = lab.id("hang")
    env = shared_table(lab)
    proxy = HoldingProxy(lab.server.url)
    script = (
        f"from chaosec2panic.actions import send_nmi; send_nmi(instance_ids=['{hang}'], allow_unarmed=True)"
    )
    runner = {
        **os.environ,
        **env,
        "AWS_ENDPOINT_URL": proxy.url,
        "CHAOSEC2PANIC_LEDGER": str(tmp_path / "a.json"),
    }
    sender = subprocess.Popen([sys.executable, "-c", script], env=runner, cwd=ROOT)
    try:
        assert proxy.held.wait(120), "the NMI request never came"
        [entry] = ledger().entries()  # in the table before the request left
        assert (entry.instance_id, entry.outcome) == (hang, "pending")
        sender.kill()
        assert sender.wait(30) == -9
    finally:
        proxy.close()
    with pytest.raises(Refused, match="never settled"):  # another runner, with a file of its own
        send_nmi(
            instance_ids=[hang],
            allow_unarmed=True,
            configuration=lab.configuration(chaosec2panic_ledger_table=TABLE),
        )
    recover = ["recover", "--ledger-table", TABLE, "--timeout", "30", "--poll-interval", "0.1"]
    done = subprocess.run(
        [sys.executable, "-m", "chaosec2panic", *recover],
        capture_output=True,
        text=True,
        env={**os.environ, **lab.server.environment(), "CHAOSEC2PANIC_LEDGER": str(tmp_path / "c.json")},
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["instances"] == {hang: {"actions": ["reboot"], "recovered": True}}
    assert lab.nmi_names() == ["hang"]
    assert not (tmp_path / "c.json").exists()  # the table was the ledger, not a file


def chaos_runs(env: Dict[str, str], tmp_path: Path, round_: int) -> List[Dict]:
    """crash-capture.yaml run by two `chaos run` processes started together, each with a ledger
    file and a state directory of its own; their journals."""
    runs = []
    for me in ("a", "b"):
        journal = tmp_path / f"journal-{round_}-{me}.json"
        own = {
            "CHAOSEC2PANIC_LEDGER": str(tmp_path / f"ledger-{me}.json"),
            "XDG_STATE_HOME": str(tmp_path / f"state-{me}"),
            "CHAOSEC2PANIC_POLL_INTERVAL": "0.1",
        }
        command = [CHAOS, "--no-log-file", "run", "--rollback-strategy", "always", "--journal-path"]
        run = subprocess.Popen(
            [*command, str(journal), str(ROOT / "experiments" / "crash-capture.yaml")],
            env={**os.environ, **env, **own},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        runs.append((journal, run))
    for _, run in runs:
        run.wait(600)
    return [json.loads(journal.read_text()) for journal, _ in runs]


def test_two_chaos_runs_at_one_instance_land_one_nmi_each_time(make_lab, tmp_path):
    lab = make_lab([opted_in("canary", tags={"role": "crash-capture"})], time_scale=0.1)
    env = shared_table(lab)
    for n in range(CHAOS_ROUNDS):  # each round ends with the canary back: both runs waited for it
        journals = chaos_runs(env, tmp_path, n)
        assert lab.nmi_names() == ["canary"] * (n + 1), journals
        sends = [r for j in journals for r in j["run"] if r["activity"]["name"] == "send-nmi-to-one-target"]
        # The later run is refused by the ledger, or sends nothing when it finds the canary down.
        assert [r["status"] for r in sends].count("succeeded") == 1, sends


def test_an_admit_that_lost_the_race_decides_again_on_what_won(make_lab):
    lab = make_lab([opted_in("web")])
    shared_table(lab)
    seen: List[List[str]] = []

    def decide(entries: List[Injection]) -> List[Injection]:
        seen.append([e.instance_id for e in entries])
        if len(seen) == 1:  # another runner writes between this one's read and its write
            ledger().record([Injection("i-other", "2026-01-01T00:00:00.000Z", "pending")])
        return [Injection("i-mine", "2026-01-01T00:00:01.000Z", "pending")]

    assert [e.instance_id for e in ledger().admit(decide)] == ["i-mine"]
    assert seen == [[], ["i-other"]]
    assert [e.instance_id for e in ledger().entries()] == ["i-other", "i-mine"]


def test_an_admit_that_always_loses_fails_having_written_nothing(make_lab):
    lab = make_lab([opted_in("web")])
    shared_table(lab)

    def decide(entries: List[Injection]) -> List[Injection]:
        ledger().record([Injection("", "2026-01-01T00:00:00.000Z", "refused")])
        return [Injection("i-mine", "2026-01-01T00:00:01.000Z", "pending")]

    with pytest.raises(LedgerError, match="changed under each of 20 attempts"):
        ledger().admit(decide)
    assert {e.outcome for e in ledger().entries()} == {"refused"}


def test_the_policy_allows_the_ledgers_calls_on_its_table_only():
    [statement] = [
        s for s in policy(["send_nmi"], ledger_table=TABLE)["Statement"] if s["Sid"] == "SharedLedger"
    ]
    assert statement["Resource"] == f"arn:aws:dynamodb:*:*:table/{TABLE}"
    # The calls test_the_table_keeps_the_file_ledgers_contract saw, a transaction as its parts.
    assert set(statement["Action"]) == {
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    }
    assert not any(s["Sid"] == "SharedLedger" for s in policy(["send_nmi"])["Statement"])
