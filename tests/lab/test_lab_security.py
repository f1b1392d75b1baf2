"""The lab as an attacker meets it: it runs nothing on the host, answers only what its own
credentials signed, no web page and no other host name, and every malformed request with an
AWS error, never a traceback. Each test is an attack from the audit (issue 18, items 1 and 11)."""

import datetime
import http.client
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, Tuple
from urllib.parse import urlsplit

import boto3
import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from conftest import opted_in

from chaosec2panic.lab.server import lab_control


@pytest.fixture
def lab(make_lab):
    return make_lab([opted_in("web", os="amazon-linux-2023")])


def _run(lab, script: str) -> Dict[str, Any]:
    """An SSM command on the guest, waited for through the lab's own API; its invocation."""
    ssm = boto3.client("ssm")
    command_id = ssm.send_command(
        InstanceIds=[lab.id("web")], DocumentName="AWS-RunShellScript", Parameters={"commands": [script]}
    )["Command"]["CommandId"]
    for _ in range(600):
        try:
            inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=lab.id("web"))
        except ClientError:
            inv = {"Status": "Pending"}
        if inv["Status"] in ("Success", "Failed", "TimedOut", "Cancelled"):
            return inv
        time.sleep(0.05)
    raise AssertionError(f"command {command_id} did not end")


def test_a_guest_command_by_absolute_path_does_not_run_on_the_host(lab):
    marker = Path("/tmp") / f"chaosec2panic-attack-{uuid.uuid4().hex}"
    inv = _run(lab, f"/usr/bin/id > {marker}; echo pwned > {marker}; cat /etc/os-release; cat /proc/cmdline")
    assert not marker.exists(), "the guest's command wrote on the host"
    assert 'ID="amzn"' in inv["StandardOutputContent"]  # the guest's own system, not the host's Debian
    assert "BOOT_IMAGE=/boot/vmlinuz-" in inv["StandardOutputContent"]
    guest_copy = lab.lab.guests[lab.id("web")].root / marker.relative_to("/")
    assert guest_copy.read_text() == "pwned\n"  # it went to the guest's own /tmp


def test_a_guest_command_cannot_leave_its_guest_or_touch_the_host(lab):
    inv = _run(
        lab,
        "id -u 2>/dev/null; ls /proc/1 >/dev/null 2>&1 && echo proc-visible; "
        "echo x > /.lab-host/usr/x 2>/dev/null && echo host-writable; "
        "kill -9 -1 2>/dev/null; echo still-here",
    )
    out = inv["StandardOutputContent"]
    assert "proc-visible" not in out and "host-writable" not in out
    assert "still-here" in out and not Path("/usr/x").exists()
    assert boto3.client("sts").get_caller_identity()["Account"]  # the lab survived the kill


def test_requests_not_signed_by_the_labs_own_credentials_are_refused(lab):
    stranger = boto3.client(
        "ec2", aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="wJalrXUtnFEMI/K7MDENG"
    )
    with pytest.raises(ClientError, match="AuthFailure"):
        stranger.send_diagnostic_interrupt(InstanceId=lab.id("web"))
    wrong_secret = boto3.client(
        "ssm", aws_access_key_id=lab.lab.operator.access_key, aws_secret_access_key="not-the-secret"
    )
    with pytest.raises(ClientError, match="InvalidSignatureException"):
        wrong_secret.describe_instance_information()
    assert lab.nmi_names() == []


