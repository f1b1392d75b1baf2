"""Actions: send the diagnostic interrupt (NMI), guarded; arm kdump so that it leaves a dump;
collect the dump to S3."""

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Dict, Iterator, List, Mapping, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from chaoslib.types import Configuration, Secrets

from .aws import (
    DESCRIBE_STATUS_CHUNK,
    THROTTLING_CODES,
    RetryPolicy,
    chunks,
    client,
    error_code,
    paginate,
    without_sdk_retries,
)
from .errors import Ec2PanicError, InvalidRequest, Refused, StopConditionMet
from .guest import Platform, platform_of
from .guest.parsers import (
    CRASHKERNEL,
    DEFAULT_CRASHKERNEL,
    KdumpVerdict,
    SettingsChange,
    Upload,
    kdump_verdict,
    parse_report,
    settings_change,
    upload_report,
)
from .health import Arrivals, leave_running, observe, watch_recovery
from .iam import OBSERVE, RESOLVE, RESOLVE_GUARDED, RUN_SCRIPT, STOP_ALARMS, WATCH_RECOVERY, requires
from .ledger import Injection, JsonRecord, Ledger, LedgerError, unrecovered
from .pacing import clear_sends, sends
from .polling import Poll, poll
from .probes import crash_dumps, judged_hits, platforms_of
from .readiness import kdump_verdicts, permission
from .recovery import Observation, epoch_iso, guest_boot, guest_seconds, is_back, is_up, now_iso, parse_iso
from .settings import settings
from .ssm import run_script
from .stopconditions import check_stop, stop_alarms
from .targets import Request, batches, guardrails, resolve

__all__ = ["arm_kdump", "collect_crash_dump", "send_nmi"]

logger = logging.getLogger("chaostoolkit")
T = TypeVar("T")
CONSOLE_ANCHOR_CHARS = 512
# NMIs sent between two writes of their answers to the ledger (two seconds of EC2's refill of
# mutating calls): the watch that runs while a batch is sent follows them from then on.
SETTLE_EVERY = 10
WATCH_LIMIT = 3600.0  # seconds a batch is watched at most by send_nmi's own watch


def _console_anchor(ec2: Any, instance_id: str) -> str:
    try:
        text = ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""
    except ClientError:
        return ""
    return text[-CONSOLE_ANCHOR_CHARS:]


def _send_one(ec2: Any, instance_id: str, retry: RetryPolicy) -> Dict[str, str]:
    """Send one NMI: when its first request left (after any wait for a token) and when it was
    answered, its outcome and the error if any."""
    began = now_iso()
    clear_sends()
    try:
        retry.call(ec2.send_diagnostic_interrupt, InstanceId=instance_id)
        outcome, error = "sent", ""
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        # Throttled requests were refused before acting; other 5xx answers may have acted.
        outcome = "unknown" if status >= 500 and error_code(exc) not in THROTTLING_CODES else "failed"
        error = f"{error_code(exc)}: {exc.response['Error'].get('Message', '')}"
    except BotoCoreError as exc:
        outcome, error = "unknown", f"{type(exc).__name__}: {exc}"
    answered, left = now_iso(), sends()
    sent_at = epoch_iso(left[0]) if left else began
    return {
        "sent_at": min(max(sent_at, began), answered),
        "answered_at": answered,
        "outcome": outcome,
        "error": error,
    }


def _each(call: Callable[[str], T], ids: List[str], workers: int) -> Dict[str, T]:
    """``call`` on each instance id, ``workers`` at a time: one request per instance, in parallel."""
    if not ids:
        return {}
    with ThreadPoolExecutor(max_workers=min(workers, len(ids))) as pool:
        return dict(zip(ids, pool.map(call, ids), strict=True))


@dataclass(frozen=True)
class _Look:
    """What was seen, before the ledger's lock is taken, of the instances the ledger says were hit
    and not back: when the look began, each instance seen, those no longer there, the region."""

    began: str
    seen: Dict[str, Observation]
    gone: frozenset[str]
    region: str


def _still_there(ec2: Any, ids: List[str]) -> Dict[str, Platform]:
    """The platform of each of ``ids`` that still exists and is not terminated (a filter, not
    ``InstanceIds``, so that an instance long gone is no error)."""
    found = {}
    for chunk in chunks(ids, DESCRIBE_STATUS_CHUNK):
        filters = [{"Name": "instance-id", "Values": chunk}]
        for reservation in paginate(ec2, "describe_instances", "Reservations", Filters=filters):
            for inst in reservation.get("Instances", []):
                if inst["State"]["Name"] not in ("terminated", "shutting-down"):
                    found[inst["InstanceId"]] = platform_of(inst)
    return found


def _look(ledger: Ledger, ec2: Any, ssm: Any, platforms: Mapping[str, Platform]) -> _Look:
    """Look at every instance of this region the ledger says was hit and not back (the chosen
    ones and any other), and record as recovered those back in a new boot."""
    began = now_iso()
    region = ec2.meta.region_name
    hit = {i: e for i, e in ledger.unrecovered().items() if e.region in ("", region)}
    others = [i for i in hit if i not in platforms]
    there = _still_there(ec2, others) if others else {}
    wanted = {**{i: platforms[i] for i in hit if i in platforms}, **there}
    seen = observe(ec2, ssm, wanted) if wanted else {}
    back = {i: e for i, e in hit.items() if i in seen and is_back(seen[i], e.sent_at, e.boot_id_before)}
    ledger.update({(i, e.sent_at): {"recovered_at": seen[i].at} for i, e in back.items()})
    return _Look(began, seen, frozenset(set(others) - set(there)), region)


