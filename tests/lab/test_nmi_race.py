"""Two send_nmi processes started at the same moment against one lab and one ledger: the ledger's
lock makes them decide in turn, so one instance is never hit twice and max_instances holds
across them. The targets hang after their NMI (no kdump, no panic reboot), so whatever timing the
two processes get, a second hit can only come from a missed check."""

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import List, Tuple

from conftest import ROOT, opted_in

ROUNDS = 10
SENDER = r"""
import sys, time
from pathlib import Path
from chaosec2panic.actions import send_nmi

go, ready, ids, cap = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4])
ready.touch()
while not go.exists():
    time.sleep(0.001)
try:
    send_nmi(instance_ids=ids, max_instances=cap, allow_unarmed=True)
    print("SENT")
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}".replace("\n", " | "))
"""


def race(lab, tmp_path: Path, senders: List[Tuple[Path, List[str]]], cap: int) -> List[str]:
    """Start one sender per (ledger, instance ids), let them all go at once, and return the
    last line each printed."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(len(senders))]
    started = [
        subprocess.Popen(
            [sys.executable, "-c", SENDER, str(go), str(r), ",".join(ids), str(cap)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **lab.server.environment(), "CHAOSEC2PANIC_LEDGER": str(ledger)},
            cwd=ROOT,
        )
        for r, (ledger, ids) in zip(ready, senders, strict=True)
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in started), [p.communicate()[0] for p in started]
        time.sleep(0.01)
    go.touch()
    return [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in started]


def test_two_runs_at_once_never_hit_one_instance_twice(make_lab, tmp_path):
    lab = make_lab([opted_in("hang", count=ROUNDS, kdump=False, panic_timeout=0)])
    targets = [lab.id(f"hang-{n}") for n in range(1, ROUNDS + 1)]
    # Each instance is raced for by two runs sharing a ledger; all the races go at once.
    said = race(lab, tmp_path, [(tmp_path / f"ledger-{i}.json", [i]) for i in targets for _ in (1, 2)], 1)
    nmis = Counter(e["instance_id"] for e in lab.events("nmi"))
    assert nmis == {i: 1 for i in targets}, said
    for first, second in zip(said[::2], said[1::2], strict=True):
        assert sorted(s.split(":")[0] for s in (first, second)) == ["Refused", "SENT"], (first, second)
        assert "hit before and has not come back" in max(first, second, key=len)


def test_two_runs_at_once_each_within_max_instances_do_not_add_up_past_it(make_lab, tmp_path):
    pairs = 3
    lab = make_lab([opted_in("hang", count=2 * pairs, kdump=False, panic_timeout=0)])
    targets = [lab.id(f"hang-{n}") for n in range(1, 2 * pairs + 1)]
    # Two runs share a ledger, each with max_instances=1 and an instance of its own.
    said = race(lab, tmp_path, [(tmp_path / f"ledger-{n // 2}.json", [i]) for n, i in enumerate(targets)], 1)
    hit = {e["instance_id"] for e in lab.events("nmi")}
    for n in range(pairs):
        pair, answers = targets[2 * n : 2 * n + 2], said[2 * n : 2 * n + 2]
        assert len(hit & set(pair)) == 1, answers
        assert sorted(s.split(":")[0] for s in answers) == ["Refused", "SENT"], answers
        assert "max_instances=1 caps the instances down at once" in max(answers, key=len)
