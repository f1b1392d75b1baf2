"""Look at instances: EC2 status checks, SSM agents, which boot each one is in, and how each
hit instance comes back."""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from botocore.exceptions import ClientError

from . import guest
from .app import AppWatch
from .aws import DESCRIBE_STATUS_CHUNK, SSM_CHUNK, chunks, paginate
from .dumps import ConsoleFindings, console_findings
from .evidence import console_evidence, console_times, crashed_boot, recorded_evidence
from .guest.parsers import parse_report
from .ledger import Injection, Ledger
from .polling import Poll, poll
from .recovery import Boot, Observation, Timeline, Track, guest_boot, guest_seconds, now_iso, timeline
from .ssm import (
    TERMINAL,
    CommandResult,
    agent_status,
    completed_counts,
    read_commands,
    run_script,
    send_script,
)

__all__ = [
    "Arrivals",
    "console_after",
    "instance_status",
    "leave_running",
    "observe",
    "take_over",
    "watch_recovery",
]

logger = logging.getLogger("chaostoolkit")

FAST_INTERVAL = 0.5  # seconds between looks while an instance is about to change
MIN_DELIVERY = 30  # seconds SSM holds an identity command for an offline agent, at least
CONSOLE_READERS = 8  # GetConsoleOutput calls in flight at once
# A console keeps only its last 64 KiB: a distribution's capture boot, then its normal boot,
# push the capture kernel's lines out of it within a minute or two (a real Debian guest: shown
# from 10 s to 110 s after the NMI). So until its new boot answers or a capture kernel is seen,
# an instance's console is read every CONSOLE_EVERY seconds, at most CONSOLE_READS times.
CONSOLE_EVERY = 15.0
CONSOLE_READS = 12
# A boot time known only within more than REASK_ABOVE seconds (an answer held while the
# instance was down, from a clock not synchronised or found outside its window) is asked again
# while its agent is online, where a window is one round trip, up to REASKS times before the
# instance is judged back.
REASK_ABOVE = 1.0
REASKS = 3


def instance_status(ec2: Any, instance_ids: List[str]) -> Dict[str, Dict[str, str]]:
    """State and status checks of each instance, 100 ids per DescribeInstanceStatus call."""
    found: Dict[str, Dict[str, str]] = {}
    for batch in chunks(instance_ids, DESCRIBE_STATUS_CHUNK):
        for s in paginate(
            ec2, "describe_instance_status", "InstanceStatuses", InstanceIds=batch, IncludeAllInstances=True
        ):
            found[s["InstanceId"]] = {
                "state": s.get("InstanceState", {}).get("Name", "unknown"),
                "instance_status": s.get("InstanceStatus", {}).get("Status", "unknown"),
                "system_status": s.get("SystemStatus", {}).get("Status", "unknown"),
            }
    missing = {"state": "unknown", "instance_status": "unknown", "system_status": "unknown"}
    return {i: found.get(i, missing) for i in instance_ids}


def _status_ok(status: Mapping[str, str]) -> bool:
    return (
        status["state"] == "running" and status["instance_status"] == "ok" and status["system_status"] == "ok"
    )


def observe(
    ec2: Any, ssm: Any, platforms: Mapping[str, guest.Platform], read_boot: bool = True, timeout: int = 10
) -> Dict[str, Observation]:
    """One observation per instance; the boot is read (through SSM) only where it can answer."""
    ids = list(platforms)
    statuses = instance_status(ec2, ids)
    agents = agent_status(ssm, ids)
    reachable = {i: platforms[i] for i in ids if _status_ok(statuses[i]) and agents[i].online}
    boots = run_script(ssm, reachable, "identity", timeout=timeout) if read_boot and reachable else {}
    seen: Dict[str, Observation] = {}
    for i in ids:
        at = now_iso()
        detail = (
            f"state {statuses[i]['state']}, instance status {statuses[i]['instance_status']}, "
            f"system status {statuses[i]['system_status']}, agent {agents[i].ping_status}"
        )
        boot_id, uptime = "", None
        answer = boots.get(i)
        if answer is not None:
            report = parse_report(answer.stdout, "identity")
            if answer.ok and report.complete:
                boot_id = report.get("boot_id")
                try:
                    uptime = float(report.get("uptime"))
                except ValueError:
                    uptime = None
            else:
                detail += f", boot not read ({answer.status} {answer.error})".rstrip()
        seen[i] = Observation(at, _status_ok(statuses[i]), agents[i].online, boot_id, uptime, detail)
    return seen