def _in_flight(entry: Injection, look: _Look) -> str | None:
    """Why the instance of ``entry`` (its latest hit, with no recovery recorded) may be down, or
    about to go down, because of it; None when ``look`` shows that it is not."""
    i, since = entry.instance_id, entry.sent_at
    if since >= look.began:
        return f"hit at {since} (run {entry.run_id}), after this run looked at it"
    if entry.region not in ("", look.region):
        return f"hit at {since} in {entry.region}, where this run does not look (give each region a ledger)"
    if i in look.gone:
        return None
    seen = look.seen.get(i)
    if seen is None:
        return f"hit at {since} (run {entry.run_id}) while this run looked at the others"
    if is_back(seen, since, entry.boot_id_before):
        return None
    if entry.outcome == "pending":
        return (
            f"an NMI was being sent to it at {since} by run {entry.run_id} and never settled (that run "
            "may still be sending it, or died); if that run is gone and the instance serves, pass force=true"
        )
    if is_up(seen):
        return None
    return f"hit at {since} and not seen back since ({seen.detail})"


def _admission(
    entries: List[Injection], ids: List[str], batch: List[str], look: _Look, max_instances: int, force: bool
) -> None:
    """Refuse unless, by the ledger's ``entries`` and the ``look``, none of ``ids`` was hit and is
    not back (unless ``force``), and ``batch`` with the instances down from the NMIs in the ledger
    stays within ``max_instances``."""
    down = {i: why for i, e in unrecovered(entries).items() if (why := _in_flight(e, look))}
    again = {i: down[i] for i in ids if i in down}
    if again and not force:
        raise Refused(
            "an instance was hit before and has not come back (recover it: chaosec2panic recover, "
            "or pass force=true)",
            again,
        )
    others = {i: why for i, why in down.items() if i not in batch}
    if len(others) + len(batch) > max_instances:
        raise Refused(
            f"max_instances={max_instances} caps the instances down at once from the NMIs in this "
            f"ledger: {len(others)} not seen back and {len(batch)} more would pass it (recover them, "
            "wait for them, or raise max_instances)",
            others,
        )


