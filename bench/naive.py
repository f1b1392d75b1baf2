"""The naive way to time a fleet's recovery from an NMI: the bench's baseline.

What a team writes by hand with plain boto3: find the instances by tag, read each one's boot
id, send each one the interrupt, then every ``--interval`` seconds ask every instance not yet
back, one at a time, for its status (DescribeInstanceStatus, one id) and its boot id
(SendCommand, one id; the answer read once with GetCommandInvocation a second later). An
instance is back when its status checks are ok and its boot id changed; its recovery time is
the moment the poll read that answer minus the moment its NMI was sent.

Run by ``bench/run.py`` as its own process (its peak RSS is measured), against the lab the
environment points at (``AWS_ENDPOINT_URL``). Writes what it saw as JSON to ``--out``.
It is not part of the extension and not a test.
"""

import argparse
import json
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

T = TypeVar("T")
R = TypeVar("R")

# Works on a real instance and in a simulated guest of the lab (its commands run in its own tree).
IDENTITY = "cat /proc/sys/kernel/random/boot_id"
DELIVERY_TIMEOUT = 30  # seconds SSM keeps a command for an offline agent: the least SSM takes


class Naive:
    """The baseline's clients, its pool of workers and how long it waits for an answer."""

    def __init__(self, workers: int, answer_wait: float):
        config = Config(max_pool_connections=workers)
        self.ec2 = boto3.client("ec2", config=config)
        self.ssm = boto3.client("ssm", config=config)
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.answer_wait = answer_wait

    def each(self, call: Callable[[T], R], items: Iterable[T]) -> List[R]:
        return list(self.pool.map(call, items))

    def targets(self, tags: Dict[str, str]) -> List[str]:
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        filters.append({"Name": "instance-state-name", "Values": ["running"]})
        ids: List[str] = []
        for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                ids += [i["InstanceId"] for i in reservation["Instances"]]
        return sorted(ids)

    def status_ok(self, instance_id: str) -> bool:
        found = self.ec2.describe_instance_status(InstanceIds=[instance_id], IncludeAllInstances=True)
        statuses = found["InstanceStatuses"]
        return bool(statuses) and (
            statuses[0]["InstanceState"]["Name"] == "running"
            and statuses[0]["InstanceStatus"]["Status"] == "ok"
            and statuses[0]["SystemStatus"]["Status"] == "ok"
        )

    def send_identity(self, instance_id: str) -> str:
        answer = self.ssm.send_command(
            DocumentName="AWS-RunShellScript",
            InstanceIds=[instance_id],
            Parameters={"commands": [IDENTITY], "executionTimeout": ["30"]},
            TimeoutSeconds=DELIVERY_TIMEOUT,
        )
        return str(answer["Command"]["CommandId"])

    def read(self, instance_id: str, command_id: str) -> Dict[str, Any] | None:
        """The invocation now, or None while SSM does not know it yet."""
        try:
            return self.ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvocationDoesNotExist":
                return None
            raise

    def answers(self, sent: Dict[str, str]) -> Dict[str, tuple[float, str]]:
        """``answer_wait`` seconds after the last send, read each command's answer once:
        (when it was read, the boot id) per instance whose command succeeded by then."""
        time.sleep(self.answer_wait)
        items = list(sent.items())
        seen = self.each(lambda item: (self.read(*item), time.time()), items)
        return {
            instance_id: (at, inv["StandardOutputContent"].strip())
            for (instance_id, _), (inv, at) in zip(items, seen, strict=True)
            if inv is not None and inv["Status"] == "Success"
        }

    def boot_ids(self, ids: List[str], timeout: float = 120.0) -> Dict[str, str]:
        """Each instance's boot id now (before the NMI): read until every one answered."""
        sent = dict(zip(ids, self.each(self.send_identity, ids), strict=True))
        found: Dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(sent) and time.monotonic() < deadline:
            answered = self.answers({i: c for i, c in sent.items() if i not in found})
            found.update({i: boot for i, (_, boot) in answered.items()})
        return found


def watch(
    naive: Naive,
    before: Dict[str, str],
    nmi_at: Dict[str, float],
    interval: float,
    timeout: float,
    polls: List[Dict[str, Any]],
) -> Dict[str, float]:
    """Poll every ``interval`` seconds until every instance is back or ``timeout`` passed;
    the time each was seen back."""
    back: Dict[str, float] = {}
    start = time.monotonic()
    while len(back) < len(nmi_at) and time.monotonic() - start < timeout:
        began, began_at = time.monotonic(), time.time()
        pending = sorted(i for i in nmi_at if i not in back)

        def look(instance_id: str) -> tuple[bool, str]:
            return naive.status_ok(instance_id), naive.send_identity(instance_id)

        looked = dict(zip(pending, naive.each(look, pending), strict=True))
        seen = naive.answers({i: command for i, (_, command) in looked.items()})
        for i, (at, boot) in seen.items():
            if looked[i][0] and boot and boot != before.get(i):
                back[i] = at
        polls.append({"start": began_at, "end": time.time(), "pending": len(pending), "back": len(back)})
        time.sleep(max(0.0, interval - (time.monotonic() - began)))
    return back


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", action="append", default=[], help="KEY=VALUE the targets carry")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--answer-wait", type=float, default=1.0, help="seconds from send to read")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    tags = dict(t.split("=", 1) for t in args.tag)

    naive = Naive(args.workers, args.answer_wait)
    marks: Dict[str, float] = {"start": time.time()}
    ids = naive.targets(tags)
    before = naive.boot_ids(ids)
    marks["nmi_start"] = time.time()

    def interrupt(instance_id: str) -> float:
        at = time.time()
        naive.ec2.send_diagnostic_interrupt(InstanceId=instance_id)
        return at

    nmi_at = dict(zip(ids, naive.each(interrupt, ids), strict=True))
    marks["nmi_end"] = marks["watch_start"] = time.time()
    polls: List[Dict[str, Any]] = []
    back = watch(naive, before, nmi_at, args.interval, args.timeout, polls)
    marks["verdict"] = time.time()
    naive.pool.shutdown()
    result = {
        "instances": {
            i: {
                "nmi_at": nmi_at[i],
                "back_at": back.get(i),
                "seconds": round(back[i] - nmi_at[i], 3) if i in back else None,
                "boot_id_before": before.get(i, ""),
            }
            for i in ids
        },
        "marks": marks,
        "polls": polls,
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    with open(args.out, "w") as out:
        json.dump(result, out, indent=1)
    return 0 if len(back) == len(ids) else 1


if __name__ == "__main__":
    sys.exit(main())
