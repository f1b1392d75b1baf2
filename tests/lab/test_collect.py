"""collect_crash_dump against the lab: the guest uploads its dump with the AWS CLI (the lab's
stand-in, to the lab's S3), and what lands in S3 is read back and compared byte for byte."""

import json
from pathlib import Path

import boto3
import pytest
from conftest import opted_in, sim_guest
from test_script_injection import powershell_variables

from chaosec2panic import guest
from chaosec2panic.actions import collect_crash_dump, send_nmi
from chaosec2panic.errors import Ec2PanicError, InvalidRequest, Refused
from chaosec2panic.guest.parsers import Upload, upload_report
from chaosec2panic.probes import recovered_within

BUCKET = "crash-dumps"
SMALL = {"memory_mib": 1024}  # a dump of about 50 MB: several parts of a multipart upload


def hit_and_wait(lab, name: str, **kw) -> str:
    """Send the NMI to ``name``, wait until it is back, and return its id; the bucket is made."""
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    send_nmi(instance_ids=[lab.id(name)], configuration=lab.configuration(), **kw)
    assert recovered_within(30, configuration=lab.configuration()) is True
    return lab.id(name)


def stored(prefix: str = "") -> dict:
    """Every object in the bucket under ``prefix``: key -> bytes."""
    s3 = boto3.client("s3")
    found = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in found}


@pytest.mark.parametrize("os_name", ["amazon-linux-2023", "ubuntu"])
def test_the_dump_directory_lands_in_s3_byte_for_byte(make_lab, os_name):
    lab = make_lab([opted_in("web", os=os_name, **SMALL)])
    web = hit_and_wait(lab, "web")
    result = collect_crash_dump(BUCKET, prefix="game-day", configuration=lab.configuration())
    json.dumps(result)
    record = result["instances"][web]
    assert (record["status"], record["complete"], record["error"]) == ("uploaded", True, "")
    assert record["path"] == lab.events("dump-written", "web")[0]["detail"]
    folder = Path(record["path"]).parent.name
    assert record["uri"] == f"s3://{BUCKET}/game-day/{web}/{folder}/"
    on_guest = sorted((lab.lab.guests[web].root / "var" / "crash" / folder).iterdir())
    assert record["files"] == {p.name: p.stat().st_size for p in on_guest} and len(on_guest) == 2
    assert record["bytes"] == sum(p.stat().st_size for p in on_guest) > 30 * 2**20
    assert stored() == {f"game-day/{web}/{folder}/{p.name}": p.read_bytes() for p in on_guest}
    calls = lab.lab.calls
    assert calls["s3:CreateMultipartUpload"] == 1 and calls["s3:UploadPart"] > 1  # through the lab


def test_without_an_nmi_it_refuses_and_sends_nothing(make_lab):
    lab = make_lab([opted_in("web")])
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    before = dict(lab.lab.calls)
    with pytest.raises(InvalidRequest, match=r"no NMI of this run is in the ledger .*send_nmi"):
        collect_crash_dump(BUCKET, configuration=lab.configuration())
    with pytest.raises(InvalidRequest, match=r"no NMI of this run is in the ledger"):
        collect_crash_dump(BUCKET, instance_ids=[lab.id("web")], configuration=lab.configuration())
    assert dict(lab.lab.calls) == before


def test_after_a_refused_nmi_there_is_nothing_to_collect(make_lab):
    lab = make_lab([opted_in("bare", kdump=False)])
    with pytest.raises(Refused):
        send_nmi(instance_ids=[lab.id("bare")], configuration=lab.configuration())
    with pytest.raises(Ec2PanicError, match="refused or not sent"):
        collect_crash_dump(BUCKET, configuration=lab.configuration())