@requires(*RESOLVE_GUARDED, *OBSERVE, *WATCH_RECOVERY, *STOP_ALARMS, "ec2:SendDiagnosticInterrupt")
def send_nmi(
    instance_ids: List[str] = None,
    filters: List[Dict[str, Any]] = None,
    tags: Dict[str, str] = None,
    count: int = None,
    percent: float = None,
    seed: int = None,
    max_instances: int = 1,
    allow_unarmed: bool = False,
    force: bool = False,
    max_concurrency: int = 10,
    batch_size: int = None,
    batch_percent: float = None,
    batch_pause: float = None,
    batch_slo: float = 600,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Send a diagnostic interrupt (NMI) to the selected EC2 instances, once each.

    Targets are ``instance_ids`` and/or EC2 ``filters`` / ``tags``; ``count`` or ``percent``
    picks at random (``seed`` makes it repeatable; the seed used is returned). Nothing is sent
    unless every matched instance is running, carries the opt-in tag, has a type that takes
    the interrupt, and the selection stays within ``max_instances``; unless every chosen
    instance has kdump armed (``allow_unarmed`` to skip), was not hit before without coming
    back (``force`` to skip), EC2 DryRun grants permission, and every stop alarm
    (``chaosec2panic_stop_alarms`` in the configuration) is OK (INSUFFICIENT_DATA only for
    those named in ``chaosec2panic_stop_alarms_insufficient_data_ok``). Throttled calls are
    retried; no request is ever sent twice.

    The ledger decides last, under its lock: with what it holds then (another process may have
    hit an instance since this one looked), no chosen instance may be hit and not back, and
    ``max_instances`` caps the instances down at once from every NMI in the ledger: this batch
    and each instance any run hit (this one, an earlier one, or one running at the same time
    on this machine, or on any machine when the ledger is a DynamoDB table) that is not seen
    back since. Two runs at once with ``max_instances=1``
    hit one instance between them; give runs meant to overlap a ledger each. Each NMI is then
    written as ``pending`` (counted as a hit) before the lock is released and the request sent,
    and settled to its outcome after: if it cannot be written, nothing is sent, and a process
    killed in between leaves an entry that ``chaosec2panic recover`` and the guards act on.
    Refusals go to the ledger too. A batch of more than ten is settled ten at a time and watched
    while it is sent, and after, until each instance is back or the next watch (a recovery probe,
    ``recover_instances``) takes over: each recovery is written to the ledger, with its timeline,
    as it comes, and no further NMI is sent once a settle cannot be written.

    A rolling rollout hits ``batch_size`` (or ``batch_percent``) instances at a time and
    waits for each batch to be back before the next (or ``batch_pause`` seconds instead);
    a batch not back within ``batch_slo`` seconds, a stop alarm, or the ledger's refusal
    halts it and the rest are never hit. Returns the selection, the batches, why the rollout
    halted (if it did) and one record per instance: id, batch, sent_at and answered_at (UTC: the
    NMI landed in between), outcome (sent, failed, unknown, or skipped when a halt kept it from
    being hit) and error.
    """
    ledger = Ledger.of(configuration)
    try:
        rollout = Rollout(batch_size, batch_percent, batch_pause, batch_slo)
        return _send_nmi(
            ledger,
            Request(instance_ids or (), filters or (), tags or {}, count, percent, seed),
            max_instances,
            allow_unarmed,
            force,
            max_concurrency,
            rollout,
            configuration,
            secrets,
        )
    except (Refused, InvalidRequest, StopConditionMet) as exc:
        ledger.record([Injection("", now_iso(), "refused", error=str(exc))])
        raise


def _send_nmi(
    ledger: Ledger,
    request: Request,
    max_instances: int,
    allow_unarmed: bool,
    force: bool,
    max_concurrency: int,
    rollout: "Rollout",
    configuration: Configuration,
    secrets: Secrets,
) -> Dict[str, Any]:
    if not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise InvalidRequest(f"max_concurrency must be a whole number >= 1, got {max_concurrency!r}")
    guard = guardrails(configuration, max_instances)
    ec2 = client("ec2", configuration, secrets)
    ssm = client("ssm", configuration, secrets)
    retry = settings(configuration).retry()
    resolution = resolve(ec2, request, guard)
    platforms = {inst["InstanceId"]: platform_of(inst) for inst in resolution.chosen}

    asked = now_iso()
    verdicts = kdump_verdicts(ssm, platforms, 0.0)
    boots = {i: _boot_before(v, asked, now_iso()) for i, v in verdicts.items()}
    if not allow_unarmed:
        unarmed = {
            i: f"kdump {v.verdict}: {'; '.join(v.reasons)}"
            for i, v in verdicts.items()
            if v.verdict != "armed"
        }
        if unarmed:
            raise Refused(
                "kdump is not proven armed on every chosen instance "
                "(arm it, or pass allow_unarmed=true to crash without a dump)",
                unarmed,
            )
    plan = batches(resolution.ids, rollout.size, rollout.percent)
    look = _look(ledger, ec2, ssm, platforms)
    # Refused early, before DryRun; the ledger decides again under its lock before each batch.
    _admission(ledger.entries(), resolution.ids, plan[0], look, max_instances, force)
    permitted = _each(lambda i: permission(ec2, i, retry), resolution.ids, max_concurrency)
    denied = {i: why for i, why in permitted.items() if why}
    if denied:
        raise Refused("EC2 DryRun did not grant the interrupt", denied)

    alarms = stop_alarms(configuration)
    nmi_ec2 = without_sdk_retries(client("ec2", configuration, secrets))
    injections: List[Injection] = []
    halted = ""
    for number, batch in enumerate(plan, 1):
        try:
            if alarms:
                check_stop(alarms, configuration, secrets)
            anchors = _each(lambda i: _console_anchor(ec2, i), batch, max_concurrency)
            pending = _write_ahead(
                ledger, batch, look, max_instances, force, number, ec2, verdicts, anchors, boots
            )
        except (StopConditionMet, Refused) as exc:
            if number == 1:
                raise
            halted = f"before batch {number}: {exc}"
            break
        with _watching(ec2, ssm, ledger, platforms, configuration, len(pending) > SETTLE_EVERY) as sending:
            sent = _send_batch(
                ledger, pending, lambda i: _send_one(nmi_ec2, i, retry), number, max_concurrency, sending
            )
        injections += sent
        if number < len(plan):
            halted = _between_batches(rollout, sent, ec2, ssm, ledger, platforms, configuration)
            if halted:
                halted = f"after batch {number}: {halted}"
                break
    if not any(e.hit for e in injections):
        raise Ec2PanicError(
            "no NMI was sent: " + "; ".join(f"{e.instance_id}: {e.error}" for e in injections)
        )
    hit = {e.instance_id for e in injections}
    skipped = [i for i in resolution.ids if i not in hit]
    if halted:
        logger.critical("rollout halted %s; never hit: %s", halted, ", ".join(skipped))
    records = [
        {k: e.to_dict()[k] for k in ("instance_id", "batch", "sent_at", "answered_at", "outcome", "error")}
        for e in injections
    ]
    records += [
        {
            "instance_id": i,
            "batch": n,
            "sent_at": "",
            "answered_at": "",
            "outcome": "skipped",
            "error": halted,
        }
        for n, batch in enumerate(plan, 1)
        for i in batch
        if i in skipped
    ]
    return {
        "selection": resolution.to_dict(),
        "batches": plan,
        "halted": halted or None,
        "injections": records,
        "ledger": ledger.where,
    }


def _write_ahead(
    ledger: Ledger,
    batch: List[str],
    look: _Look,
    max_instances: int,
    force: bool,
    number: int,
    ec2: Any,
    verdicts: Mapping[str, KdumpVerdict],
    anchors: Mapping[str, str],
    boots: Mapping[str, Dict[str, Any]],
) -> List[Injection]:
    """Under the ledger's lock, admit ``batch`` by what the ledger holds now and write one
    ``pending`` entry per instance; nothing may be sent unless this returns."""

    def decide(entries: List[Injection]) -> List[Injection]:
        _admission(entries, batch, batch, look, max_instances, force)
        return [
            Injection(
                i,
                now_iso(),
                "pending",
                region=ec2.meta.region_name,
                boot_id_before=verdicts[i].facts.get("boot_id", ""),
                console_anchor=anchors[i],
                boot_before=boots[i],
                batch=number,
            )
            for i in batch
        ]

    try:
        return ledger.admit(decide)
    except LedgerError as exc:
        raise LedgerError(f"{exc}\nEach NMI is recorded before it is sent: no NMI was sent.") from exc


def _boot_before(verdict: KdumpVerdict, asked: str, answered: str) -> Dict[str, Any]:
    """When the kernel the NMI will crash started, from the kdump check's answer (asked and read
    between ``asked`` and ``answered``), as the ledger keeps it; empty when the answer lacks it."""
    uptime, guest_now = (
        guest_seconds(verdict.facts.get("uptime", "")),
        guest_seconds(verdict.facts.get("now", "")),
    )
    if uptime is None or guest_now is None:
        return {}
    synced = verdict.facts.get("clock_synced") == "yes"
    boot = guest_boot("", uptime, guest_now, asked, answered, clock_synced=synced)
    return {"booted_at": boot.booted_at, "uncertainty_s": boot.uncertainty_s, "skew": boot.skew}


def _send_batch(
    ledger: Ledger,
    pending: List[Injection],
    send: Callable[[str], Dict[str, str]],
    number: int,
    max_concurrency: int,
    sending: Arrivals,
) -> List[Injection]:
    """Send the NMIs of one batch, ``SETTLE_EVERY`` at a time, writing what each group's
    requests answered over their ``pending`` entries and handing them to the watch."""
    by_id = {p.instance_id: p for p in pending}
    sent: List[Injection] = []
    groups = list(chunks(list(by_id), SETTLE_EVERY))
    for n, group in enumerate(groups):
        answers = _each(send, group, max_concurrency)
        unsent = [i for later in groups[n + 1 :] for i in later]
        settled = _settle(ledger, [by_id[i] for i in group], answers, number, unsent)
        sending.add(settled)
        sent += settled
    return sent


def _settle(
    ledger: Ledger,
    pending: List[Injection],
    answers: Mapping[str, Dict[str, str]],
    number: int,
    unsent: List[str],
) -> List[Injection]:
    """Write what each request answered over its ``pending`` entry."""
    changes = {(p.instance_id, p.sent_at): answers[p.instance_id] for p in pending}
    sent = [replace(p, **changes[(p.instance_id, p.sent_at)]) for p in pending]
    for e in sent:
        logger.info("NMI %s to %s at %s (batch %d) %s", e.outcome, e.instance_id, e.sent_at, number, e.error)
    try:
        ledger.update(changes)
    except LedgerError as exc:
        outcomes = ", ".join(f"{e.instance_id} {e.outcome}" for e in sent)
        rest = f" The rest of batch {number} was not sent: {', '.join(unsent)}." if unsent else ""
        raise LedgerError(
            f"{exc}\nThe NMIs of batch {number} were sent ({outcomes}); the ledger keeps them as "
            f"pending, counted as hits, and no further NMI is sent.{rest}"
        ) from exc
    return sent


@contextmanager
def _watching(
    ec2: Any,
    ssm: Any,
    ledger: Ledger,
    platforms: Mapping[str, Platform],
    configuration: Configuration,
    needed: bool,
) -> Iterator[Arrivals]:
    """A watch of the instances of a batch while it is being sent (see ``watch_recovery``), in a
    thread of its own, for at most ``WATCH_LIMIT`` seconds. Once the batch is sent it goes on
    until every instance is back or the next watch (a probe's, the rollout's) takes over, so that
    none back meanwhile waits for that watch's first look: each is recorded back, with its
    timeline, as it comes. Not ``needed`` (a batch sent in one go), nothing watches."""
    sending = Arrivals()
    if not needed:
        yield sending
        return

    def watch() -> None:
        try:
            interval, deadline = settings(configuration).poll_interval, time.monotonic() + WATCH_LIMIT
            watch_recovery(ec2, ssm, ledger, {}, platforms, deadline, interval, sending=sending)
        except (ClientError, BotoCoreError, Ec2PanicError) as exc:
            # Looking early is a refinement: the probes watch every instance not recorded back.
            logger.warning("the watch of the NMIs just sent stopped: %s", exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield sending
    except BaseException:
        sending.stop()
        watcher.join()
        raise
    sending.close()
    leave_running(sending, watcher)


@dataclass(frozen=True)
class Rollout:
    """How to roll the NMIs out: batch by count or percent, then a pause or a recovery wait."""

    size: int | None = None
    percent: float | None = None
    pause: float | None = None
    slo: float = 600

    def __post_init__(self) -> None:
        batches([], self.size, self.percent)  # the same checks, before anything is sent
        for name, value in (("batch_pause", self.pause), ("batch_slo", self.slo)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise InvalidRequest(f"{name} must be a number of seconds >= 0, got {value!r}")


def _between_batches(
    rollout: Rollout,
    sent: List[Injection],
    ec2: Any,
    ssm: Any,
    ledger: Ledger,
    platforms: Dict[str, Any],
    configuration: Configuration,
) -> str:
    """Pause, or wait for the batch to be back within the SLO; why the rollout must halt, if it must."""
    if rollout.pause is not None:
        time.sleep(rollout.pause)
        return ""
    hits = {e.instance_id: e for e in sent if e.hit}
    lines = watch_recovery(
        ec2,
        ssm,
        ledger,
        hits,
        platforms,
        time.monotonic() + rollout.slo,
        settings(configuration).poll_interval,
    )
    late = sorted(
        i for i, line in lines.items() if line.recovery_seconds is None or line.recovery_seconds > rollout.slo
    )
    return f"not back within the batch SLO of {rollout.slo:g}s: {', '.join(late)}" if late else ""


# arm_kdump ---------------------------------------------------------------------------------------
WINDOWS_DUMP_TYPE_VALUES = {"complete": "1", "kernel": "2", "automatic": "7"}
SETTINGS_SCRIPT_TIMEOUT = 900  # installing packages and regenerating grub.cfg can take minutes


class ArmedSettings:
    """What arm_kdump changed on each instance, with the values before, so that
    restore_kdump_settings (in this process or a later one) undoes exactly that. What it returns
    is data from a file: restore_kdump_settings checks each value against its setting's format
    (guest.parsers.RESTORABLE_VALUES) before any of it is sent.

    A JSON file next to the ledger (``<ledger stem>-kdump-settings.json``), rewritten atomically
    under a lock. The first recorded before-value of a setting is kept until it is restored.
    """

    def __init__(self, path: Path):
        self.path = path
        self._file = JsonRecord(path, "what arm_kdump changed and restore_kdump_settings undoes")

    @classmethod
    def of(cls, configuration: Configuration | None) -> "ArmedSettings":
        ledger = settings(configuration).ledger_path
        return cls(ledger.with_name(f"{ledger.stem}-kdump-settings.json"))

    def instances(self) -> Dict[str, Dict[str, Any]]:
        return dict(self._file.read().get("instances", {}))

    @contextmanager
    def _locked(self) -> Iterator[Dict[str, Dict[str, Any]]]:
        with self._file.locked() as document:
            yield document.setdefault("instances", {})

    def remember(self, instance_id: str, change: SettingsChange) -> None:
        """Add the settings ``change`` changed; a setting already recorded keeps its first before."""
        if not change.changed:
            return
        with self._locked() as found:
            entry = found.setdefault(instance_id, {"platform": change.platform, "settings": {}})
            for name in change.changed:
                values = change.settings[name]
                kept = entry["settings"].get(name, {"before": values["before"]})
                entry["settings"][name] = {"before": kept["before"], "armed": values["after"]}
            entry["recorded_at"] = now_iso()

    def forget(self, instance_id: str) -> None:
        with self._locked() as found:
            found.pop(instance_id, None)


def run_kdump_settings(
    ssm: Any, platforms: Mapping[str, Platform], variables: Dict[str, str]
) -> Dict[str, SettingsChange]:
    """Run kdump_settings with ``variables`` on each instance; one not run says why in its error."""
    answers = run_script(ssm, platforms, "kdump_settings", variables, timeout=SETTINGS_SCRIPT_TIMEOUT)
    found = {}
    for i, r in answers.items():
        change = settings_change(parse_report(r.stdout, "kdump_settings"))
        if not r.ok:
            change = SettingsChange(
                platforms[i].name, change.settings, f"not run: {r.status} {r.error}".rstrip(), "", "", None
            )
        found[i] = change
    return found


def _kdump_now(ssm: Any, platforms: Mapping[str, Platform]) -> Dict[str, tuple[KdumpVerdict, float | None]]:
    """Each instance's kdump verdict and uptime (None when it did not answer)."""
    answers = run_script(ssm, platforms, "kdump_status", timeout=60)
    found: Dict[str, tuple[KdumpVerdict, float | None]] = {}
    for i, r in answers.items():
        if not r.ok:
            found[i] = (
                KdumpVerdict("unknown", reasons=[f"not checked: {r.status} {r.error}".rstrip()]),
                None,
            )
            continue
        report = parse_report(r.stdout, "kdump_status")
        try:
            uptime: float | None = float(report.get("uptime"))
        except ValueError:
            uptime = None
        found[i] = (kdump_verdict(report, 0.0), uptime)
    return found


