"""Selection and guardrail checks: pure functions on DescribeInstances-shaped records."""

import pytest

from chaosec2panic.errors import InvalidRequest
from chaosec2panic.targets import Guardrails, Request, choose, guardrails, nmi_support, refusals

NITRO = {"InstanceType": "m5.large", "Hypervisor": "nitro", "BareMetal": False}
METAL = {"InstanceType": "m5.metal", "BareMetal": True}
XEN = {"InstanceType": "t2.large", "Hypervisor": "xen", "BareMetal": False}
GUARD = Guardrails("chaos:nmi", "allowed", 5)


def instance(
    iid: str = "i-0123456789abcdef0",
    itype: str = "m5.large",
    state: str = "running",
    tags: dict | None = None,
    arch: str = "x86_64",
) -> dict:
    tags = {"chaos:nmi": "allowed"} if tags is None else tags
    return {
        "InstanceId": iid,
        "InstanceType": itype,
        "State": {"Name": state},
        "Architecture": arch,
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
    }


def test_nitro_and_bare_metal_x86_take_the_interrupt():
    assert nmi_support(instance(), NITRO) is None
    assert nmi_support(instance(itype="m5.metal"), METAL) is None


@pytest.mark.parametrize(
    ("inst", "info", "needle"),
    [
        (instance(itype="t2.large"), XEN, "xen hypervisor"),
        (instance(itype="a1.large"), {"Hypervisor": "nitro"}, "A1"),
        (instance(itype="c6g.large", arch="arm64"), {"Hypervisor": "nitro"}, "arm64"),
        (instance(itype="zz.huge"), None, "unknown to DescribeInstanceTypes"),
    ],
)
def test_types_that_cannot_take_the_interrupt_are_named(inst, info, needle):
    assert needle in nmi_support(inst, info)


def test_refusals_give_every_reason_per_instance():
    found = refusals(
        [instance("i-00000001", state="stopped", tags={}), instance("i-00000002")], {"m5.large": NITRO}, GUARD
    )
    assert list(found) == ["i-00000001"]
    assert "state is stopped" in found["i-00000001"]
    assert "missing opt-in tag chaos:nmi=allowed" in found["i-00000001"]


def test_opt_in_tag_value_must_match_exactly():
    found = refusals([instance(tags={"chaos:nmi": "Allowed"})], {"m5.large": NITRO}, GUARD)
    assert "missing opt-in tag" in found["i-0123456789abcdef0"]


def test_configured_opt_in_tag_is_used():
    guard = guardrails(
        {"chaosec2panic_opt_in_tag_key": "team/chaos", "chaosec2panic_opt_in_tag_value": "yes"}, 1
    )
    assert refusals([instance(tags={"team/chaos": "yes"})], {"m5.large": NITRO}, guard) == {}
    assert refusals([instance()], {"m5.large": NITRO}, guard)


def test_choose_all_by_default_deduplicated_and_sorted():
    assert choose(["i-b", "i-a", "i-b"], None, None, None) == (["i-a", "i-b"], None)


def test_choose_count_is_repeatable_with_a_seed_and_records_one_without():
    ids = [f"i-{n:08x}" for n in range(20)]
    first, seed = choose(ids, 3, None, 42)
    assert seed == 42 and len(first) == 3 and set(first) <= set(ids)
    assert choose(ids, 3, None, 42)[0] == first
    picked, recorded = choose(ids, 3, None, None)
    assert recorded is not None and choose(ids, 3, None, recorded)[0] == picked


def test_choose_percent_rounds_up_and_never_exceeds_the_matches():
    ids = [f"i-{n:08x}" for n in range(10)]
    assert len(choose(ids, None, 25, 1)[0]) == 3
    assert len(choose(ids, None, 100, 1)[0]) == 10
    assert len(choose(ids, 50, None, 1)[0]) == 10


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (Request(), "name the targets"),
        (Request(instance_ids=["i-xyz"]), "malformed instance ids"),
        (Request(instance_ids=["i-0123456789abcdef0"], count=0), "count must be"),
        (Request(tags={"a": "b"}, count=-1), "count must be"),
        (Request(tags={"a": "b"}, percent=0), "percent must be in (0, 100]"),
        (Request(tags={"a": "b"}, percent=101), "percent must be in (0, 100]"),
        (Request(tags={"a": "b"}, count=1, percent=10), "not both"),
        (Request(filters=[{"Name": "x"}]), "filter"),
    ],
)
def test_bad_requests_are_named(request_, needle):
    assert any(needle in p for p in request_.problems())


def test_tags_become_filters_and_ids_are_deduplicated():
    params = Request(
        instance_ids=["i-00000002", "i-00000001", "i-00000002"], tags={"app": "web"}
    ).describe_params()
    assert params == {
        "InstanceIds": ["i-00000001", "i-00000002"],
        "Filters": [{"Name": "tag:app", "Values": ["web"]}],
    }


@pytest.mark.parametrize("bad", [0, -1, True, "3"])
def test_max_instances_must_be_a_positive_whole_number(bad):
    with pytest.raises(InvalidRequest, match="max_instances"):
        guardrails({}, bad)


@pytest.mark.parametrize(
    "iid", ["i-0123456789abcdef0\n", "i-01234567\n", " i-01234567", "i-0123456789abcdef0\r"]
)
def test_an_instance_id_with_anything_around_it_is_malformed(iid):
    # "$" in a pattern also matches before a trailing newline: the whole id is what counts.
    assert any("malformed instance ids" in p for p in Request(instance_ids=[iid]).problems())
