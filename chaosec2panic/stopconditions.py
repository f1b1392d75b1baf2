"""Stop conditions: CloudWatch alarms that, in any state but OK, forbid any further NMI.

Alarms are named, given by ARN, or found by their tags. They fail closed: an alarm in ALARM,
one that does not exist or cannot be read, and one in INSUFFICIENT_DATA (its metric is not
reported, which is also how a service too broken to report it looks) all stop the NMI; only
the alarms named in ``chaosec2panic_stop_alarms_insufficient_data_ok`` may be INSUFFICIENT_DATA
(a metric reported only when something goes wrong). Declared once in the configuration
(``chaosec2panic_stop_alarms``: ``names``, ``arns``, ``tags``), they are checked by ``send_nmi``
immediately before it sends (and before each batch) and, continuously, by the control in
:mod:`chaosec2panic.controls.alarms`, with the same rule.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

from botocore.exceptions import BotoCoreError, ClientError
from chaoslib.types import Configuration, Secrets

from .aws import client, error_code, paginate
from .errors import InvalidRequest, StopConditionMet
from .recovery import now_iso
from .settings import settings

__all__ = ["StopAlarms", "alarm_states", "check_stop", "stop_alarms", "stop_reason"]

ALARM_TYPES = ["MetricAlarm", "CompositeAlarm"]


@dataclass(frozen=True)
class StopAlarms:
    names: List[str] = field(default_factory=list)
    arns: List[str] = field(default_factory=list)
    tags: Dict[str, str] = field(default_factory=dict)
    insufficient_data_ok: Tuple[str, ...] = ()  # alarm names that may be INSUFFICIENT_DATA

    @property
    def wanted(self) -> List[str]:
        """The alarm names asked for by name or by ARN."""
        return sorted({*self.names, *(a.split(":alarm:", 1)[-1] for a in self.arns)})


def stop_alarms(
    configuration: Configuration | None, override: Mapping[str, Any] | None = None
) -> StopAlarms | None:
    """The stop alarms of ``override`` (a control's arguments) or of the configuration, if any,
    with the configuration's alarms that may be INSUFFICIENT_DATA."""
    spec = override or (configuration or {}).get("chaosec2panic_stop_alarms")
    if not spec:
        return None
    if not isinstance(spec, Mapping) or set(spec) - {"names", "arns", "tags"}:
        raise InvalidRequest(f"stop alarms take names, arns and tags, got {spec!r}")
    bad_arns = [a for a in spec.get("arns") or [] if ":alarm:" not in str(a)]
    if bad_arns:
        raise InvalidRequest(f"not CloudWatch alarm ARNs: {bad_arns}")
    alarms = StopAlarms(
        list(spec.get("names") or []),
        list(spec.get("arns") or []),
        dict(spec.get("tags") or {}),
        settings(configuration).insufficient_data_ok,
    )
    if not (alarms.wanted or alarms.tags):
        raise InvalidRequest("stop alarms are declared but name no alarm (names, arns or tags)")
    return alarms


def alarm_states(cloudwatch: Any, alarms: StopAlarms) -> List[Dict[str, str]]:
    """Each alarm asked for: name, state (``NOT_FOUND`` when it does not exist) and since when."""
    found: Dict[str, Dict[str, str]] = {}

    def keep(alarm: Mapping[str, Any]) -> None:
        found[alarm["AlarmName"]] = {
            "name": alarm["AlarmName"],
            "arn": alarm.get("AlarmArn", ""),
            "state": alarm.get("StateValue") or "UNKNOWN",
            "since": str(alarm.get("StateUpdatedTimestamp", "")),
            "reason": alarm.get("StateReason", ""),
        }

    if alarms.wanted:
        for page in cloudwatch.get_paginator("describe_alarms").paginate(
            AlarmNames=alarms.wanted, AlarmTypes=ALARM_TYPES
        ):
            for alarm in page.get("MetricAlarms", []) + page.get("CompositeAlarms", []):
                keep(alarm)
    states = [
        found.get(n, {"name": n, "arn": "", "state": "NOT_FOUND", "since": "", "reason": ""})
        for n in alarms.wanted
    ]
    if alarms.tags:
        tagged = []
        for kind in ("MetricAlarms", "CompositeAlarms"):
            for alarm in paginate(cloudwatch, "describe_alarms", kind, AlarmTypes=ALARM_TYPES):
                tags = cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"]).get("Tags", [])
                if {t["Key"]: t["Value"] for t in tags}.items() >= alarms.tags.items():
                    keep(alarm)
                    tagged.append(found[alarm["AlarmName"]])
        if not tagged:
            states.append(
                {"name": f"tags {alarms.tags}", "arn": "", "state": "NOT_FOUND", "since": "", "reason": ""}
            )
        states += [s for s in tagged if s["name"] not in alarms.wanted]
    return states


def stop_reason(states: List[Mapping[str, str]], insufficient_data_ok: Tuple[str, ...] = ()) -> str | None:
    """Why the states forbid an NMI, or None when every alarm is OK (or INSUFFICIENT_DATA and
    named in ``insufficient_data_ok``). Firing alarms come first."""
    firing: List[str] = []
    other: List[str] = []
    missing: List[str] = []
    for s in states:
        state, name = s["state"], s["name"]
        if state == "OK" or (state == "INSUFFICIENT_DATA" and name in insufficient_data_ok):
            continue
        if state == "ALARM":
            firing.append(f"alarm {name} is in ALARM since {s['since']} ({s['reason']})")
        elif state == "NOT_FOUND":
            missing.append(name)
        elif state == "INSUFFICIENT_DATA":
            other.append(
                f"alarm {name} is in INSUFFICIENT_DATA since {s['since']} ({s['reason']}): its metric is "
                "not reported, as when the service is too broken to report it; fix the metric, or name "
                "the alarm in chaosec2panic_stop_alarms_insufficient_data_ok if it reports only failures"
            )
        else:
            other.append(f"alarm {name} is in state {state}, not OK")
    if missing:
        other.append(f"stop alarm not found: {', '.join(missing)} (fix the name, ARN, tags or region)")
    return "; ".join(firing + other) or None


def check_stop(alarms: StopAlarms, configuration: Configuration, secrets: Secrets) -> Dict[str, Any]:
    """Read the alarms now; raise StopConditionMet when one forbids an NMI. Returns what was seen."""
    try:
        states = alarm_states(client("cloudwatch", configuration, secrets), alarms)
    except (ClientError, BotoCoreError) as exc:
        raise StopConditionMet(
            f"stop alarms cannot be read ({error_code(exc)}: {exc}); nothing is sent"
        ) from exc
    reason = stop_reason(states, alarms.insufficient_data_ok)
    seen = {"checked_at": now_iso(), "alarms": states}
    if reason:
        raise StopConditionMet(f"stop condition at {seen['checked_at']}: {reason}")
    return seen
