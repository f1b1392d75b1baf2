"""The ``chaosec2panic`` command: the local crash lab and a demo run against it; preflight
checks, recovery of instances left down, the IAM policy, offline dump inspection and analysis, and the
HTML report of a run's journal."""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.error
from dataclasses import replace
from importlib.resources import files
from pathlib import Path
from typing import Any, Dict, List, Sequence

from .aws import client
from .journal import experiment_slo
from .report import SLOWEST

__all__ = ["main"]

FLEET_HELP = "a fleet YAML file, or a bundled one: default.yaml (simulated guests), real.yaml (QEMU guests)"


def _fleet(path: str) -> Any:
    from .lab.fleet import FleetError, load_fleet

    bundled = files("chaosec2panic.lab").joinpath("fleets").joinpath(path)
    source = Path(path) if Path(path).exists() or not bundled.is_file() else Path(str(bundled))
    try:
        return load_fleet(source)
    except (OSError, FleetError) as exc:
        raise SystemExit(f"chaosec2panic: fleet {source}: {exc}") from exc


def _start_lab(args: argparse.Namespace) -> Any:
    try:
        from .lab.server import LabError, LabServer
    except ImportError as exc:
        raise SystemExit(
            f"chaosec2panic: the lab needs its extra: pip install 'chaosec2panic[lab]' ({exc})"
        ) from exc
    fleet = _fleet(args.fleet)
    if args.time_scale:
        fleet = replace(fleet, time_scale=args.time_scale)
    try:
        return LabServer(fleet, port=args.port).start()
    except LabError as exc:
        raise SystemExit(f"chaosec2panic: the lab cannot start: {exc}") from exc


def _fleet_table(lab: Any) -> List[str]:
    rows = [f"  {'name':<24} {'instance id':<21} {'kind':<10} {'type':<11} {'os':<18} tags"]
    for instance_id, guest in lab.lab.guests.items():
        spec = guest.spec
        tags = ",".join(f"{k}={v}" for k, v in spec.tags.items())
        row = f"  {spec.name:<24} {instance_id:<21} {spec.kind:<10} {spec.instance_type:<11} {spec.os:<18}"
        rows.append(f"{row} {tags}")
    return rows