@pytest.mark.parametrize(
    ("bucket", "why"),
    [
        ("", "a bucket name is needed"),
        (f"s3://{BUCKET}", "the bucket's name alone"),
        ("Crash_Dumps", "lowercase letters"),
        ("ab", "3 to 63"),
        ("-dumps", "a letter or digit at each end"),
        ("crash..dumps", "no two dots in a row"),
        ("10.0.0.1", "not an IP address"),
        ("xn--dumps", "xn--"),
        (None, "a bucket name is needed"),
        (f"{BUCKET}\n", "lowercase letters"),  # "$" in a pattern also matches before a final newline
    ],
)
def test_a_bucket_name_s3_would_refuse_is_refused_before_anything_is_sent(make_lab, bucket, why):
    lab = make_lab([opted_in("web")])
    before = dict(lab.lab.calls)
    with pytest.raises(InvalidRequest, match=f"is not an S3 bucket name: .*{why}.*Nothing was sent"):
        collect_crash_dump(bucket, configuration=lab.configuration())
    assert dict(lab.lab.calls) == before


def test_a_missing_bucket_is_refused_before_any_command(make_lab):
    lab = make_lab([opted_in("web", **SMALL)])
    hit_and_wait(lab, "web")
    sent = lab.lab.calls["ssm:SendCommand"]
    with pytest.raises(Refused, match="bucket no-such-bucket cannot take the dumps: it does not exist"):
        collect_crash_dump("no-such-bucket", configuration=lab.configuration())
    assert lab.lab.calls["ssm:SendCommand"] == sent


def test_an_incomplete_dump_is_reported_and_uploaded_only_when_asked(make_lab):
    lab = make_lab([opted_in("small", crashkernel_mib=64, **SMALL)])
    small = hit_and_wait(lab, "small")
    record = collect_crash_dump(BUCKET, configuration=lab.configuration())["instances"][small]
    assert (record["status"], record["complete"], record["uri"]) == ("incomplete", False, "")
    assert record["path"].endswith("/vmcore-incomplete")
    assert any("incomplete" in p for p in record["problems"])
    assert stored() == {}
    record = collect_crash_dump(BUCKET, include_incomplete=True, configuration=lab.configuration())[
        "instances"
    ][small]
    assert (record["status"], record["complete"]) == ("uploaded", False)
    dump = lab.lab.guests[small].root / record["path"].lstrip("/")
    key = f"chaosec2panic/{small}/{dump.parent.name}/vmcore-incomplete"
    assert stored()[key] == dump.read_bytes()


def test_no_dump_after_the_nmi_is_no_dump(make_lab):
    lab = make_lab([opted_in("calm", unknown_nmi_panic=0)])
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    send_nmi(instance_ids=[lab.id("calm")], allow_unarmed=True, configuration=lab.configuration())
    record = collect_crash_dump(BUCKET, configuration=lab.configuration())["instances"][lab.id("calm")]
    assert (record["status"], record["path"], record["complete"]) == ("no-dump", "", None)
    assert stored() == {} and lab.lab.calls["s3:PutObject"] == 0


def test_a_failed_upload_says_why_and_the_caller_checks_what_landed(make_lab):
    lab = make_lab([opted_in("web", **SMALL)])
    web = hit_and_wait(lab, "web")
    conf = lab.configuration()

    def collect() -> dict:
        return collect_crash_dump(BUCKET, configuration=conf)["instances"][web]

    # The instance's role may not write there: the CLI fails and the guest says so.
    lab.lab.faults.append({"operation": "PutObject", "code": "AccessDenied", "status": 403, "count": 1})
    record = collect()
    assert record["status"] == "failed" and record["error"].startswith("aws s3 cp exited 1: upload failed")
    assert "PutObject" in record["error"]
    # The guest says it uploaded, but the caller cannot see it: not proven, so failed.
    lab.lab.faults.append({"operation": "ListObjectsV2", "code": "AccessDenied", "status": 403, "count": 1})
    record = collect()
    assert record["status"] == "failed" and record["error"].startswith("not verified: ")
    # No AWS CLI on the instance.
    (lab.lab.guests[web].root / "sim-bin" / "aws").unlink()
    record = collect()
    assert record["status"] == "failed" and "the AWS CLI (aws) is not installed" in record["error"]


