"""Moto's EC2 answers made to read as AWS's: the ids, namespace and instance fields real clients read.

Moto answers EC2 calls with the literal ``request-id`` in the body (or none at all) where AWS
puts the request's id, the same one as in the ``x-amzn-requestid`` header; its namespace lacks
the trailing slash AWS writes; and its instances lack fields clients read (the AWS CLI's
tables, chaostoolkit-aws, cost tools): ``platformDetails`` and ``usageOperation`` (the billing
product: Linux/UNIX, Windows, RHEL, SUSE), ``placement.availabilityZoneId``, ``cpuOptions``,
``currentInstanceBootMode``, and the instance's ``groupSet`` (moto leaves it empty although the
instance's network interface has the group). The state and LaunchTime are the lab's
(:mod:`.lifecycle`): moto skips the transient states and keeps the first launch time. Pure
functions on the XML bytes.

Still a model: ``bootMode`` (present on AWS only when the AMI names one) is left out, and the
boot mode is legacy BIOS, which is what the lab's QEMU guests boot with.
"""

import copy
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable, List, Tuple

__all__ = ["EC2_NAMESPACE", "InstanceFacts", "aws_ids", "instance_fields", "product_of"]

EC2_NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
MOTO_NAMESPACE = EC2_NAMESPACE.rstrip("/")
# The billing product of an instance by its operating system, as DescribeInstances names it
# (platformDetails, usageOperation): AWS's "AMI billing information fields".
PRODUCTS = {
    "windows": ("Windows", "RunInstances:0002"),
    "rhel": ("Red Hat Enterprise Linux", "RunInstances:0010"),
    "suse": ("SUSE Linux", "RunInstances:000g"),
}
LINUX_PRODUCT = ("Linux/UNIX", "RunInstances")


@dataclass(frozen=True)
class InstanceFacts:
    """What the lab knows of one instance that moto does not say."""

    platform_details: str
    usage_operation: str
    zone_id: str
    cores: int
    threads_per_core: int
    state: str
    state_code: int
    launch_time: str


def product_of(os_name: str) -> Tuple[str, str]:
    """``platformDetails`` and ``usageOperation`` of an instance of the lab's ``os`` name."""
    return next((p for prefix, p in PRODUCTS.items() if os_name.startswith(prefix)), LINUX_PRODUCT)


def _tag(name: str) -> str:
    return f"{{{EC2_NAMESPACE}}}{name}"


def _child(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    found = parent.find(_tag(name))
    if found is None:
        found = ET.SubElement(parent, _tag(name))
    if text is not None:
        found.text = text
    return found


def aws_ids(payload: bytes, headers: List[Tuple[str, str]]) -> Tuple[bytes, List[Tuple[str, str]]]:
    """An EC2 answer of moto's with AWS's namespace and one request id, the same in the body's
    ``requestId`` and in the ``x-amzn-requestid`` header (a new UUID, as AWS's)."""
    request_id = str(uuid.uuid4())
    text = payload.replace(f'xmlns="{MOTO_NAMESPACE}"'.encode(), f'xmlns="{EC2_NAMESPACE}"'.encode(), 1)
    if b"<requestId>" in text:
        start = text.index(b"<requestId>") + len(b"<requestId>")
        text = text[:start] + request_id.encode() + text[text.index(b"</requestId>", start) :]
    elif b"<Errors>" not in text:
        end = text.find(b">", text.find(b"Response xmlns="))
        if end > 0:
            text = text[: end + 1] + f"<requestId>{request_id}</requestId>".encode() + text[end + 1 :]
    kept = [(k, v) for k, v in headers if k.lower() not in ("x-amzn-requestid", "x-amz-request-id")]
    return text, [*kept, ("x-amzn-requestid", request_id)]


def instance_fields(payload: bytes, facts: Callable[[str], InstanceFacts | None]) -> bytes:
    """A DescribeInstances answer (with AWS's namespace) with each instance's fields filled from
    ``facts`` (None for an instance the lab does not know: left as moto wrote it)."""
    ET.register_namespace("", EC2_NAMESPACE)
    root = ET.fromstring(payload)
    for instance in root.iter(_tag("instancesSet")):
        for item in instance.findall(_tag("item")):
            found = facts(item.findtext(_tag("instanceId")) or "")
            if found is not None:
                _fill(item, found)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _fill(item: ET.Element, facts: InstanceFacts) -> None:
    state = _child(item, "instanceState")
    _child(state, "code", str(facts.state_code))
    _child(state, "name", facts.state)
    _child(item, "launchTime", facts.launch_time)
    _child(item, "platformDetails", facts.platform_details)
    _child(item, "usageOperation", facts.usage_operation)
    _child(item, "usageOperationUpdateTime", item.findtext(_tag("launchTime")) or "")
    _child(_child(item, "placement"), "availabilityZoneId", facts.zone_id)
    cpu = _child(item, "cpuOptions")
    _child(cpu, "coreCount", str(facts.cores))
    _child(cpu, "threadsPerCore", str(facts.threads_per_core))
    _child(item, "currentInstanceBootMode", "legacy-bios")
    groups = _child(item, "groupSet")
    if not len(groups):
        seen = set()
        for group in item.iterfind(
            f"{_tag('networkInterfaceSet')}/{_tag('item')}/{_tag('groupSet')}/{_tag('item')}"
        ):
            key = group.findtext(_tag("groupId"))
            if key not in seen:
                seen.add(key)
                groups.append(copy.deepcopy(group))
