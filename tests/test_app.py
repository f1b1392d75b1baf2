"""Application checks: what they accept, and real HTTP and TCP attempts on this machine."""

import http.server
import socket
import threading

import pytest

from chaosec2panic.app import AppCheck, parse_app_check
from chaosec2panic.errors import InvalidRequest

ARN = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/73e2d6bc24d8a067"
INSTANCE = {"InstanceId": "i-0abc", "PrivateIpAddress": "10.0.0.7", "PrivateDnsName": "ip-10-0-0-7"}


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("http://x", "must be a mapping"),
        ({"url": "http://x", "method": "GET"}, "must be a mapping"),
        ({}, "exactly one of url"),
        ({"url": "http://x", "tcp": "x:1"}, "exactly one of url"),
        ({"url": "ftp://x"}, "must start with http"),
        ({"tcp": "x"}, "host:port"),
        ({"tcp": "{private_ip}:http"}, "host:port"),
        ({"url": "http://{address}/"}, "placeholders ['address'] are unknown"),
        ({"url": "http://x", "expect_status": "200"}, "HTTP status code"),
        ({"url": "http://x", "timeout": 0}, "seconds > 0"),
        ({"url": "http://x", "target_group": ARN}, "exactly one of url"),
        ({"target_group": "web"}, "must be a target group ARN"),
        ({"target_group": ARN.replace("targetgroup", "loadbalancer/app")}, "must be a target group ARN"),
        ({"target_group": ARN, "timeout": 3}, "takes no expect_status or timeout"),
    ],
)
def test_a_bad_check_says_what_to_fix(spec, why):
    with pytest.raises(InvalidRequest, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_app_check(spec)


def test_placeholders_come_from_the_instance():
    check = parse_app_check({"url": "http://{private_ip}:8080/health?id={instance_id}"})
    assert check.target(INSTANCE) == "http://10.0.0.7:8080/health?id=i-0abc"
    assert parse_app_check({"tcp": "{private_dns}:22"}).target(INSTANCE) == "ip-10-0-0-7:22"
    assert parse_app_check(None) is None
    assert parse_app_check({"target_group": ARN}).target(INSTANCE) == "i-0abc"


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


def test_http_checks_want_the_expected_status(server):
    base = f"http://127.0.0.1:{server}"
    check = AppCheck(url=base)
    assert check.run({"up": f"{base}/ok", "down": f"{base}/fail"}) == {"up": True, "down": False}
    assert AppCheck(url=base, expect_status=503).passes(f"{base}/fail")


def test_tcp_checks_want_a_listener(server):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        free = closed.getsockname()[1]
    check = AppCheck(tcp="x", timeout=0.5)
    assert check.passes(f"127.0.0.1:{server}") is True
    assert check.passes(f"127.0.0.1:{free}") is False
    assert AppCheck(url="http://x", timeout=0.5).passes(f"http://127.0.0.1:{free}/") is False
