"""The NMI is recorded before it is sent: a ledger that cannot be written lets none out, and a run
killed (or a disk that fails) between the request and its answer leaves an entry that the guards,
the rollbacks and ``chaosec2panic recover`` act on.

The moment between the request and its answer is made real by an HTTP proxy in front of the lab:
it forwards every request as it came (signature and all), so the NMI reaches the lab, and holds
back only the answer to a real SendDiagnosticInterrupt until the test lets it go."""

import http.client
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import ROOT, opted_in

from chaosec2panic.actions import send_nmi
from chaosec2panic.errors import Ec2PanicError, Refused
from chaosec2panic.ledger import Ledger

HOP_BY_HOP = ("connection", "content-length", "keep-alive", "transfer-encoding")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed while its answer was held: nothing to say."""


class HoldingProxy:
    """Forwards to the lab at ``target``; answers a real SendDiagnosticInterrupt only once
    ``release`` is set (``held`` is set when one has reached the lab)."""

    def __init__(self, target: str):
        self.target = urlsplit(target)
        self.held, self.release = threading.Event(), threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                proxy.forward(self)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        lab = http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=60)
        lab.putrequest(handler.command, handler.path, skip_host=True, skip_accept_encoding=True)
        for key, value in handler.headers.items():
            lab.putheader(key, value)
        lab.endheaders(body)
        answer = lab.getresponse()
        data = answer.read()
        form = parse_qs(body.decode(errors="replace"))
        if form.get("Action") == ["SendDiagnosticInterrupt"] and form.get("DryRun") != ["true"]:
            self.held.set()
            self.release.wait()
        handler.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in HOP_BY_HOP:
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(data)
        handler.close_connection = True

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def send_in_background(**arguments: Any) -> tuple[threading.Thread, Dict[str, Any]]:
    """``send_nmi(**arguments)`` in a thread, started; what it returned ("result") or raised
    ("error") lands in the dict once the thread ends."""
    outcome: Dict[str, Any] = {}

    def send() -> None:
        try:
            outcome["result"] = send_nmi(**arguments)
        except Exception as exc:  # what the activity raised, judged by the test
            outcome["error"] = exc

    sending = threading.Thread(target=send)
    sending.start()
    return sending, outcome


def test_a_ledger_that_cannot_be_written_lets_no_nmi_out(make_lab):
    lab = make_lab([opted_in("web")])
    tmp = lab.ledger.with_suffix(".tmp")
    tmp.mkdir()  # what a full disk or a read-only directory would do to the write, for root too
    with pytest.raises(Exception) as failed:  # which one is asserted below, after the NMIs
        send_nmi(instance_ids=[lab.id("web")], configuration=lab.configuration())
    assert lab.nmi_names() == []
    assert lab.lab.calls["ec2:SendDiagnosticInterrupt"] == 1  # the DryRun, and no request after it
    assert isinstance(failed.value, Ec2PanicError)
    assert str(tmp) in str(failed.value) and "no NMI was sent" in str(failed.value)


def test_a_run_killed_between_the_request_and_its_answer_leaves_a_hit_that_is_acted_on(make_lab, tmp_path):
    lab = make_lab([opted_in("hang", kdump=False, panic_timeout=0)])
    hang = lab.id("hang")
    proxy = HoldingProxy(lab.server.url)
    script = (
        f"from chaosec2panic.actions import send_nmi; send_nmi(instance_ids=['{hang}'], allow_unarmed=True)"
    )
    env: Dict[str, str] = {
        **lab.server.environment(),
        "AWS_ENDPOINT_URL": proxy.url,
        "CHAOSEC2PANIC_LEDGER": str(lab.ledger),
    }
    sender = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT)
    try:
        assert proxy.held.wait(120), "the NMI request never came"
        [entry] = Ledger(lab.ledger).entries()  # on disk before the request left
        assert (entry.instance_id, entry.outcome, entry.hit) == (hang, "pending", True)
        assert lab.nmi_names() == ["hang"]
        sender.kill()
        assert sender.wait(30) == -9
    finally:
        proxy.close()

    # The guard: another run does not hit it again.
    with pytest.raises(Refused, match="never settled"):
        send_nmi(instance_ids=[hang], allow_unarmed=True, configuration=lab.configuration())
    assert lab.nmi_names() == ["hang"]
    # The rollback, from the command line: the pending hit is brought back.
    recover = ["recover", "--ledger", str(lab.ledger), "--timeout", "30", "--poll-interval", "0.1"]
    done = subprocess.run(
        [sys.executable, "-m", "chaosec2panic", *recover],
        capture_output=True,
        text=True,
        env={**env, "AWS_ENDPOINT_URL": lab.server.url},
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["instances"] == {hang: {"actions": ["reboot"], "recovered": True}}
    # Back in a new boot, it may be hit again.
    send_nmi(instance_ids=[hang], allow_unarmed=True, configuration=lab.configuration())
    assert lab.nmi_names() == ["hang", "hang"]


def test_a_ledger_that_fails_after_the_request_keeps_the_nmi_as_a_pending_hit(make_lab, monkeypatch):
    lab = make_lab([opted_in("web")])
    web = lab.id("web")
    proxy = HoldingProxy(lab.server.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    sending, outcome = send_in_background(instance_ids=[web], configuration=lab.configuration())
    try:
        assert proxy.held.wait(60), "the NMI request never came"
        lab.ledger.with_suffix(".tmp").mkdir()  # the disk fails while the request is out
    finally:
        proxy.close()
    sending.join(60)
    error = outcome.get("error")
    assert isinstance(error, Ec2PanicError), outcome
    assert f"were sent ({web} sent)" in str(error) and "keeps them as pending" in str(error)
    [entry] = Ledger(lab.ledger).entries()
    assert (entry.outcome, entry.hit) == ("pending", True)
    assert lab.nmi_names() == ["web"]


def test_a_ledger_that_fails_mid_batch_stops_the_nmis_not_yet_sent(make_lab, monkeypatch):
    # A batch is settled ten NMIs at a time; when a settle cannot be written, the rest of the
    # batch is never sent, and its entries stay pending (counted as hits), named in the error.
    lab = make_lab([{**opted_in("web"), "count": 12}])
    proxy = HoldingProxy(lab.server.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    sending, outcome = send_in_background(
        tags={"role": "web"}, max_instances=12, configuration=lab.configuration()
    )
    try:
        assert proxy.held.wait(60), "no NMI request came"
        lab.ledger.with_suffix(".tmp").mkdir()  # the disk fails while the first ten are out
        proxy.release.set()
        sending.join(120)
    finally:
        proxy.close()
    error = outcome.get("error")
    assert isinstance(error, Ec2PanicError), outcome
    entries = Ledger(lab.ledger).entries()
    assert len(entries) == 12 and {e.outcome for e in entries} == {"pending"}
    reached = {lab.id(name) for name in lab.nmi_names()}
    assert len(reached) == 10
    never = sorted(e.instance_id for e in entries if e.instance_id not in reached)
    assert f"The rest of batch 1 was not sent: {', '.join(never)}." in str(error)
