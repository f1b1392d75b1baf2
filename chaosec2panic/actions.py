"""Actions: send the diagnostic interrupt (NMI), guarded."""

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

from botocore.exceptions import BotoCoreError, ClientError
from chaoslib.types import Configuration, Secrets

from .aws import THROTTLING_CODES, RetryPolicy, client, error_code, without_sdk_retries
from .errors import Ec2PanicError, InvalidRequest, Refused, StopConditionMet
from .guest import platform_of
from .health import observe
from .iam import OBSERVE, RESOLVE_GUARDED, STOP_ALARMS, requires
from .ledger import Injection, Ledger
from .readiness import kdump_verdicts, permission
from .recovery import is_back, is_up, now_iso
from .settings import settings
from .stopconditions import check_stop, stop_alarms
from .targets import Request, guardrails, resolve

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
    Returns the selection and one record per instance: id, sent_at (UTC), outcome
    (sent, failed, unknown) and error.
    """
    ledger = Ledger.of(configuration)
    try:
        return _send_nmi(
            ledger,
            Request(instance_ids or (), filters or (), tags or {}, count, percent, seed),
            max_instances,
            allow_unarmed,
            force,
            max_concurrency,
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
    if alarms:
        check_stop(alarms, configuration, secrets)
    anchors = {i: _console_anchor(ec2, i) for i in resolution.ids}
    nmi_ec2 = without_sdk_retries(client("ec2", configuration, secrets))
    with ThreadPoolExecutor(max_workers=min(max_concurrency, len(resolution.ids))) as pool:
        answers = dict(
            zip(resolution.ids, pool.map(lambda i: _send_one(nmi_ec2, i, retry), resolution.ids), strict=True)
        )
    injections = [
        Injection(
            i,
            sent_at,
            outcome,
            region=ec2.meta.region_name,
            error=error,
            boot_id_before=verdicts[i].facts.get("boot_id", ""),
            console_anchor=anchors[i],
        )
        for i, (sent_at, outcome, error) in answers.items()
    ]
    ledger.record(injections)
    for e in injections:
        logger.info("NMI %s to %s at %s %s", e.outcome, e.instance_id, e.sent_at, e.error)
    if not any(e.hit for e in injections):
        raise Ec2PanicError(
            "no NMI was sent: " + "; ".join(f"{e.instance_id}: {e.error}" for e in injections)
        )
    return {
        "selection": resolution.to_dict(),
        "injections": [
            {k: e.to_dict()[k] for k in ("instance_id", "sent_at", "outcome", "error")} for e in injections
        ],
        "ledger": str(ledger.path),
    }