def test_an_instance_whose_agent_is_away_is_failed_with_the_reason(make_lab):
    lab = make_lab([opted_in("web", **SMALL)])
    web = hit_and_wait(lab, "web")
    lab.lab.guests[web].agent_outage = True
    record = collect_crash_dump(BUCKET, configuration=lab.configuration())["instances"][web]
    assert record["status"] == "failed"
    assert record["error"].startswith("the dumps could not be listed: not read: AgentOffline")


@pytest.mark.parametrize(
    "prefix",
    [
        "dumps\u2019 + $env:PATH + \u2019/",  # a typographic quote ends a PowerShell string too
        "\u2018; Stop-Computer -Force; \u2018/",
        "x\u201a + $(Remove-Item C:\\Windows -Recurse) + \u201b/",
        "$env:PATH/$(Get-Date)/",
    ],
)
def test_a_windows_prefix_reaches_the_instance_as_the_very_string_given(make_lab, prefix):
    lab = make_lab([opted_in("win", os="windows-2022")])
    win = hit_and_wait(lab, "win")
    record = collect_crash_dump(BUCKET, prefix=prefix, configuration=lab.configuration())["instances"][win]
    [script] = [
        c["script"] for c in lab.lab.commands.values() if c["comment"] == "chaosec2panic collect_crash_dump"
    ]
    body = guest.script(guest.PLATFORMS["windows"], "collect_crash_dump")
    assert script.endswith(body)
    sent = powershell_variables(script[: len(script) - len(body)])  # one string each, read strictly
    assert sent["KEY"] == record["uri"].removeprefix(f"s3://{BUCKET}/")
    assert sent["KEY"].startswith(f"{prefix}{win}/MEMORY-") and sent["BUCKET"] == BUCKET


def test_a_prefix_with_a_double_quote_is_refused_before_anything_is_sent(make_lab):
    # Windows PowerShell would hand it to aws.exe unescaped: '--endpoint-url' would be an argument.
    lab = make_lab([opted_in("web")])
    before = dict(lab.lab.calls)
    with pytest.raises(InvalidRequest, match=r"holds a double quote.*Nothing was sent"):
        collect_crash_dump(
            BUCKET, prefix='x" --endpoint-url "http://127.0.0.1:9/', configuration=lab.configuration()
        )
    assert dict(lab.lab.calls) == before


def test_windows_collection_is_not_supported_in_the_lab_and_says_so(make_lab):
    lab = make_lab([opted_in("win", os="windows-2022")])
    win = hit_and_wait(lab, "win")
    record = collect_crash_dump(BUCKET, configuration=lab.configuration())["instances"][win]
    assert (record["status"], record["complete"]) == ("failed", True)
    assert record["path"] == "C:\\Windows\\MEMORY.DMP"
    assert record["uri"].startswith(f"s3://{BUCKET}/chaosec2panic/{win}/MEMORY-20")
    assert record["error"].startswith("not supported in the lab")


# the guest script alone, against a simulated guest's files ---------------------------------------
def run_collect(g, dump_file: str) -> Upload:
    text = guest.script(
        guest.PLATFORMS["linux"],
        "collect_crash_dump",
        {"DUMP_FILE": dump_file, "BUCKET": BUCKET, "KEY": "k/"},
    )
    outcome = g.run_command(text)
    assert outcome.code == 0
    return upload_report(outcome.stdout)


def test_the_script_reports_a_dump_gone_and_a_guest_outside_a_lab(tmp_path):
    g = sim_guest(tmp_path / "root")
    gone = run_collect(g, "/var/crash/202601010000/dump.202601010000")
    assert (gone.dest, gone.files) == (f"s3://{BUCKET}/k/", {})
    assert gone.error == "the dump /var/crash/202601010000/dump.202601010000 is not there any more"
    dump = tmp_path / "root" / "var" / "crash" / "202601010000" / "dump.202601010000"
    dump.parent.mkdir(parents=True)
    dump.write_bytes(b"makedumpfile" + bytes(100))
    outside = run_collect(g, "/var/crash/202601010000/dump.202601010000")
    assert outside.files == {"dump.202601010000": 112}
    assert (
        outside.error == "aws s3 cp exited 255: aws: no AWS_ENDPOINT_URL: the lab's aws uploads only to a lab"
    )