def lab_up(args: argparse.Namespace) -> int:
    lab = _start_lab(args)
    env = " ".join(f"{k}={v}" for k, v in lab.environment().items())
    print(f"chaosec2panic lab: {len(lab.lab.guests)} instances at {lab.url}")
    print("\n".join(_fleet_table(lab)))
    print(
        "# boto3, chaostoolkit-aws and the AWS CLI (v1 from 1.29, v2 from 2.13) read AWS_ENDPOINT_URL; "
        f"an older AWS CLI ignores it: pass --endpoint-url {lab.url}"
    )
    print(f"export {env}", flush=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        lab.stop()
    return 0


def lab_events(args: argparse.Namespace) -> int:
    endpoint = args.endpoint or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        print("chaosec2panic: no lab endpoint: pass --endpoint or set AWS_ENDPOINT_URL", file=sys.stderr)
        return 2
    from .lab.server import lab_control

    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    try:
        events = lab_control(endpoint, "/_lab/events", secret)
    except urllib.error.HTTPError as exc:
        print(
            f"chaosec2panic: the lab at {endpoint} refused: {exc.read().decode(errors='replace')[:300]} "
            "(export the lab's AWS_SECRET_ACCESS_KEY from its `export` line)",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(events, indent=1))
        return 0
    for e in events:
        if e["kind"] != "command" or args.all:
            print(f"{e['time']}  {e['instance_id']}  {e['name']:<24} {e['kind']:<14} {e['detail']}")
    return 0


def recover(args: argparse.Namespace) -> int:
    from .errors import Ec2PanicError
    from .rollbacks import recover_instances

    configuration: Dict[str, Any] = {"chaosec2panic_poll_interval": args.poll_interval}
    if args.ledger:
        configuration["chaosec2panic_ledger_path"] = args.ledger
    if args.ledger_table:
        configuration["chaosec2panic_ledger_table"] = args.ledger_table
    try:
        result = recover_instances(args.instance_ids or None, args.timeout, args.others_after, configuration)
    except Ec2PanicError as exc:
        print(f"chaosec2panic: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0 if all(i["recovered"] for i in result["instances"].values()) else 1


def create_ledger_table(args: argparse.Namespace) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from .ledger import LedgerError
    from .ledger.dynamodb import create_table

    try:
        dynamodb = boto3.client("dynamodb", region_name=args.region, endpoint_url=args.endpoint)
        print(create_table(dynamodb, args.name))
    except (BotoCoreError, ClientError, LedgerError) as exc:
        print(f"chaosec2panic: dynamodb table {args.name}: {exc}", file=sys.stderr)
        return 2
    return 0


def _pairs(values: List[str], flag: str) -> Dict[str, str]:
    pairs = dict(v.partition("=")[::2] for v in values)
    if any(not k or not v for k, v in pairs.items()):
        raise SystemExit(f"chaosec2panic: {flag} takes KEY=VALUE, got {values}")
    return pairs


def preflight(args: argparse.Namespace) -> int:
    from .errors import Ec2PanicError
    from .readiness import readiness, table
    from .settings import settings
    from .targets import Request, guardrails

    filters = [{"Name": k, "Values": v.split(",")} for k, v in _pairs(args.filter, "--filter").items()]
    request = Request(args.instance_id, filters, _pairs(args.tag, "--tag"))
    configuration: Dict[str, Any] = {}
    try:
        if request.problems():
            raise Ec2PanicError("; ".join(request.problems()))
        ec2, ssm = client("ec2", configuration, None), client("ssm", configuration, None)
        rows = readiness(
            ec2,
            ssm,
            request,
            guardrails(configuration, 1),
            args.min_dump_space_ratio,
            settings(configuration).retry(),
        )
    except Ec2PanicError as exc:
        print(f"chaosec2panic: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=1) if args.json else table(rows) if rows else "no instance matches")
    return 0 if rows and all(r["ready"] for r in rows) else 1


def inspect(args: argparse.Namespace) -> int:
    from .inspect_cmd import run

    code, text = run(args.paths, args.json)
    print(text)
    return code


def analyze(args: argparse.Namespace) -> int:
    from .analyze_cmd import run

    code, text = run(args.dump, args.json, args.lines, args.vmlinux, args.debuginfo_dir)
    print(text, file=sys.stderr if code else sys.stdout)
    return code


def print_policy(args: argparse.Namespace) -> int:
    from .iam import policy

    key, _, value = args.opt_in_tag.partition("=")
    try:
        table = args.ledger_table or os.environ.get("CHAOSEC2PANIC_LEDGER_TABLE", "")
        document = policy(args.activity or None, (key, value), args.instance_arn, table)
    except ValueError as exc:
        print(f"chaosec2panic: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(document, indent=2))
    return 0


def summarise(journal: Dict[str, Any]) -> List[str]:
    """A few lines a person reads after a run: what was hit, the dump, the recovery vs the SLO."""
    slo = experiment_slo(journal["experiment"])
    lines = [
        f"experiment: {journal['experiment']['title']}",
        f"status: {journal['status']}, deviated: {journal['deviated']}",
    ]
    for run in journal.get("run", []):
        name, output = run["activity"]["name"], run.get("output")
        if run["status"] != "succeeded":
            lines.append(f"{name}: {run['status']}: {str(run.get('exception', [''])[-1]).strip()}")
        elif isinstance(output, dict) and "injections" in output:
            for e in output["injections"]:
                lines.append(
                    f"NMI {e['outcome']} to {e['instance_id']} at {e['sent_at']} {e['error']}".rstrip()
                )
        elif isinstance(output, dict) and "instances" in output and "max" in output:
            for i, seconds in output["instances"].items():
                if seconds is None:
                    lines.append(f"{i} not back")
                else:
                    verdict = (
                        "" if slo is None else f" (SLO {slo:g} s: {'met' if seconds <= slo else 'missed'})"
                    )
                    lines.append(f"{i} back after {seconds} s{verdict}")
        elif isinstance(output, dict) and "instances" in output:
            for i, d in output["instances"].items():
                if d.get("path"):
                    lines.append(
                        f"{i} dump: {d['verdict']} {d['path']} ({d['size']} bytes, {d['format']}, "
                        f"kernel {d['kernel_release']})"
                    )
                else:
                    lines.append(f"{i} dump: {d['verdict']}")
    after = (journal.get("steady_states") or {}).get("after") or {}
    for probe in after.get("probes", []):
        lines.append(f"after: {probe['activity']['name']}: tolerance met: {probe.get('tolerance_met')}")
    return lines


def demo(args: argparse.Namespace) -> int:
    """Start the lab, run the experiment with `chaos run`, print what happened."""
    lab = _start_lab(args)
    try:
        workdir = Path(tempfile.mkdtemp(prefix="chaosec2panic-demo-"))
        journal = Path(args.journal or workdir / "journal.json")
        env = {
            **os.environ,
            **lab.environment(),
            "CHAOSEC2PANIC_LEDGER": str(workdir / "ledger.json"),
            "CHAOSEC2PANIC_POLL_INTERVAL": "0.2",
        }
        print(f"chaosec2panic demo: lab of {len(lab.lab.guests)} instances at {lab.url}")
        print("\n".join(_fleet_table(lab)), flush=True)
        command = [
            "chaos",
            "--log-file",
            str(workdir / "chaostoolkit.log"),
            "run",
            "--rollback-strategy",
            "always",
            "--journal-path",
            str(journal),
            args.experiment,
        ]
        done = subprocess.run(command, env=env, check=False)
        data = json.loads(journal.read_text())
        print("\n".join(["", "--- what happened ---", *summarise(data)]))
        print(f"journal: {journal}")
        return done.returncode
    finally:
        lab.stop()


def report(args: argparse.Namespace) -> int:
    """Write the HTML report of a journal, then its PNG (when Chromium is installed)."""
    from .journal import ReportError, left_out, load_journal
    from .report import report_model
    from .report_page import ChromiumMissing, render_html, screenshot

    out = Path(args.output)
    png = Path(args.png) if args.png else out.with_suffix(".png")
    try:
        model = report_model(load_journal(Path(args.journal)), args.slo, args.slowest)
        out.write_text(render_html(model), encoding="utf-8")
    except ReportError as exc:
        print(f"chaosec2panic: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"chaosec2panic: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if model["skipped"]:
        print(
            f"chaosec2panic: {left_out(model['skipped'])} (all listed at the end of {out})", file=sys.stderr
        )
    print(f"report: {out}")
    try:
        width, height = screenshot(out, png)
    except ChromiumMissing as exc:
        print(f"chaosec2panic: no PNG: {exc}", file=sys.stderr)
        return 1 if args.png else 0
    except ReportError as exc:
        print(f"chaosec2panic: no PNG: {exc}", file=sys.stderr)
        return 1
    print(f"png: {png} ({width}x{height})")
    return 0


def export_fis(args: argparse.Namespace) -> int:
    """Write the files that run an experiment's send_nmi on SSM Automation under AWS FIS."""
    import yaml

    from .export import ExportRefused
    from .export import export_fis as export

    source = Path(args.experiment)
    try:
        experiment = yaml.safe_load(source.read_text(encoding="utf-8"))
        written = export(experiment, source.stem, args.stop_alarm_arn, args.region, args.account_id)
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in written.items():
            (out / name).write_text(text, encoding="utf-8")
    except ExportRefused as exc:
        print(f"chaosec2panic: {source} is not exported: {exc}", file=sys.stderr)
        return 2
    except (OSError, yaml.YAMLError) as exc:
        print(f"chaosec2panic: {exc}", file=sys.stderr)
        return 1
    print("\n".join(str(out / name) for name in written))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="chaosec2panic", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    lab = commands.add_parser("lab", help="the local crash lab").add_subparsers(
        dest="lab_command", required=True
    )
    up = lab.add_parser("up", help="serve a fleet until interrupted")
    events = lab.add_parser("events", help="what the lab's fleet received")
    for p in (up,):
        p.add_argument("--fleet", default="default.yaml", help=FLEET_HELP)
        p.add_argument("--port", type=int, default=4566)
        p.add_argument(
            "--time-scale", type=float, help="wall seconds per model second (default: the fleet's)"
        )
    up.set_defaults(run=lab_up)
    events.add_argument("--endpoint", help="the lab's URL (default: $AWS_ENDPOINT_URL)")
    events.add_argument("--json", action="store_true")
    events.add_argument("--all", action="store_true", help="include every SSM command run")
    events.set_defaults(run=lab_events)

    rec = commands.add_parser(
        "recover", help="bring back instances the ledger says were hit and are not back"
    )
    rec.add_argument("instance_ids", nargs="*")
    rec.add_argument("--timeout", type=float, default=300)
    rec.add_argument(
        "--others-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="leave another run's hit alone until sent this long ago (default 0: act on every run's,"
        " as you ask; a rollback inside a chaos run waits 3600 s, so as not to reboot a live run's"
        " capture)",
    )
    where = rec.add_mutually_exclusive_group()
    where.add_argument("--ledger", help="ledger file (default: $CHAOSEC2PANIC_LEDGER or the state directory)")
    where.add_argument("--ledger-table", help="the DynamoDB ledger (default: $CHAOSEC2PANIC_LEDGER_TABLE)")
    rec.add_argument("--poll-interval", type=float, default=5.0)
    rec.set_defaults(run=recover)

    led = commands.add_parser("ledger", help="the ledger shared across machines").add_subparsers(
        dest="ledger_command", required=True
    )
    table = led.add_parser("create-table", help="make a DynamoDB table the ledger (on-demand, with TTL)")
    table.add_argument("name", metavar="NAME")
    table.add_argument("--region", help="its region (default: $AWS_REGION)")
    table.add_argument("--endpoint", help="the DynamoDB endpoint (default: AWS's, or $AWS_ENDPOINT_URL)")
    table.set_defaults(run=create_ledger_table)

    pre = commands.add_parser("preflight", help="is each target ready for an NMI? (sends none)")
    pre.add_argument("--instance-id", action="append", default=[])
    pre.add_argument("--tag", action="append", default=[], help="KEY=VALUE the targets carry")
    pre.add_argument("--filter", action="append", default=[], help="NAME=VALUE[,VALUE...] (EC2 filter)")
    pre.add_argument("--min-dump-space-ratio", type=float, default=1.0, help="free dump space / memory")
    pre.add_argument("--json", action="store_true")
    pre.set_defaults(run=preflight)

    ins = commands.add_parser("inspect", help="judge crash dumps, dmesg files and console logs (offline)")
    ins.add_argument("paths", nargs="+", metavar="PATH")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(run=inspect)

    ana = commands.add_parser("analyze", help="the crash a vmcore holds, from the kernel's log (offline)")
    ana.add_argument("dump", metavar="DUMP", help="a kdump-compressed, flattened or ELF vmcore")
    ana.add_argument("--json", action="store_true")
    ana.add_argument("--lines", type=int, default=20, metavar="N", help="log lines before the panic")
    syms = ana.add_mutually_exclusive_group()
    syms.add_argument("--vmlinux", metavar="PATH", help="the dump kernel's debug vmlinux (needs drgn)")
    syms.add_argument("--debuginfo-dir", metavar="DIR", help="a debug tree like /usr/lib/debug (needs drgn)")
    ana.set_defaults(run=analyze)

    pol = commands.add_parser("policy", help="the least-privilege IAM policy for the activities you use")
    pol.add_argument("--activity", action="append", help="an activity the experiments use (default: all)")
    pol.add_argument("--opt-in-tag", default="chaos:nmi=allowed", help="KEY=VALUE that targets carry")
    pol.add_argument("--instance-arn", action="append", default=[], help="allow only these instances")
    pol.add_argument(
        "--ledger-table",
        help="the shared ledger's DynamoDB table (default: $CHAOSEC2PANIC_LEDGER_TABLE)",
    )
    pol.set_defaults(run=print_policy)

    run = commands.add_parser("demo", help="run an experiment against a fresh lab and say what happened")
    run.add_argument("--experiment", default="experiments/crash-capture.yaml")
    run.add_argument("--fleet", default="real.yaml", help=FLEET_HELP)
    run.add_argument("--journal", help="where to write the journal")
    run.add_argument("--time-scale", type=float)
    run.set_defaults(run=demo, port=0)

    rep = commands.add_parser("report", help="an HTML page and a PNG of a run's journal (timelines, dumps)")
    rep.add_argument("journal", metavar="JOURNAL", help="the journal.json `chaos run` wrote")
    rep.add_argument("-o", "--output", default="report.html", help="the HTML page to write")
    rep.add_argument("--png", help="the PNG to write (default: the page's path with .png); needs Chromium")
    rep.add_argument("--slo", type=float, help="recovery SLO in seconds (default: the journal's)")
    rep.add_argument(
        "--slowest",
        type=int,
        default=SLOWEST,
        help="how many of the slowest instances back to draw (default: %(default)s)",
    )
    rep.set_defaults(run=report)

    exp = commands.add_parser("export", help="an experiment as files for AWS's own engines").add_subparsers(
        dest="export_command", required=True
    )
    fis = exp.add_parser("fis", help="SSM Automation runbooks, an AWS FIS template, a schedule, a stack")
    fis.add_argument("experiment", metavar="EXPERIMENT", help="an experiment YAML that uses send_nmi")
    fis.add_argument("-o", "--output", required=True, metavar="DIR", help="the directory to write")
    fis.add_argument(
        "--stop-alarm-arn", action="append", default=[], help="a stop alarm (needed for alarms found by tags)"
    )
    fis.add_argument("--region", default="REGION", help="the region in the request files' ARNs")
    fis.add_argument("--account-id", default="ACCOUNT_ID", help="the account in the request files' ARNs")
    fis.set_defaults(run=export_fis)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.run(args))
