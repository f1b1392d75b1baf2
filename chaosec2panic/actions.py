"""Actions: send the diagnostic interrupt (NMI), guarded."""

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List

from botocore.exceptions import BotoCoreError, ClientError
from chaoslib.types import Configuration, Secrets

from .aws import THROTTLING_CODES, RetryPolicy, client, error_code, without_sdk_retries
from .errors import Ec2PanicError, InvalidRequest, Refused, StopConditionMet
from .guest import platform_of
from .health import observe, wait_for_recovery
from .iam import OBSERVE, RESOLVE_GUARDED, STOP_ALARMS, requires
from .ledger import Injection, Ledger
from .readiness import kdump_verdicts, permission
from .recovery import is_back, is_up, now_iso
from .settings import settings
from .stopconditions import check_stop, stop_alarms
from .targets import Request, batches, guardrails, resolve

__all__ = ["send_nmi"]

logger = logging.getLogger("chaostoolkit")
CONSOLE_ANCHOR_CHARS = 512


def _console_anchor(ec2: Any, instance_id: str) -> str:
    try:
        text = ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""
    except ClientError:
        return ""
    return text[-CONSOLE_ANCHOR_CHARS:]


def _send_one(ec2: Any, instance_id: str, retry: RetryPolicy) -> tuple[str, str, str]:
    sent_at = now_iso()
    try:
        retry.call(ec2.send_diagnostic_interrupt, InstanceId=instance_id)
        return sent_at, "sent", ""
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        # Throttled requests were refused before acting; other 5xx answers may have acted.
        outcome = "unknown" if status >= 500 and error_code(exc) not in THROTTLING_CODES else "failed"
        return sent_at, outcome, f"{error_code(exc)}: {exc.response['Error'].get('Message', '')}"
    except BotoCoreError as exc:
        return sent_at, "unknown", f"{type(exc).__name__}: {exc}"


def _unrecovered(ledger: Ledger, ec2: Any, ssm: Any, platforms: Dict[str, Any]) -> Dict[str, str]:
    """Instances hit before that do not serve now; marks those back in a new boot as recovered."""
    pending = {i: e for i, e in ledger.unrecovered().items() if i in platforms}
    if not pending:
        return {}
    seen = observe(ec2, ssm, {i: platforms[i] for i in pending})
    refused = {}
    for i, entry in pending.items():
        if is_back(seen[i], entry.sent_at, entry.boot_id_before):
            ledger.update(i, entry.sent_at, recovered_at=seen[i].at)
        elif not is_up(seen[i]):
            refused[i] = (
                f"hit at {entry.sent_at} and not seen back since ({seen[i].detail}); "
                "recover it (chaosec2panic recover) or pass force=true"
            )
    return refused


@requires(*RESOLVE_GUARDED, *OBSERVE, *STOP_ALARMS, "ec2:GetConsoleOutput", "ec2:SendDiagnosticInterrupt")
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
    back (``force`` to skip), EC2 DryRun grants permission, and no stop alarm
    (``chaosec2panic_stop_alarms`` in the configuration) is in ALARM or missing. Throttled
    calls are retried; no request is ever sent twice. Each injection and refusal goes to the ledger.
    A rolling rollout hits ``batch_size`` (or ``batch_percent``) instances at a time and
    waits for each batch to be back before the next (or ``batch_pause`` seconds instead);
    a batch not back within ``batch_slo`` seconds, or a stop alarm, halts it and the rest
    are never hit. Returns the selection, the batches, why the rollout halted (if it did)
    and one record per instance: id, batch, sent_at (UTC), outcome (sent, failed, unknown,
    or skipped when a halt kept it from being hit) and error.
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

    verdicts = kdump_verdicts(ssm, platforms, 0.0)
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
    if not force:
        unrecovered = _unrecovered(ledger, ec2, ssm, platforms)
        if unrecovered:
            raise Refused("an instance was hit before and has not come back", unrecovered)
    denied = {i: why for i in resolution.ids if (why := permission(ec2, i, retry))}
    if denied:
        raise Refused("EC2 DryRun did not grant the interrupt", denied)

    alarms = stop_alarms(configuration)
    plan = batches(resolution.ids, rollout.size, rollout.percent)
    nmi_ec2 = without_sdk_retries(client("ec2", configuration, secrets))
    injections: List[Injection] = []
    halted = ""
    for number, batch in enumerate(plan, 1):
        if alarms:
            try:
                check_stop(alarms, configuration, secrets)
            except StopConditionMet as exc:
                if number == 1:
                    raise
                halted = f"before batch {number}: {exc}"
                break
        anchors = {i: _console_anchor(ec2, i) for i in batch}
        with ThreadPoolExecutor(max_workers=min(max_concurrency, len(batch))) as pool:
            answers = dict(zip(batch, pool.map(lambda i: _send_one(nmi_ec2, i, retry), batch), strict=True))
        sent = [
            Injection(
                i,
                sent_at,
                outcome,
                region=ec2.meta.region_name,
                error=error,
                boot_id_before=verdicts[i].facts.get("boot_id", ""),
                console_anchor=anchors[i],
                batch=number,
            )
            for i, (sent_at, outcome, error) in answers.items()
        ]
        ledger.record(sent)
        injections += sent
        for e in sent:
            logger.info(
                "NMI %s to %s at %s (batch %d) %s", e.outcome, e.instance_id, e.sent_at, number, e.error
            )
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
        {k: e.to_dict()[k] for k in ("instance_id", "batch", "sent_at", "outcome", "error")}
        for e in injections
    ]
    records += [
        {"instance_id": i, "batch": n, "sent_at": "", "outcome": "skipped", "error": halted}
        for n, batch in enumerate(plan, 1)
        for i in batch
        if i in skipped
    ]
    return {
        "selection": resolution.to_dict(),
        "batches": plan,
        "halted": halted or None,
        "injections": records,
        "ledger": str(ledger.path),
    }


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
    back = wait_for_recovery(
        ec2,
        ssm,
        ledger,
        hits,
        platforms,
        time.monotonic() + rollout.slo,
        settings(configuration).poll_interval,
    )
    late = sorted(i for i, s in back.items() if s is None or s > rollout.slo)
    return f"not back within the batch SLO of {rollout.slo:g}s: {', '.join(late)}" if late else ""