def test_an_unsigned_request_naming_a_service_in_a_forged_header_is_refused(lab):
    forged = (
        "AWS4-HMAC-SHA256 Credential=lab/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, "
        f"Signature={'0' * 64}"
    )
    status, body, _ = _raw(
        lab,
        "POST",
        "/",
        f"Action=SendDiagnosticInterrupt&Version=2016-11-15&InstanceId={lab.id('web')}".encode(),
        {"Authorization": forged, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 403 and b"<Code>AuthFailure</Code>" in body
    assert lab.nmi_names() == []


def test_a_tampered_body_does_not_pass_as_the_signed_one(lab):
    url = lab.server.url + "/"
    good = f"Action=DescribeInstances&Version=2016-11-15&InstanceId.1={lab.id('web')}"
    headers = _signed("POST", url, "ec2", good.encode(), lab.lab.operator)
    bad = f"Action=SendDiagnosticInterrupt&Version=2016-11-15&InstanceId={lab.id('web')}"
    status, body, _ = _raw(lab, "POST", "/", bad.encode(), headers)
    assert status == 403 and b"AuthFailure" in body and lab.nmi_names() == []


def test_a_request_signed_long_ago_is_refused(lab, monkeypatch):
    then = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: then)
    with pytest.raises(ClientError, match="RequestExpired"):
        boto3.client("ec2").describe_instances()


def test_a_web_page_cannot_drive_the_lab(lab):
    for path, body in [
        ("/_lab/faults", b'{"operation": "SendDiagnosticInterrupt", "code": "X"}'),
        ("/_lab/agent", b'{"name": "web", "online": false}'),
        ("/", b"Action=DescribeInstances&Version=2016-11-15"),
    ]:
        status, answer, headers = _raw(
            lab, "POST", path, body, {"Origin": "http://evil.example", "Content-Type": "text/plain"}
        )
        assert status == 403, (path, answer)
        assert not any(k.lower().startswith("access-control-") for k in headers)
    status, _, headers = _raw(
        lab, "OPTIONS", "/", b"", {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert status == 403 and not any(k.lower().startswith("access-control-") for k in headers)
    assert lab.lab.faults == [] and lab.lab.guests[lab.id("web")].agent_outage is False


def test_no_cors_header_on_an_ordinary_answer(lab):
    url = lab.server.url + "/"
    body = b"Action=GetCallerIdentity&Version=2011-06-15"
    status, _, headers = _raw(lab, "POST", "/", body, _signed("POST", url, "sts", body, lab.lab.operator))
    assert status == 200 and not any(k.lower().startswith("access-control-") for k in headers)


def test_another_host_name_is_refused_as_dns_rebinding(lab):
    status, _, _ = _raw(lab, "GET", "/_lab/events", b"", {"Host": f"rebind.example:{lab.server.url[-5:]}"})
    assert status == 403


def test_moto_api_is_closed(lab):
    for method, path in [("POST", "/moto-api/reset"), ("GET", "/moto-api/"), ("GET", "/moto-api/data.json")]:
        status, _, _ = _raw(lab, method, path, b"", {})
        assert status == 404, path
    assert boto3.client("ec2").describe_instances()["Reservations"]  # nothing was reset


def test_lab_controls_take_the_operators_secret_and_nothing_else(lab):
    for secret in ["", "lab", lab.lab.guest_keys.secret_key]:
        with pytest.raises(urllib.error.HTTPError) as refused:
            lab_control(lab.server.url, "/_lab/faults", secret, {"operation": "X", "code": "Y"})
        assert refused.value.code == 403
    assert lab.lab.faults == []
    assert lab.control("/_lab/faults", {"operation": "DescribeInstances", "code": "Throttling"})["faults"]


def test_the_guests_own_credentials_are_not_the_operators(lab):
    env = lab.lab.guests[lab.id("web")].aws_env
    assert env["AWS_SECRET_ACCESS_KEY"] != lab.lab.operator.secret_key
    assert env["AWS_ACCESS_KEY_ID"] != lab.lab.operator.access_key


# malformed requests (item 11) -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("service", "body", "target", "code"),
    [
        ("ssm", b"{not json", "AmazonSSM.DescribeInstanceInformation", "SerializationException"),
        ("ssm", b"[1, 2]", "AmazonSSM.DescribeInstanceInformation", "SerializationException"),
        ("ssm", b"\xff\xfe{}", "AmazonSSM.DescribeInstanceInformation", "SerializationException"),
        ("ssm", b'{"MaxResults": "abc"}', "AmazonSSM.DescribeInstanceInformation", "ValidationException"),
        ("ssm", b"[" * 100000, "AmazonSSM.ListCommands", "SerializationException"),
        ("ssm", b"{}", "AmazonSSM.NoSuchThing", "UnknownOperationException"),
        ("ec2", b"Action=DescribeInstances&Version=2016-11-15&MaxResults=abc", "", "InvalidParameterValue"),
        (
            "ec2",
            b"Action=DescribeInstanceStatus&Version=2016-11-15&MaxResults=abc",
            "",
            "InvalidParameterValue",
        ),
        (
            "ec2",
            b"Action=DescribeInstanceStatus&Version=2016-11-15&MaxResults=2",
            "",
            "InvalidParameterValue",
        ),
        ("ec2", b"Action=DescribeInstances&Version=2016-11-15&NoSuch=1", "", "UnknownParameter"),
        ("ec2", b"Action=FlyToTheMoon&Version=2016-11-15", "", "InvalidAction"),
        ("ec2", b"Action=DescribeInstances&Version=2016-11-15&\xff=\xfe", "", "MalformedQueryString"),
        ("sts", b"Action=GetCallerIdentity&Version=2011-06-15&Bogus.1.x=1", "", "ValidationError"),
    ],
)
def test_a_malformed_request_gets_an_aws_error_not_a_traceback(lab, service, body, target, code):
    url = lab.server.url + "/"
    headers = {
        "Content-Type": "application/x-amz-json-1.1" if target else "application/x-www-form-urlencoded",
        **({"X-Amz-Target": target} if target else {}),
    }
    status, answer, _ = _raw(
        lab, "POST", "/", body, _signed("POST", url, service, body, lab.lab.operator, headers)
    )
    assert status == 400, answer[:500]
    assert code.encode() in answer and b"Traceback" not in answer and b"<html" not in answer.lower()


def test_a_length_that_is_no_length_is_refused(lab):
    status, answer = _bare(lab, b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: abc\r\n\r\n" % _host(lab))
    assert status == 400 and b"Content-Length" in answer


def test_a_huge_body_is_refused_before_it_is_read(lab):
    declared = 200 * 2**20
    request = b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (_host(lab), declared)
    status, answer = _bare(lab, request + b"x" * 4096)
    assert status == 413 and b"RequestEntityTooLarge" in answer


def test_a_body_shorter_than_its_length_is_refused(lab):
    status, answer = _bare(
        lab, b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 100\r\n\r\nAction=" % _host(lab)
    )
    assert status == 400 and b"IncompleteBody" in answer


@pytest.mark.parametrize(
    "fault",
    [
        {"operation": "DescribeInstances"},
        {"operation": "DescribeInstances", "code": ""},
        {"operation": "DescribeInstances", "code": "X", "status": "500"},
        {"operation": "DescribeInstances", "code": "X", "count": 0},
        {"operation": "DescribeInstances", "code": "X", "status": 200},
        {"code": "X"},
        {"operation": "DescribeInstances", "code": "X", "colour": "red"},
    ],
)
def test_a_fault_without_what_it_needs_is_refused_and_breaks_nothing(lab, fault):
    with pytest.raises(urllib.error.HTTPError) as refused:
        lab.control("/_lab/faults", fault)
    assert refused.value.code == 400 and b"ValidationException" in refused.value.read()
    assert boto3.client("ec2").describe_instances()["Reservations"]


def test_an_agent_change_for_no_guest_is_a_clear_404(lab):
    with pytest.raises(urllib.error.HTTPError) as refused:
        lab.control("/_lab/agent", {"name": "nobody", "online": False})
    assert refused.value.code == 404 and b"nobody" in refused.value.read()


# helpers ------------------------------------------------------------------------------------------
def _host(lab) -> bytes:
    return urlsplit(lab.server.url).netloc.encode()


def _signed(
    method: str, url: str, service: str, body: bytes, keys: Any, headers: Dict[str, str] | None = None
) -> Dict[str, str]:
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    if "Content-Type" not in request.headers:
        request.headers["Content-Type"] = "application/x-www-form-urlencoded"
    SigV4Auth(Credentials(keys.access_key, keys.secret_key), service, "us-east-1").add_auth(request)
    return dict(request.headers.items())


def _raw(
    lab, method: str, path: str, body: bytes, headers: Dict[str, str]
) -> Tuple[int, bytes, Dict[str, str]]:
    parts = urlsplit(lab.server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
    for key, value in headers.items():
        conn.putheader(key, value)
    if "Content-Length" not in headers:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    return answer.status, data, dict(answer.getheaders())


def _bare(lab, request: bytes) -> Tuple[int, bytes]:
    """An HTTP request written byte for byte (for lengths no client would send); status and body."""
    import socket

    parts = urlsplit(lab.server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_helpers_sign_as_botocore_does(lab):
    """The helpers above are themselves right: a request they sign is answered."""
    url = lab.server.url + "/"
    body = json.dumps({}).encode()
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "AmazonSSM.ListCommands"}
    status, answer, _ = _raw(
        lab, "POST", "/", body, _signed("POST", url, "ssm", body, lab.lab.operator, headers)
    )
    assert status == 200 and b"Commands" in answer
