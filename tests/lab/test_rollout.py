"""Rolling rollout: batches, a recovery wait (or a pause) between them, and halts."""

import threading
import time

import boto3
import pytest
from conftest import make_alarm, opted_in

from chaosec2panic.actions import send_nmi
from chaosec2panic.errors import InvalidRequest
from chaosec2panic.targets import batches


def test_batches_by_count_and_percent():
    ids = [f"i-{n:08x}" for n in range(5)]
    assert batches(ids, 2, None) == [ids[0:2], ids[2:4], ids[4:5]]
    assert batches(ids, None, 40) == [ids[0:2], ids[2:4], ids[4:5]]
    assert batches(ids, None, None) == [ids]
    assert batches(ids, None, 1) == [[i] for i in ids]


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        ({"batch_size": 0}, "batch_size must be"),
        ({"batch_percent": 0}, "batch_percent must be"),
        ({"batch_percent": 120}, "batch_percent must be"),
        ({"batch_size": 1, "batch_percent": 50}, "not both"),
        ({"batch_size": 1, "batch_pause": -1}, "batch_pause must be"),
    ],
)
def test_bad_rollouts_are_refused_before_anything_is_sent(make_lab, arguments, needle):
    lab = make_lab([opted_in("web", count=2, tags={"role": "web"})])
    with pytest.raises(InvalidRequest, match=needle):
        send_nmi(tags={"role": "web"}, max_instances=2, configuration=lab.configuration(), **arguments)
    assert lab.nmi_names() == []


def by_batch(result: dict) -> dict:
    found: dict = {}
    for record in result["injections"]:
        found.setdefault(record["batch"], []).append((record["instance_id"], record["outcome"]))
    return found


def test_each_batch_waits_for_the_previous_one_to_be_back(make_lab):
    lab = make_lab([opted_in("web", count=4, tags={"role": "web"})])
    result = send_nmi(tags={"role": "web"}, max_instances=4, batch_size=2, configuration=lab.configuration())
    assert result["halted"] is None and [len(b) for b in result["batches"]] == [2, 2]
    first, second = result["batches"]
    names = {i: lab.lab.guests[i].spec.name for i in first + second}
    last_back = max(e["epoch"] for e in lab.events("recovered") if e["instance_id"] in first)
    second_nmis = [e["epoch"] for e in lab.events("nmi") if e["instance_id"] in second]
    assert len(second_nmis) == 2 and min(second_nmis) >= last_back
    assert sorted(lab.nmi_names()) == sorted(names.values())
    assert {o for _, o in by_batch(result)[2]} == {"sent"}


def test_a_batch_that_misses_its_slo_halts_the_rollout_and_the_rest_are_never_hit(make_lab):
    lab = make_lab([opted_in("hang", count=3, kdump=False, panic_timeout=0, tags={"role": "web"})])
    result = send_nmi(
        tags={"role": "web"},
        max_instances=3,
        batch_size=1,
        allow_unarmed=True,
        batch_slo=2,
        configuration=lab.configuration(),
    )
    [first], *rest = result["batches"]
    assert result["halted"] == f"after batch 1: not back within the batch SLO of 2s: {first}"
    assert [e["instance_id"] for e in lab.events("nmi")] == [first]
    assert by_batch(result) == {
        1: [(first, "sent")],
        2: [(rest[0][0], "skipped")],
        3: [(rest[1][0], "skipped")],
    }


def test_a_stop_alarm_between_batches_halts_the_rollout(make_lab):
    lab = make_lab([opted_in("web", count=3, tags={"role": "web"})])
    cw = boto3.client("cloudwatch")
    make_alarm("errors")

    def fire_after_the_first_nmi() -> None:
        while not lab.events("nmi"):
            time.sleep(0.05)
        cw.set_alarm_state(AlarmName="errors", StateValue="ALARM", StateReason="5xx above threshold")

    firing = threading.Thread(target=fire_after_the_first_nmi, daemon=True)
    firing.start()
    result = send_nmi(
        tags={"role": "web"},
        max_instances=3,
        batch_size=1,
        batch_pause=1.0,
        configuration=lab.configuration(chaosec2panic_stop_alarms={"names": ["errors"]}),
    )
    assert result["halted"].startswith("before batch 2: stop condition")
    assert "alarm errors is in ALARM" in result["halted"]
    assert len(lab.nmi_names()) == 1
    assert [o for _, o in by_batch(result)[2] + by_batch(result)[3]] == ["skipped", "skipped"]


def test_a_batch_the_ledger_refuses_under_its_lock_halts_the_rollout(make_lab):
    lab = make_lab(
        [
            opted_in("hang", count=3, kdump=False, panic_timeout=0, tags={"role": "web"}),
            opted_in("other", kdump=False, panic_timeout=0),
        ]
    )
    conf = lab.configuration()

    def another_run() -> None:
        deadline = time.monotonic() + 60
        while not lab.events("nmi") and time.monotonic() < deadline:
            time.sleep(0.05)
        send_nmi(instance_ids=[lab.id("other")], max_instances=5, allow_unarmed=True, configuration=conf)

    # Another run hits "other" during the first pause: the third batch would make four instances
    # down at once from the NMIs in the ledger, one more than this rollout's max_instances.
    other = threading.Thread(target=another_run, daemon=True)
    other.start()
    result = send_nmi(
        tags={"role": "web"},
        max_instances=3,
        batch_size=1,
        batch_pause=3.0,
        allow_unarmed=True,
        configuration=conf,
    )
    other.join(30)
    assert result["halted"].startswith("before batch 3: max_instances=3 caps the instances down at once")
    first_two = [lab.lab.guests[i].spec.name for batch in result["batches"][:2] for i in batch]
    assert sorted(lab.nmi_names()) == sorted([*first_two, "other"])
    assert [o for _, o in by_batch(result)[3]] == ["skipped"]
