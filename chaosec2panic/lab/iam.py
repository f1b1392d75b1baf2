"""IAM in the lab: whose key signed a request, and whether that identity's policies allow the call.

The lab's own credentials (the operator's and the guests') are all-powerful, as an administrator's.
Any other key must be an active access key of an IAM user made through the lab's IAM API: moto
holds the users, keys and policies; this module evaluates them, because moto's own enforcement
ignores Resource and Condition (a failed condition even turns an Allow into a Deny, an unknown
operator passes). Evaluated as AWS evaluates identity-based policies: an explicit Deny wins, else
some Allow must match the action, every resource the call touches, and its conditions. A condition
the lab cannot evaluate fails closed: an Allow with it does not apply, a Deny with it does.
"""

import base64
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Sequence

from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.iam.models import IAMBackend, iam_backends

from .protocol import ApiError, Request, list_param

__all__ = ["Caller", "Decision", "Keys", "action_of", "authorize", "caller", "evaluate", "resources_of"]

logger = logging.getLogger("chaosec2panic.lab")

# The IAM service prefix of a signed-for service, where they differ.
IAM_PREFIX = {"monitoring": "cloudwatch"}
# S3 operations whose IAM action has another name.
S3_ACTIONS = {
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "HeadBucket": "ListBucket",
    "HeadObject": "GetObject",
    "ListBuckets": "ListAllMyBuckets",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "ListParts": "ListMultipartUploadParts",
}
# EC2 operations on named instances (the Service Authorization Reference's instance* resource).
EC2_ONE_INSTANCE = frozenset({"SendDiagnosticInterrupt", "GetConsoleOutput"})
EC2_INSTANCES = frozenset({"RebootInstances", "StartInstances", "StopInstances", "TerminateInstances"})
# What any identity may call, whatever its policies say (as AWS).
ALWAYS_ALLOWED = frozenset({"sts:GetCallerIdentity"})
STRING_TESTS = {
    "StringEquals": lambda want, got: want == got,
    "StringEqualsIgnoreCase": lambda want, got: want.lower() == got.lower(),
    "StringLike": lambda want, got: _glob(want).fullmatch(got) is not None,
    "ArnEquals": lambda want, got: _arn_like(want, got),
    "ArnLike": lambda want, got: _arn_like(want, got),
    "Bool": lambda want, got: want.lower() == got.lower(),
}
NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}


@dataclass(frozen=True)
class Decision:
    """Whether a call is allowed; if not, on which resource and whether by an explicit Deny."""

    allowed: bool
    resource: str = ""
    explicit_deny: bool = False
    statement: str = ""  # the Sid (or position) of the statement that allowed or denied


@dataclass(frozen=True)
class Caller:
    """An IAM user whose access key signed a request, and its identity-based policies."""

    arn: str
    name: str
    policies: List[Dict[str, Any]]


def _glob(pattern: str, flags: int = 0) -> "re.Pattern[str]":
    """IAM's wildcards: ``*`` any run of characters, ``?`` any one."""
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), flags | re.DOTALL)


def _arn_like(pattern: str, arn: str) -> bool:
    """ArnLike: each of the six colon-separated parts matched on its own."""
    want, got = pattern.split(":", 5), arn.split(":", 5)
    return len(want) == len(got) == 6 and all(_glob(w).fullmatch(g) for w, g in zip(want, got, strict=True))


def _listed(value: Any) -> List[str]:
    items = value if isinstance(value, list) else [value]
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in items]


def _condition_holds(operator: str, key: str, wanted: List[str], context: Mapping[str, str]) -> bool | None:
    """One condition key under one operator; None when the lab does not know the operator."""
    got = context.get(key.lower())
    if operator == "Null":
        return (got is None) == (wanted[0].lower() == "true") if wanted else None
    base, if_exists = operator.removesuffix("IfExists"), operator.endswith("IfExists")
    if base in NEGATED:
        if got is None:
            return True
        return not any(STRING_TESTS[NEGATED[base]](w, got) for w in wanted)
    if base not in STRING_TESTS:
        return None
    if got is None:
        return if_exists
    return any(STRING_TESTS[base](w, got) for w in wanted)


