"""Who gets hit: resolve ids, filters and tags to instances, select, and apply the guardrails.

The checks and the selection are pure functions on DescribeInstances / DescribeInstanceTypes
records; :func:`resolve` is the only part that calls AWS, and every activity that touches
instances goes through it.
"""

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence

from botocore.exceptions import ClientError, NoCredentialsError
from chaoslib.types import Configuration

from .aws import error_code, paginate
from .errors import InvalidRequest, Refused
from .settings import settings

__all__ = [
    "Guardrails",
    "Request",
    "Resolution",
    "batches",
    "choose",
    "describe",
    "guardrail_checks",
    "guardrails",
    "instance_types",
    "nmi_support",
    "refusals",
    "resolve",
]

AUTH_ERRORS = frozenset(
    {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "ExpiredToken", "SignatureDoesNotMatch"}
)
INSTANCE_ID = re.compile(r"\Ai-(?:[0-9a-f]{8}|[0-9a-f]{17})\Z")  # the whole id: $ would take "...\n"


@dataclass(frozen=True)
class Guardrails:
    """The checks every target must pass. Opt-in tag from configuration, cap per call."""

    opt_in_key: str
    opt_in_value: str
    max_instances: int


def guardrails(configuration: Configuration | None, max_instances: int) -> Guardrails:
    """Guardrails from the configured opt-in tag and ``max_instances``."""
    if isinstance(max_instances, bool) or not isinstance(max_instances, int) or max_instances < 1:
        raise InvalidRequest(f"max_instances must be a whole number >= 1, got {max_instances!r}")
    found = settings(configuration)
    return Guardrails(found.opt_in_key, found.opt_in_value, max_instances)


@dataclass(frozen=True)
class Request:
    """What the experiment asked for: ids and/or filters/tags, and how many to pick."""

    instance_ids: Sequence[str] = ()
    filters: Sequence[Mapping[str, Any]] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    count: int | None = None
    percent: float | None = None
    seed: int | None = None

    def problems(self) -> List[str]:
        """What is wrong with the request itself, before any AWS call."""
        found = []
        if not (self.instance_ids or self.filters or self.tags):
            found.append("name the targets: instance_ids, filters or tags (none was given)")
        bad = [i for i in self.instance_ids if not isinstance(i, str) or not INSTANCE_ID.fullmatch(i)]
        if bad:
            found.append(f"malformed instance ids {bad}: expected i- and 8 or 17 hex digits")
        for f in self.filters:
            if not isinstance(f, Mapping) or "Name" not in f or not isinstance(f.get("Values"), list):
                found.append(f"filter {f!r}: expected {{'Name': ..., 'Values': [...]}}")
        if self.count is not None and self.percent is not None:
            found.append("give count or percent, not both")
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count <= 0
        ):
            found.append(f"count must be a whole number > 0, got {self.count!r}")
        if self.percent is not None and (
            isinstance(self.percent, bool)
            or not isinstance(self.percent, int | float)
            or not 0 < self.percent <= 100
        ):
            found.append(f"percent must be in (0, 100], got {self.percent!r}")
        return found

    def describe_params(self) -> Dict[str, Any]:
        filters = [dict(f) for f in self.filters]
        filters += [{"Name": f"tag:{k}", "Values": [str(v)]} for k, v in self.tags.items()]
        params: Dict[str, Any] = {}
        if self.instance_ids:
            params["InstanceIds"] = sorted(set(self.instance_ids))
        if filters:
            params["Filters"] = filters
        return params


def nmi_support(instance: Mapping[str, Any], type_info: Mapping[str, Any] | None) -> str | None:
    """Why this instance's type cannot take a diagnostic interrupt, or None when it can."""
    itype = instance.get("InstanceType", "?")
    if type_info is None:
        return f"instance type {itype} is unknown to DescribeInstanceTypes"
    if itype.startswith("a1."):
        return f"instance type {itype} (A1) does not support diagnostic interrupts"
    architectures = type_info.get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"])
    if instance.get("Architecture", "x86_64") != "x86_64" or "x86_64" not in architectures:
        found = instance.get("Architecture") if "x86_64" in architectures else "/".join(architectures)
        return f"architecture {found} is not x86_64 (diagnostic interrupts are delivered to Intel and AMD)"
    if not type_info.get("BareMetal") and type_info.get("Hypervisor") != "nitro":
        return (
            f"instance type {itype} runs on the {type_info.get('Hypervisor') or 'unknown'} "
            "hypervisor; diagnostic interrupts need a Nitro or bare metal type"
        )
    return None


def guardrail_checks(
    instance: Mapping[str, Any], type_info: Mapping[str, Any] | None, guard: Guardrails
) -> Dict[str, str | None]:
    """Each guardrail an instance must pass on its own: None when it passes, else why not."""
    state = instance.get("State", {}).get("Name", "unknown")
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    return {
        "running": None if state == "running" else f"state is {state}, not running",
        "opt_in": None
        if tags.get(guard.opt_in_key) == guard.opt_in_value
        else f"missing opt-in tag {guard.opt_in_key}={guard.opt_in_value}",
        "type": nmi_support(instance, type_info),
    }