def console_text_after(ec2: Any, injection: Injection) -> str:
    """The console (GetConsoleOutput, latest) after the NMI of ``injection``."""
    text = ec2.get_console_output(InstanceId=injection.instance_id, Latest=True).get("Output") or ""
    anchor = injection.console_anchor
    # A lost anchor means the buffer rolled past it: everything left is newer.
    return text.split(anchor, 1)[1] if anchor and anchor in text else text


def console_after(ec2: Any, injection: Injection) -> ConsoleFindings:
    """What the console (GetConsoleOutput, latest) shows after the NMI of ``injection``."""
    return console_findings(console_text_after(ec2, injection))


@dataclass
class _Watch:
    """The shell's state for one instance: its track, its identity command, its last status."""

    track: Track
    injection: Injection
    command: str = ""
    sent_at: str = ""
    resend_after: float = 0.0
    status: str = "unknown"
    down_since: str = ""  # when it was first seen down
    console_read: int = 0  # reads before the new boot answered
    console_next: float = 0.0  # monotonic time of the next read before the new boot
    console_final: bool = False  # the read when the new boot answered
    console_at: str = ""  # when the console was last read
    answers: int = 0  # identity answers read from the new boot

    @property
    def reasking(self) -> bool:
        """The new boot's time is known too loosely, and may still be asked again."""
        boot = self.track.boot
        return boot is not None and boot.uncertainty_s > REASK_ABOVE and self.answers <= REASKS

    def console_due(self, now: float) -> bool:
        """No new boot yet, no capture kernel seen, and its next read is due (status checks may
        lag a whole reboot: being seen down is not waited for)."""
        return (
            self.track.boot is None
            and "capture_started" not in dict(self.track.found)
            and self.console_read < CONSOLE_READS
            and now >= self.console_next
        )


def _read_identity(watch: _Watch, answer: CommandResult, read_at: str) -> Boot | None:
    report = parse_report(answer.stdout, "identity")
    if not (answer.ok and report.complete):
        return None
    uptime, guest_now = guest_seconds(report.get("uptime")), guest_seconds(report.get("now"))
    if uptime is None or guest_now is None:
        return None
    active_us = report.get("agent_active_us")
    agent_active = int(active_us) / 1e6 if active_us.isdigit() else None
    synced = report.get("clock_synced") == "yes"
    return guest_boot(report.get("boot_id"), uptime, guest_now, watch.sent_at, read_at, agent_active, synced)