def _conditions_hold(statement: Mapping[str, Any], context: Mapping[str, str], sid: str) -> bool | None:
    """Every condition of a statement (all operators, all keys); None if one cannot be evaluated."""
    conditions = statement.get("Condition") or {}
    if not isinstance(conditions, Mapping):
        logger.warning("IAM statement %s: Condition is not an object; failing closed", sid)
        return None
    verdict: bool | None = True
    for operator, keys in conditions.items():
        if not isinstance(keys, Mapping):
            return None
        for key, wanted in keys.items():
            holds = _condition_holds(operator, key, _listed(wanted), context)
            if holds is None:
                logger.warning(
                    "IAM statement %s: the lab does not evaluate the condition operator %s; "
                    "failing closed (an Allow with it does not apply, a Deny does)",
                    sid,
                    operator,
                )
                return None
            verdict = verdict and holds
    return verdict


def _matches(statement: Mapping[str, Any], element: str, value: str, flags: int) -> bool:
    """Whether ``value`` is named by the statement's ``element`` (or left out by its Not form)."""
    if element in statement:
        return any(_glob(p, flags).fullmatch(value) for p in _listed(statement[element]))
    if f"Not{element}" in statement:
        return not any(_glob(p, flags).fullmatch(value) for p in _listed(statement[f"Not{element}"]))
    return False


def evaluate(
    policies: Sequence[Mapping[str, Any]],
    action: str,
    resources: Mapping[str, Mapping[str, str]],
    context: Mapping[str, str],
) -> Decision:
    """Whether identity-based ``policies`` allow ``action`` on every one of ``resources``.

    ``resources`` maps each ARN the call touches ("*" for actions without resource types) to its
    own condition keys (its tags as ``aws:ResourceTag/<key>``); ``context`` holds the request's
    (``aws:RequestedRegion``...). Condition key names are compared without case.
    """
    statements = [
        (str(s.get("Sid") or f"{p}.{i}"), s)
        for p, policy in enumerate(policies)
        for i, s in enumerate(_listed_statements(policy))
    ]
    allowed_by = ""
    for resource, own in resources.items():
        keys = {**{k.lower(): v for k, v in context.items()}, **{k.lower(): v for k, v in own.items()}}
        allowed_by = ""
        for sid, statement in statements:
            if not _matches(statement, "Action", action, re.IGNORECASE):
                continue
            if not _matches(statement, "Resource", resource, 0):
                continue
            holds = _conditions_hold(statement, keys, sid)
            if statement.get("Effect") == "Deny" and holds is not False:
                return Decision(False, resource, explicit_deny=True, statement=sid)
            if statement.get("Effect") == "Allow" and holds:
                allowed_by = allowed_by or sid
        if not allowed_by:
            return Decision(False, resource)
    return Decision(True, statement=allowed_by)