def refusals(
    instances: Sequence[Mapping[str, Any]], types: Mapping[str, Mapping[str, Any]], guard: Guardrails
) -> Dict[str, str]:
    """Each instance that fails a guardrail, with every reason it fails."""
    found: Dict[str, str] = {}
    for inst in instances:
        checks = guardrail_checks(inst, types.get(inst.get("InstanceType", "")), guard)
        reasons = [why for why in checks.values() if why]
        if reasons:
            found[inst["InstanceId"]] = "; ".join(reasons)
    return found


def choose(
    ids: Sequence[str], count: int | None, percent: float | None, seed: int | None
) -> tuple[List[str], int | None]:
    """Pick ``count`` or ``percent`` of ``ids`` at random (all when neither); returns the seed used."""
    ordered = sorted(set(ids))
    if count is None and percent is None:
        return ordered, None
    wanted = count if count is not None else math.ceil(len(ordered) * float(percent or 0) / 100)
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    picked = random.Random(seed).sample(ordered, min(max(wanted, 1), len(ordered)))
    return sorted(picked), seed


def batches(ids: Sequence[str], size: int | None, percent: float | None) -> List[List[str]]:
    """``ids`` in consecutive batches of ``size``, or of ``percent`` of them (rounded up); one batch
    when neither is given."""
    if size is not None and percent is not None:
        raise InvalidRequest("give batch_size or batch_percent, not both")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise InvalidRequest(f"batch_size must be a whole number >= 1, got {size!r}")
    if percent is not None and (
        isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 < percent <= 100
    ):
        raise InvalidRequest(f"batch_percent must be in (0, 100], got {percent!r}")
    step = size if size is not None else math.ceil(len(ids) * float(percent or 100) / 100)
    step = max(1, step)
    return [list(ids[n : n + step]) for n in range(0, len(ids), step)]


@dataclass(frozen=True)
class Resolution:
    """The instances chosen, and how: recorded in every activity's output."""

    chosen: List[Dict[str, Any]]
    matched: List[str]
    seed: int | None

    @property
    def ids(self) -> List[str]:
        return [i["InstanceId"] for i in self.chosen]

    def to_dict(self) -> Dict[str, Any]:
        return {"matched": self.matched, "chosen": self.ids, "seed": self.seed}


def describe(ec2: Any, request: Request) -> List[Dict[str, Any]]:
    try:
        found = [
            inst
            for r in paginate(ec2, "describe_instances", "Reservations", **request.describe_params())
            for inst in r.get("Instances", [])
        ]
    except NoCredentialsError as exc:
        raise InvalidRequest(
            "no AWS credentials: give the aws secrets, a profile (aws_profile_name) or the usual "
            "environment variables. Nothing was sent."
        ) from exc
    except ClientError as exc:
        code = error_code(exc)
        if code in AUTH_ERRORS:
            raise InvalidRequest(f"{code}: the credentials were refused ({exc}). Nothing was sent.") from exc
        if code.startswith("InvalidInstanceID"):
            raise InvalidRequest(
                f"{code}: {exc.response['Error'].get('Message', '')}. "
                "Check the instance ids and the region. Nothing was sent."
            ) from exc
        raise
    unique = {inst["InstanceId"]: inst for inst in found}
    return [unique[i] for i in sorted(unique)]


def instance_types(ec2: Any, names: List[str]) -> Dict[str, Dict[str, Any]]:
    if not names:
        return {}
    try:
        infos = paginate(ec2, "describe_instance_types", "InstanceTypes", InstanceTypes=names)
        return {t["InstanceType"]: t for t in infos}
    except ClientError as exc:
        if error_code(exc) != "InvalidInstanceType":
            raise
        return {}


def resolve(ec2: Any, request: Request, guard: Guardrails | None) -> Resolution:
    """Resolve ``request`` to instances; with ``guard``, refuse unless every match passes it.

    Read-only probes pass no guard; everything that acts on an instance passes one.
    """
    problems = request.problems()
    if problems:
        raise InvalidRequest("; ".join(problems) + ". Nothing was sent.")
    matched = describe(ec2, request)
    if not matched:
        raise Refused(
            f"no instance matches {request.describe_params()}; check the ids, filters, tags and region"
        )
    by_id = {i["InstanceId"]: i for i in matched}
    if guard is None:
        chosen_ids, seed = choose(list(by_id), request.count, request.percent, request.seed)
        return Resolution([by_id[i] for i in chosen_ids], sorted(by_id), seed)
    types = instance_types(ec2, sorted({i.get("InstanceType", "") for i in matched}))
    refused = refusals(matched, types, guard)
    if refused:
        raise Refused(
            f"{len(refused)} of {len(matched)} matched instances fail a guardrail "
            "(narrow the filters or fix the instances)",
            refused,
        )
    chosen_ids, seed = choose(list(by_id), request.count, request.percent, request.seed)
    if len(chosen_ids) > guard.max_instances:
        raise Refused(
            f"the selection holds {len(chosen_ids)} instances, more than max_instances="
            f"{guard.max_instances}; raise max_instances or select fewer"
        )
    return Resolution([by_id[i] for i in chosen_ids], sorted(by_id), seed)