class Arrivals:
    """NMIs handed to a watch while they are still being sent (thread-safe): ``add`` each once
    its answer is in the ledger, ``close`` when no more will come; ``stop`` ends the watch."""

    def __init__(self) -> None:
        self.opened_at = now_iso()
        self.closed = threading.Event()
        self.stopped = threading.Event()
        self._changed = threading.Event()
        self._lock = threading.Lock()
        self._new: Dict[str, Injection] = {}

    def add(self, injections: Iterable[Injection]) -> None:
        with self._lock:
            self._new.update({e.instance_id: e for e in injections if e.hit})
        self._changed.set()

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if NMIs are added, the sending ends or the watch is stopped."""
        self._changed.wait(seconds)
        self._changed.clear()

    def take(self) -> Dict[str, Injection]:
        """The NMIs added since the last take."""
        with self._lock:
            new, self._new = self._new, {}
        return new

    def close(self) -> None:
        self.closed.set()
        self._changed.set()

    @property
    def drained(self) -> bool:
        """Closed, and every NMI added has been taken."""
        with self._lock:
            return self.closed.is_set() and not self._new

    def stop(self) -> None:
        self.stopped.set()
        self._changed.set()


_LEFT_RUNNING: List[Tuple[Arrivals, threading.Thread]] = []
_LEFT_LOCK = threading.Lock()


def leave_running(sending: Arrivals, watcher: threading.Thread) -> None:
    """Let the watch of ``sending`` (in ``watcher``) go on after its NMIs are sent, until they are
    all back or another watch takes over (:func:`take_over`)."""
    with _LEFT_LOCK:
        _LEFT_RUNNING.append((sending, watcher))


def take_over() -> bool:
    """Stop the watches left running and wait until each has written what it saw to the ledger;
    whether there were any."""
    with _LEFT_LOCK:
        running, _LEFT_RUNNING[:] = list(_LEFT_RUNNING), []
    for sending, watcher in running:
        sending.stop()
        watcher.join()
    return bool(running)


def watch_recovery(
    ec2: Any,
    ssm: Any,
    ledger: Ledger,
    hits: Mapping[str, Injection],
    platforms: Mapping[str, guest.Platform],
    deadline: float,
    interval: float,
    app: AppWatch | None = None,
    sending: Arrivals | None = None,
) -> Dict[str, Timeline]:
    """Follow each hit instance until it is back or ``deadline`` (a ``time.monotonic()``
    value) passes, and return its timeline; each recovery is written to the ledger.

    Each instance gets one identity command, sent at once and read later: SSM holds it while the
    instance is down and the new boot's agent runs it, so the answer dates the new kernel and the
    agent by the guest's own clock. (A command sent before the instance was seen down may have
    reached the dying kernel: it is sent again once the instance is seen up. One whose answer
    dates the boot only loosely, a clock not synchronised, is asked again: see ``REASK_ABOVE``.)
    Each look costs one DescribeInstanceStatus per 100 instances and one ListCommands; invocations
    are read only when ListCommands shows new answers. Consoles are read for the kernels' own
    times of the panic and the capture: at the first look, then every ``CONSOLE_EVERY`` seconds
    until the capture kernel shows (at most ``CONSOLE_READS`` times), and once when the new boot
    answers. Looks come every ``interval`` seconds, and every ``FAST_INTERVAL`` while an instance
    is expected to change soon (booting, or up again and not yet answering). With ``app``, an
    instance is back only once its application check passes in the new boot (a target group is
    read at every look, one call for all, and counts only once it has reported the instance
    unhealthy).

    With ``sending``, the watch also follows each NMI handed to it as it is sent, and ends once
    the sending has ended (``sending`` closed) and every instance is back, or when it is stopped:
    the instances hit first of a large fleet may be back long before the last NMI leaves, and
    only a look then dates their status checks. Without, it first takes over any watch left
    running (:func:`take_over`), and judges ``hits`` as the ledger has them then.
    """
    if sending is None and take_over():
        now = {(e.instance_id, e.sent_at): e for e in ledger.entries()}
        hits = {i: now.get((i, e.sent_at), e) for i, e in hits.items()}
    since = min((e.sent_at for e in hits.values()), default=sending.opened_at if sending else now_iso())
    known: Dict[str, Timeline] = {}
    watches: Dict[str, _Watch] = {}

    def follow(new: Mapping[str, Injection]) -> None:
        for i, e in new.items():
            line = _known(e, bool(app))
            if line is not None:
                known[i] = line
                continue
            track = Track(
                i,
                e.sent_at,
                e.boot_id_before,
                booted_before=crashed_boot(e.boot_before),
                nmi_answered=e.answered_at,
                found=tuple(recorded_evidence(e.evidence).items()),
                app_checked=bool(app),
                app_lags=bool(app and app.lags),
            )
            # While NMIs are still being sent, each one's command waits up to a look's
            # interval, so that those sent meanwhile share it (one SendCommand, one read).
            watches[i] = _Watch(track, e, resend_after=time.monotonic() + interval if sending else 0.0)

    follow(hits)
    if not watches and sending is None:
        return known
    completed: Dict[str, int] = {}
    back_ids: set[str] = set()

    def look() -> Dict[str, Timeline]:
        if sending is not None:
            follow(sending.take())
        pending = {i: w for i, w in watches.items() if i not in back_ids}
        if not pending or (sending is not None and sending.stopped.is_set()):
            return {**known, **{i: timeline(w.track) for i, w in watches.items()}}
        statuses = instance_status(ec2, list(pending))
        at = now_iso()  # once answered: a status seen ok was ok by then at the latest
        for i, status in statuses.items():
            w = watches[i]
            ok = _status_ok(status)
            w.status = "ok" if ok else status["instance_status"]
            w.down_since = w.down_since or ("" if ok else at)
            w.track = w.track.with_status(at, ok)
            if ok and w.command and w.sent_at < w.down_since:
                w.command = ""  # it may have reached the kernel that died: ask the new one
        now = time.monotonic()
        waiting = {i: w for i, w in pending.items() if not w.command}
        due = len(waiting) >= SSM_CHUNK or any(now >= w.resend_after for w in waiting.values())
        # When one is due, those due within the next interval go with it.
        resend = (
            {i: platforms[i] for i, w in waiting.items() if w.resend_after <= now + interval} if due else {}
        )
        if resend:
            remaining = max(MIN_DELIVERY, int(deadline - now) + 1)
            # Before the first request leaves: an agent online takes its command at once, while
            # the requests for the other instances are still being sent (500 take seconds).
            at = now_iso()
            sent, _ = send_script(ssm, resend, "identity", timeout=30, delivery_timeout=remaining)
            for i, command in sent.items():
                watches[i].command, watches[i].sent_at = command, at
        now = time.monotonic()
        _read_consoles(ec2, [w for w in pending.values() if w.console_due(now)])
        counts = completed_counts(ssm, since)
        changed = {c for c, n in counts.items() if n != completed.get(c, 0)}
        completed.update(counts)
        waiting = {i: w.command for i, w in pending.items() if w.command in changed}
        answers = read_commands(ssm, waiting) if waiting else {}
        read_at = now_iso()
        for i, answer in answers.items():
            w = watches[i]
            if answer.status not in TERMINAL:
                continue
            boot = _read_identity(w, answer, read_at)
            w.command = ""
            if boot is not None and w.track.is_new(boot):
                w.track = w.track.with_boot(boot)
                w.answers += 1
            else:  # the old kernel still answers, or the command failed: ask again later
                w.resend_after = time.monotonic() + interval
        _read_consoles(
            ec2, [watches[i] for i in answers if watches[i].track.boot and not watches[i].console_final]
        )
        checked = [i for i, w in pending.items() if app.lags or w.track.boot] if app else []
        if app and checked:
            at = now_iso()
            for i, ok in app.run(checked).items():
                watches[i].track = watches[i].track.with_app(at, ok)
        lines = {i: timeline(w.track) for i, w in watches.items()}
        record({i: lines[i] for i in pending if lines[i].back and not watches[i].reasking})
        return {**known, **lines}

    def record(back: Dict[str, Timeline]) -> None:
        back_ids.update(back)
        for i, line in back.items():
            logger.info("%s back %.1fs after its NMI", i, line.recovery_seconds)
        ledger.update(
            {
                (i, watches[i].injection.sent_at): {
                    "recovered_at": line.recovered_at,
                    "timeline": line.to_dict(),
                }
                for i, line in back.items()
            }
        )

    def pace(lines: Dict[str, Timeline]) -> float:
        due = any(
            w.status == "initializing" or (w.status == "ok" and w.down_since) or w.track.boot is not None
            for i, w in watches.items()
            if i not in back_ids
        )
        return min(interval, FAST_INTERVAL) if due else interval

    def done(lines: Dict[str, Timeline]) -> bool:
        all_back = back_ids >= watches.keys()
        return sending.stopped.is_set() or (sending.drained and all_back) if sending else all_back

    outcome = poll(
        Poll(look, done, timeout=max(0.0, deadline - time.monotonic()), interval=interval, pace=pace),
        sleep=sending.wait if sending else time.sleep,
    )
    if sending is None:
        # Back, but the deadline came while its boot was still being asked again: as dated so far.
        record(
            {i: line for i, line in outcome.last.items() if i in watches and i not in back_ids and line.back}
        )
    return outcome.last


def _known(injection: Injection, app_checked: bool) -> Timeline | None:
    """The timeline the ledger kept when the instance was seen back (with what its dump told
    since), if it was judged the same way (with or without an application check) and with
    evidence (a timeline kept by an older version has none: it is watched again)."""
    if not (injection.recovered_at and "evidence" in injection.timeline):
        return None
    line = Timeline.from_dict(injection.instance_id, injection.timeline)
    if bool(line.milestones.get("app_healthy")) != app_checked:
        return None
    return line.refined(recorded_evidence(injection.evidence))


def _read_consoles(ec2: Any, watches: List[_Watch]) -> None:
    """Read the consoles of ``watches`` side by side, and add what each read proves to the track."""

    def read(watch: _Watch) -> None:
        if watch.track.boot is None:
            watch.console_read += 1
            watch.console_next = time.monotonic() + CONSOLE_EVERY
        else:
            watch.console_final = True
        try:
            text = console_text_after(ec2, watch.injection)
        except ClientError as exc:
            logger.debug("%s console not read: %s", watch.track.instance_id, exc)
            return
        at, since = now_iso(), watch.console_at or watch.track.nmi_sent
        watch.console_at = at
        found = console_evidence(console_times(text), at, since, watch.track.booted_before)
        # A milestone first seen by an earlier read happened before it: a later read adds no bound.
        seen = dict(watch.track.found)
        watch.track = watch.track.with_evidence(
            {m: e for m, e in found.items() if e.source != "first-seen" or m not in seen}
        )

    if watches:
        with ThreadPoolExecutor(max_workers=min(CONSOLE_READERS, len(watches))) as pool:
            list(pool.map(read, watches))