def wait_settled(
    ssm: Any,
    platforms: Mapping[str, Platform],
    rebooted: Mapping[str, tuple[str, float]],
    want_armed: bool,
    timeout: float,
    interval: float,
) -> Dict[str, KdumpVerdict]:
    """Wait until each rebooted instance answers from a new boot (a new boot id, or an uptime
    shorter than the time since the reboot was asked: ``rebooted`` holds both) and, with
    ``want_armed``, has kdump armed; the others are looked at once. Returns the last verdicts;
    an instance not back says so in its reasons."""

    def settled(seen: Dict[str, tuple[KdumpVerdict, float | None]]) -> bool:
        # Instances not rebooted are looked at once: nothing they wait for is coming.
        return all(
            i not in rebooted or (_back(i, v, up) and (not want_armed or v.verdict == "armed"))
            for i, (v, up) in seen.items()
        )

    def _back(i: str, verdict: KdumpVerdict, uptime: float | None) -> bool:
        if i not in rebooted:
            return True
        boot_id, asked = rebooted[i]
        if uptime is None:
            return False
        return verdict.facts.get("boot_id", "") != boot_id or uptime < time.time() - asked

    outcome = poll(Poll(lambda: _kdump_now(ssm, platforms), settled, timeout=timeout, interval=interval))
    verdicts = {}
    for i, (verdict, uptime) in outcome.last.items():
        if not _back(i, verdict, uptime):
            verdict = KdumpVerdict(
                "unknown", reasons=[f"not back from the reboot within {timeout:g}s", *verdict.reasons]
            )
        verdicts[i] = verdict
    return verdicts


