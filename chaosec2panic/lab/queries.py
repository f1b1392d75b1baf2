"""What the lab answers as AWS does where moto (or a first version of the lab) was kinder:
filters, pagination, command statuses and malformed ids, as pure functions of the request."""

from typing import Any, Dict, List

from ..targets import INSTANCE_ID
from .protocol import ApiError, Request, list_param

__all__ = [
    "ENDED",
    "INFORMATION_FILTERS",
    "STATUS_FILTERS",
    "command_status",
    "every_page",
    "information_filters",
    "query_filters",
    "refuse_malformed_ids",
]

ENDED = frozenset({"Success", "Failed", "TimedOut", "Cancelled"})
STATUS_FILTERS = frozenset(
    {
        "instance-state-name",
        "instance-state-code",
        "availability-zone",
        "instance-status.status",
        "instance-status.reachability",
        "system-status.status",
        "system-status.reachability",
    }
)
# The keys SSM takes (those the lab's instances have no value for match nothing).
INFORMATION_FILTERS = frozenset(
    {
        "InstanceIds",
        "AgentVersion",
        "PingStatus",
        "PlatformTypes",
        "ResourceType",
        "ActivationIds",
        "IamRole",
        "AssociationStatus",
        "tag-key",
    }
)
UNPAGED = 10**9  # what moto takes for "no page size"


def command_status(statuses: List[str]) -> str:
    """A command's status from its invocations': in progress until each has ended; then, with
    SendCommand's default MaxErrors of 0, Failed (or TimedOut, Cancelled) if any was not a
    Success."""
    if any(st not in ENDED for st in statuses):
        return "InProgress"
    return next((st for st in ("Failed", "TimedOut", "Cancelled") if st in statuses), "Success")


def query_filters(form: Dict[str, List[str]], known: frozenset[str]) -> Dict[str, set[str]]:
    """``Filter.N.Name`` / ``Filter.N.Value.M`` of an EC2 request, by name; an unknown name is
    refused as EC2 refuses it."""
    wanted: Dict[str, set[str]] = {}
    index = 1
    while f"Filter.{index}.Name" in form:
        name = form[f"Filter.{index}.Name"][0]
        if name not in known:
            raise ApiError("InvalidParameterValue", f"The filter '{name}' is invalid")
        wanted.setdefault(name, set()).update(list_param(form, f"Filter.{index}.Value"))
        index += 1
    return wanted


def information_filters(params: Dict[str, Any]) -> Dict[str, set[str]]:
    """DescribeInstanceInformation's ``Filters`` (Key, Values; tag:KEY and tag-key too) and
    ``InstanceInformationFilterList`` (key, valueSet), by key; an unknown key is refused."""
    wanted: Dict[str, set[str]] = {}
    for f in params.get("Filters", []):
        key = str(f.get("Key", ""))
        if key not in INFORMATION_FILTERS and not key.startswith("tag:"):
            raise ApiError("InvalidFilterKey", f"The filter key {key!r} is not valid")
        wanted.setdefault(key, set()).update(f.get("Values") or [])
    for f in params.get("InstanceInformationFilterList", []):
        key = str(f.get("key", ""))
        if key not in INFORMATION_FILTERS:
            raise ApiError("InvalidInstanceInformationFilterValue", f"The filter key {key!r} is not valid")
        wanted.setdefault(key, set()).update(f.get("valueSet") or [])
    return wanted


def refuse_malformed_ids(request: Request) -> None:
    """EC2 refuses an instance id that is not one (moto would say NotFound) before acting."""
    if request.service != "ec2":
        return
    for instance_id in list_param(request.form, "InstanceId"):
        if not INSTANCE_ID.match(instance_id):
            raise ApiError("InvalidInstanceID.Malformed", f'Invalid id: "{instance_id}"')


def every_page(request: Request, body: bytes) -> bytes:
    """The body moto gets: DescribeInstances without MaxResults answers every match, as AWS
    does (moto would stop at 100 and give a NextToken). With InstanceIds (which may not be
    combined with MaxResults) the lab leaves it to moto."""
    if request.service != "ec2" or request.operation != "DescribeInstances" or not body:
        return body
    if "MaxResults" in request.form or "NextToken" in request.form or list_param(request.form, "InstanceId"):
        return body
    return body + f"&MaxResults={UNPAGED}".encode()