def _listed_statements(policy: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    found = policy.get("Statement", [])
    return [s for s in (found if isinstance(found, list) else [found]) if isinstance(s, Mapping)]


def _backend() -> IAMBackend:
    return iam_backends[DEFAULT_ACCOUNT_ID]["aws"]


def _document(text: Any) -> Dict[str, Any]:
    return json.loads(text) if isinstance(text, str) else dict(text)


def caller(access_key: str) -> Caller | None:
    """The IAM user whose active access key this is, with its inline and attached policies and
    its groups'; None when no user of the lab's IAM has it."""
    backend = _backend()
    for user in list(backend.users.values()):
        if not any(k.access_key_id == access_key and k.status == "Active" for k in user.access_keys):
            continue
        holders = [user, *backend.get_groups_for_user(user.name)]
        documents = [_document(d) for h in holders for d in h.policies.values()]
        for holder in holders:
            for managed in holder.managed_policies.values():
                default = next(v for v in managed.versions if v.is_default)
                documents.append(_document(default.document))
        return Caller(f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:user/{user.name}", user.name, documents)
    return None


class Keys(Mapping[str, str]):
    """The secrets of the keys the lab takes: its own, then its IAM users' active access keys."""

    def __init__(self, own: Mapping[str, str]):
        self.own = dict(own)

    def _users(self) -> Dict[str, str]:
        return {
            k.access_key_id: k.secret_access_key
            for user in list(_backend().users.values())
            for k in user.access_keys
            if k.status == "Active"
        }

    def __getitem__(self, key: str) -> str:
        return self.own[key] if key in self.own else self._users()[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**self._users(), **self.own})

    def __len__(self) -> int:
        return len({**self._users(), **self.own})


def _instance(region: str, instance_id: str) -> str:
    return f"arn:aws:ec2:{region}:{DEFAULT_ACCOUNT_ID}:instance/{instance_id}"


def resources_of(request: Request, path: str = "") -> List[str]:
    """The ARNs a call touches, as the Service Authorization Reference lists its resource types;
    ["*"] for actions that take none (Describe*, List*...). ``path`` is an S3 request's."""
    region, operation = request.region, request.operation
    if request.service == "ec2" and operation in EC2_ONE_INSTANCE:
        return [_instance(region, request.param("InstanceId"))]
    if request.service == "ec2" and operation in EC2_INSTANCES:
        return [_instance(region, i) for i in list_param(request.form, "InstanceId")] or ["*"]
    if request.service == "ssm" and operation == "SendCommand":
        document = str(request.json.get("DocumentName", ""))
        if not document.startswith("arn:"):
            document = f"arn:aws:ssm:{region}::document/{document}"
        return [*(_instance(region, str(i)) for i in request.json.get("InstanceIds") or []), document]
    if request.service == "dynamodb":
        tables = [request.json.get("TableName"), *(request.json.get("RequestItems") or {})]
        tables += [  # TransactWriteItems/TransactGetItems: [{"Put": {"TableName": ...}}, ...]
            part.get("TableName")
            for item in request.json.get("TransactItems") or []
            for part in item.values()
            if isinstance(part, Mapping)
        ]
        names = sorted({str(t) for t in tables if t})
        return [f"arn:aws:dynamodb:{region}:{DEFAULT_ACCOUNT_ID}:table/{t}" for t in names] or ["*"]
    if request.service == "s3":
        bucket, _, key = path.lstrip("/").partition("/")
        if not bucket:
            return ["*"]
        return [f"arn:aws:s3:::{bucket}/{key}" if key else f"arn:aws:s3:::{bucket}"]
    return ["*"]


def _resource_keys(request: Request, arn: str) -> Dict[str, str]:
    """An instance's tags as the condition keys a policy names them by."""
    if ":instance/" not in arn:
        return {}
    tags = ec2_backends[DEFAULT_ACCOUNT_ID][request.region].tags.get(arn.rsplit("/", 1)[-1], {})
    prefixes = ("aws:ResourceTag", f"{request.service}:ResourceTag")
    return {f"{p}/{k}": v for p in prefixes for k, v in tags.items()}


def action_of(request: Request) -> str:
    """The IAM action a request asks for (``ec2:SendDiagnosticInterrupt``, ``s3:ListBucket``...)."""
    operation = S3_ACTIONS.get(request.operation, request.operation) if request.service == "s3" else None
    return f"{IAM_PREFIX.get(request.service, request.service)}:{operation or request.operation}"


def _refusal(request: Request, who: Caller, action: str, decision: Decision) -> ApiError:
    because = (
        "with an explicit deny in an identity-based policy"
        if decision.explicit_deny
        else f"because no identity-based policy allows the {action} action"
    )
    said = f"User: {who.arn} is not authorized to perform: {action} on resource: {decision.resource}"
    said += f" {because}"
    if request.protocol == "ec2":
        detail = {
            "allowed": False,
            "explicitDeny": decision.explicit_deny,
            "context": {"principal": {"arn": who.arn}, "action": action, "resource": decision.resource},
        }
        encoded = base64.urlsafe_b64encode(json.dumps(detail).encode()).decode()
        return ApiError(
            "UnauthorizedOperation",
            f"You are not authorized to perform this operation. {said}. "
            f"Encoded authorization failure message: {encoded}",
            403,
        )
    if request.protocol == "json":
        return ApiError("AccessDeniedException", said, 400)
    return ApiError("AccessDenied", said, 403)


def authorize(request: Request, access_key: str, own: Keys, path: str = "") -> None:
    """Raise the AWS refusal when the IAM user behind ``access_key`` may not make ``request``
    (the lab's own keys may make any)."""
    action = action_of(request)
    if access_key in own.own or action in ALWAYS_ALLOWED:
        return
    who = caller(access_key)
    if who is None:  # its key was deleted or made inactive since the signature was checked
        raise ApiError("InvalidClientTokenId", f"the access key {access_key} is not active", 403)
    context = {
        "aws:RequestedRegion": request.region,
        "aws:PrincipalArn": who.arn,
        "aws:PrincipalAccount": DEFAULT_ACCOUNT_ID,
        "aws:username": who.name,
        f"{request.service}:Region": request.region,
    }
    resources = {arn: _resource_keys(request, arn) for arn in resources_of(request, path)}
    decision = evaluate(who.policies, action, resources, context)
    if not decision.allowed:
        logger.info("IAM: %s may not %s on %s", who.arn, action, decision.resource)
        raise _refusal(request, who, action, decision)