def reboot_and_wait(
    ec2: Any,
    ssm: Any,
    platforms: Mapping[str, Platform],
    changes: Mapping[str, SettingsChange],
    reboot: bool,
    want_armed: bool,
    timeout: float,
    configuration: Configuration,
) -> tuple[List[str], Dict[str, KdumpVerdict]]:
    """Reboot (EC2 RebootInstances) the instances whose changes need it, then wait; returns the
    rebooted ids and the verdicts after."""
    found = settings(configuration)
    need = sorted(i for i, c in changes.items() if c.reboot and not c.error)
    rebooted: Dict[str, tuple[str, float]] = {}
    if reboot and need:
        asked = time.time()
        found.retry().call(ec2.reboot_instances, InstanceIds=need)
        rebooted = {i: (changes[i].boot_id, asked) for i in need}
        for i in need:
            logger.info("rebooting %s: %s", i, changes[i].reboot)
    verdicts = wait_settled(ssm, platforms, rebooted, want_armed, timeout, found.poll_interval)
    return sorted(rebooted), verdicts


@requires(*RESOLVE_GUARDED, *RUN_SCRIPT, "ec2:RebootInstances")
def arm_kdump(
    instance_ids: List[str] = None,
    filters: List[Dict[str, Any]] = None,
    tags: Dict[str, str] = None,
    crashkernel: str = None,
    windows_dump_type: str = "automatic",
    max_instances: int = 1,
    reboot: bool = True,
    timeout: float = 600,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Arm the selected instances so that an NMI leaves a crash dump, through SSM.

    Linux: installs what is missing (kexec-tools or kdump-utils with dnf/yum, kdump-tools with
    apt-get, kdump with zypper), reserves crash memory (``crashkernel``, through grubby, a
    /etc/default/grub.d file read after kdump-tools' own on Debian and Ubuntu, or
    /etc/default/grub; the kernel takes the last crashkernel= and the result is checked to be
    it; without it an existing reservation is kept, else the kernel picks by memory size as
    RHEL does: 1G-4G:192M,4G-64G:256M,64G-:512M), sets kernel.unknown_nmi_panic=1
    now and in /etc/sysctl.d, enables and starts the kdump service. Windows: CrashControl
    CrashDumpEnabled (``windows_dump_type``: complete, kernel or automatic), NMICrashDump=1,
    AutoReboot=1. Targets as for send_nmi; every matched instance must carry the opt-in tag and
    run, and the selection stay within ``max_instances``. Instances whose new settings need a
    reboot (crash memory the running kernel lacks, new CrashControl) are rebooted unless
    ``reboot`` is false; then it waits (up to ``timeout`` seconds) until each is back and kdump
    is armed. What was there before is recorded next to the ledger, so restore_kdump_settings
    undoes exactly what this changed. Running it again changes nothing and says so. Returns, per
    instance, each setting's before, after and changed, the reboot and the kdump verdict; fails
    when an instance could not be armed.
    """
    if crashkernel is not None and (
        not isinstance(crashkernel, str) or not CRASHKERNEL.fullmatch(crashkernel)
    ):
        raise InvalidRequest(
            "crashkernel must be a crashkernel= value as the kernel reads it: SIZE[@OFFSET], "
            "SIZE,high, SIZE,low or ranges START-[END]:SIZE,...[@OFFSET], sizes such as 256M "
            f"(for example 256M or {DEFAULT_CRASHKERNEL}), got {crashkernel!r}"
        )
    if windows_dump_type not in WINDOWS_DUMP_TYPE_VALUES:
        raise InvalidRequest(
            f"unknown windows_dump_type {windows_dump_type!r}; valid: {', '.join(WINDOWS_DUMP_TYPE_VALUES)}"
        )
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
        raise InvalidRequest(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    guard = guardrails(configuration, max_instances)
    ec2 = client("ec2", configuration, secrets)
    ssm = client("ssm", configuration, secrets)
    resolution = resolve(ec2, Request(instance_ids or (), filters or (), tags or {}), guard)
    platforms = {inst["InstanceId"]: platform_of(inst) for inst in resolution.chosen}
    variables = {
        "ACTION": "arm",
        "CRASHKERNEL": crashkernel or DEFAULT_CRASHKERNEL,
        "CRASHKERNEL_FORCE": "1" if crashkernel else "0",
        "CRASH_DUMP_ENABLED": WINDOWS_DUMP_TYPE_VALUES[windows_dump_type],
    }
    changes = run_kdump_settings(ssm, platforms, variables)
    record = ArmedSettings.of(configuration)
    for i, change in changes.items():
        record.remember(i, change)
        logger.info("arm_kdump %s: changed %s %s", i, change.changed or "nothing", change.error)
    answering = {i: p for i, p in platforms.items() if changes[i].boot_id or not changes[i].error}
    rebooted, verdicts = reboot_and_wait(
        ec2, ssm, answering, {i: changes[i] for i in answering}, reboot, True, float(timeout), configuration
    )
    instances = {}
    for i, change in changes.items():
        verdict = verdicts.get(i, KdumpVerdict("unknown", reasons=[change.error]))
        pending = bool(change.reboot) and i not in rebooted and not change.error
        instances[i] = {
            "platform": change.platform,
            "changed": bool(change.changed),
            "settings": change.settings,
            "error": change.error,
            "reboot": change.reboot,
            "rebooted": i in rebooted,
            "pending_reboot": pending,
            "armed": verdict.verdict == "armed",
            "kdump": verdict.to_dict(),
        }
    failed = {
        i: r["error"] or f"kdump {r['kdump']['verdict']}: {'; '.join(r['kdump']['reasons'])}"
        for i, r in instances.items()
        if not r["armed"] and not r["pending_reboot"]
    }
    if failed:
        raise Ec2PanicError(
            "kdump could not be armed on every instance (what was changed is recorded in "
            f"{record.path} for restore_kdump_settings):\n"
            + "\n".join(f"  {i}: {why}" for i, why in sorted(failed.items()))
        )
    return {
        "selection": resolution.to_dict(),
        "changed": any(r["changed"] for r in instances.values()),
        "armed": all(r["armed"] for r in instances.values()),
        "instances": instances,
        "record": str(record.path),
    }


# collect_crash_dump ------------------------------------------------------------------------------
BUCKET_NAME = re.compile(r"\A[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
IP_ADDRESS = re.compile(r"\A[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\Z")
RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
COLLECT_CONCURRENCY = 10  # instances uploading at once, each through its own SSM command
# The folder a dump goes to under <prefix><instance id>/. Linux kdump writes a directory per crash:
# its name is kept. Windows rewrites one MEMORY.DMP: the folder is named by when it was written.
DUMP_FOLDERS: Dict[str, Callable[[Dict[str, Any]], str]] = {
    "linux": lambda dump: PurePosixPath(dump["path"]).parent.name,
    "windows": lambda dump: (
        f"{PureWindowsPath(dump['path']).stem}-{parse_iso(dump['written_at']):%Y%m%dT%H%M%SZ}"
    ),
}


def _bucket_problem(bucket: Any) -> str:
    """Why ``bucket`` is not an S3 bucket name ("" when it is one)."""
    if not isinstance(bucket, str) or not bucket:
        return "a bucket name is needed"
    if "/" in bucket:
        return "give the bucket's name alone, such as my-crash-dumps (the key prefix goes in prefix)"
    if not BUCKET_NAME.fullmatch(bucket):
        return "3 to 63 lowercase letters, digits, dots and hyphens, a letter or digit at each end"
    if ".." in bucket or IP_ADDRESS.fullmatch(bucket) or bucket.startswith(RESERVED_BUCKET_PREFIXES):
        return "no two dots in a row, not an IP address, not beginning with xn--, sthree- or amzn-s3-demo-"
    return ""


def _key_prefix(prefix: Any) -> str:
    """``prefix`` as a folder: no leading slash, one trailing slash (none when empty). It reaches
    the instance as a script variable, taken literally; a double quote is refused because Windows
    PowerShell would pass it on to the AWS CLI unescaped, splitting the destination."""
    if not isinstance(prefix, str) or any(c < " " or c == "\x7f" for c in prefix):
        raise InvalidRequest(
            f"prefix must be an S3 key prefix such as crash-dumps/, without control characters, "
            f"got {prefix!r}"
        )
    if '"' in prefix:
        raise InvalidRequest(
            f"prefix {prefix!r} holds a double quote, which cannot be passed safely to the AWS CLI on "
            "Windows: leave it out. Nothing was sent."
        )
    folder = prefix.lstrip("/")
    return folder if not folder or folder.endswith("/") else folder + "/"


def _check_bucket(s3: Any, bucket: str) -> None:
    """Refuse a bucket that does not exist or that these credentials cannot list (HeadBucket)."""
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = error_code(exc)
        why = {
            "404": "it does not exist: create it, or fix the name",
            "403": "these credentials may not list it (s3:ListBucket), or it is another account's",
        }.get(code, f"{code}: {exc}")
        raise Refused(f"bucket {bucket} cannot take the dumps: {why}") from exc


def _upload_each(
    ssm: Any,
    platforms: Mapping[str, Platform],
    files: Mapping[str, str],
    bucket: str,
    keys: Mapping[str, str],
    timeout: int,
) -> Dict[str, Upload]:
    """Run collect_crash_dump on each instance (its dump file and key differ: one command each)."""

    def upload(i: str) -> Upload:
        variables = {"DUMP_FILE": files[i], "BUCKET": bucket, "KEY": keys[i]}
        answer = run_script(ssm, {i: platforms[i]}, "collect_crash_dump", variables, timeout=timeout)[i]
        if not answer.ok:
            return Upload("", {}, f"not run: {answer.status} {answer.error}".rstrip())
        return upload_report(answer.stdout)

    with ThreadPoolExecutor(max_workers=min(COLLECT_CONCURRENCY, len(files))) as pool:
        return dict(zip(files, pool.map(upload, files), strict=True))


def _not_in_s3(s3: Any, bucket: str, key: str, files: Mapping[str, int]) -> str:
    """What S3 lacks of ``files`` (name -> size) under ``key``: missing, or of another size;
    "" when it holds them all (ListObjectsV2, so a check by the caller, not the instance's word)."""
    if not files:
        return "the instance uploaded no file"
    try:
        stored = {
            o["Key"][len(key) :]: o["Size"]
            for o in paginate(s3, "list_objects_v2", "Contents", Bucket=bucket, Prefix=key)
        }
    except ClientError as exc:
        return f"not verified: {error_code(exc)} listing s3://{bucket}/{key}"
    wrong = [
        f"{name} ({size} bytes on the instance, {stored.get(name, 'none')} in S3)"
        for name, size in sorted(files.items())
        if stored.get(name) != size
    ]
    return "not in S3 as sent: " + ", ".join(wrong) if wrong else ""


@requires(*RESOLVE, *RUN_SCRIPT, "s3:ListBucket")
def collect_crash_dump(
    bucket: str,
    prefix: str = "chaosec2panic/",
    instance_ids: List[str] = None,
    dump_dir: str = "",
    include_incomplete: bool = False,
    timeout: float = 3600,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Copy the crash dump of the last NMI on each hit instance (this run's, or the named
    instances' latest in the ledger) to S3 through SSM, for analysis with ``crash`` (WinDbg).

    The newest dump written after the NMI (as crash_dumps finds it: on Linux where kdump
    writes, unless ``dump_dir`` names the directory) goes with the files beside it (vmcore,
    dmesg) to ``s3://<bucket>/<prefix><instance id>/<its directory's name>/``; on Windows
    MEMORY.DMP goes to ``.../MEMORY-<written at, UTC>/``. The instance uploads it itself (``aws s3 cp``; on
    Windows Write-S3Object or the AWS CLI), so the instance's role needs s3:PutObject on the
    bucket (and kms:GenerateDataKey for an SSE-KMS bucket). The caller needs s3:ListBucket
    besides the SSM calls: it checks the bucket first (HeadBucket), and after each upload that
    every file is in S3 at the size the instance reported (ListObjectsV2). An incomplete dump
    (still named vmcore-incomplete or dump-incomplete, or so marked in its header) is reported
    and left unless ``include_incomplete``. Refuses, sending nothing, on a bucket name S3 would
    refuse, a bucket it cannot list, or no NMI in the ledger. Each upload may take ``timeout``
    seconds. Returns per instance: status (uploaded, incomplete, no-dump or failed), the dump's
    path and completeness, the S3 uri, each file's size, the bytes, the dump's problems and why
    the upload failed.
    """
    why = _bucket_problem(bucket)
    if why:
        raise InvalidRequest(f"bucket {bucket!r} is not an S3 bucket name: {why}. Nothing was sent.")
    key_prefix = _key_prefix(prefix)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 1:
        raise InvalidRequest(f"timeout must be a number of seconds >= 1, got {timeout!r}")
    if not judged_hits(configuration, instance_ids):
        raise InvalidRequest(
            f"no NMI of this run is in the ledger {Ledger.of(configuration).where}, so there is no "
            "dump to collect: send one first (send_nmi), or name instance_ids hit before. Nothing was sent."
        )
    s3 = client("s3", configuration, secrets)
    _check_bucket(s3, bucket)
    found = crash_dumps(instance_ids, dump_dir, configuration, secrets)["instances"]
    instances: Dict[str, Dict[str, Any]] = {}
    chosen: Dict[str, Dict[str, Any]] = {}
    for i, dump in found.items():
        verdict = dump["verdict"]
        instances[i] = {
            "status": "",
            "nmi_sent_at": dump["nmi_sent_at"],
            "path": dump.get("path", ""),
            "complete": {"complete-dump": True, "incomplete-dump": False}.get(verdict),
            "uri": "",
            "files": {},
            "bytes": 0,
            "problems": dump.get("problems", []),
            "error": "",
        }
        if verdict == "unknown":
            listing = "; ".join(instances[i]["problems"])
            instances[i].update(status="failed", error=f"the dumps could not be listed: {listing}")
        elif verdict in ("no-dump", "only-older-dumps"):
            instances[i]["status"] = "no-dump"
        elif verdict == "incomplete-dump" and not include_incomplete:
            instances[i]["status"] = "incomplete"
        else:
            chosen[i] = dump
    if chosen:
        platforms = platforms_of(client("ec2", configuration, secrets), sorted(chosen))
        keys = {i: f"{key_prefix}{i}/{DUMP_FOLDERS[platforms[i].name](d)}/" for i, d in chosen.items()}
        files = {i: d["path"] for i, d in chosen.items()}
        ssm = client("ssm", configuration, secrets)
        for i, upload in _upload_each(ssm, platforms, files, bucket, keys, int(timeout)).items():
            error = upload.error or _not_in_s3(s3, bucket, keys[i], upload.files)
            instances[i].update(
                status="failed" if error else "uploaded",
                uri=f"s3://{bucket}/{keys[i]}",
                files=upload.files,
                bytes=sum(upload.files.values()),
                error=error,
            )
    for i, r in instances.items():
        if r["status"] == "uploaded":
            logger.info("crash dump of %s: %d bytes in %s", i, r["bytes"], r["uri"])
        else:
            logger.warning("crash dump of %s %s: %s", i, r["status"], r["error"] or "; ".join(r["problems"]))
    return {"bucket": bucket, "instances": instances}
