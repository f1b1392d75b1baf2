"""Probes: is kdump armed, are instances healthy, did the NMI crash them, dump, and come back."""

import logging
import time
from typing import Any, Dict, List

from chaoslib.types import Configuration, Secrets

from .analysis import summarise_log
from .app import AppWatch, parse_app_check
from .aws import client
from .dumps import Inspection, inspect_source
from .errors import Ec2PanicError, InvalidRequest
from .evidence import crashed_boot, dump_evidence, panic_uptime
from .guest import platform_of
from .guest.parsers import CrashLog, crash_log, dump_files, parse_report
from .health import console_after, observe, watch_recovery
from .iam import APP_CHECK, RESOLVE, RESOLVE_GUARDED, RUN_SCRIPT, WATCH_RECOVERY, requires
from .ledger import RUN_ID, Injection, Ledger
from .readiness import kdump_verdicts, readiness
from .recovery import Timeline, epoch_iso, fleet_summary, parse_iso
from .settings import settings
from .ssm import run_script
from .targets import Request, guardrails, resolve

__all__ = [
    "crash_dump_present",
    "crash_dumps",
    "instance_healthy",
    "kdump_armed",
    "panic_on_console",
    "ready_for_nmi",
    "recovered_within",
    "recovery_seconds",
]

logger = logging.getLogger("chaostoolkit")
ACCOUNT_FRAMES = 12  # the top of a crash account's call trace
NO_ACCOUNT = {"crash_account": None, "crash_account_reason": "the crash_dumps output was not read"}


def _targets(
    ec2: Any,
    instance_ids: List[str] | None,
    filters: List[Dict[str, Any]] | None,
    tags: Dict[str, str] | None,
) -> Dict[str, Any]:
    request = Request(instance_ids or (), filters or (), tags or {})
    return {i["InstanceId"]: platform_of(i) for i in resolve(ec2, request, None).chosen}


def judged_hits(configuration: Configuration, instance_ids: List[str] | None) -> Dict[str, Injection]:
    """The injections a probe judges: the named instances' latest, else this run's.

    A named instance no NMI has hit yet has nothing to verify (a hypothesis before the method
    may name its target); one hit by an earlier run and not back is judged as it is. Once this
    run has sent (or tried to send) an NMI, a named instance it did not hit is an error. A run
    whose NMI was refused, or failed everywhere, has nothing to verify: that is an error too,
    never a vacuous pass.
    """
    ledger = Ledger.of(configuration)
    hits = ledger.latest(RUN_ID)
    missed = ledger.misses(RUN_ID)
    if instance_ids:
        if hits or missed:
            not_hit = [i for i in instance_ids if i not in hits]
            if not_hit:
                raise InvalidRequest(
                    f"this run sent no NMI to {not_hit} (ledger {ledger.where}): name the instances it hit"
                )
            return {i: hits[i] for i in instance_ids}
        latest = ledger.latest()
        return {i: latest[i] for i in instance_ids if i in latest}
    if not hits and missed:
        raise Ec2PanicError(
            f"this run's NMI was refused or not sent, so there is nothing to verify:\n{missed[-1].error}"
        )
    return hits


def platforms_of(ec2: Any, ids: List[str]) -> Dict[str, Any]:
    """The platform of each of the instances ``ids`` (none asked, none described)."""
    return _targets(ec2, ids, None, None) if ids else {}


@requires(*RESOLVE, "ec2:DescribeInstanceStatus", "ssm:DescribeInstanceInformation")
def instance_healthy(
    instance_ids: List[str] = None,
    filters: List[Dict[str, Any]] = None,
    tags: Dict[str, str] = None,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> bool:
    """True when every targeted instance is running, passes both EC2 status checks and has
    its SSM agent online."""
    ec2, ssm = client("ec2", configuration, secrets), client("ssm", configuration, secrets)
    seen = observe(ec2, ssm, _targets(ec2, instance_ids, filters, tags), read_boot=False)
    unhealthy = {i: s.detail for i, s in seen.items() if not (s.status_ok and s.agent_online)}
    for i, why in unhealthy.items():
        logger.warning("%s is not healthy: %s", i, why)
    return not unhealthy


@requires(*RESOLVE_GUARDED, *RUN_SCRIPT, "ec2:SendDiagnosticInterrupt")
def ready_for_nmi(
    instance_ids: List[str] = None,
    filters: List[Dict[str, Any]] = None,
    tags: Dict[str, str] = None,
    min_dump_space_ratio: float = 1.0,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> bool:
    """True when every targeted instance could take an NMI now: running, opt-in tag, a type
    that takes the interrupt, SSM agent online, kdump armed, dump space of at least
    ``min_dump_space_ratio`` x memory, and EC2 DryRun permission (what ``chaosec2panic
    preflight`` prints). Sends nothing."""
    ec2, ssm = client("ec2", configuration, secrets), client("ssm", configuration, secrets)
    request = Request(instance_ids or (), filters or (), tags or {})
    problems = request.problems()
    if problems:
        raise InvalidRequest("; ".join(problems))
    guard = guardrails(configuration, 1)
    rows = readiness(ec2, ssm, request, guard, min_dump_space_ratio, settings(configuration).retry())
    for row in rows:
        for check, why in row["checks"].items():
            if why:
                logger.warning("%s not ready: %s: %s", row["instance_id"], check, why)
    return bool(rows) and all(row["ready"] for row in rows)


@requires(*RESOLVE, *RUN_SCRIPT)
def kdump_armed(
    instance_ids: List[str] = None,
    filters: List[Dict[str, Any]] = None,
    tags: Dict[str, str] = None,
    min_dump_space_ratio: float = 1.0,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Check on each targeted instance (through SSM) that an NMI will produce a crash dump.

    Linux: crash kernel loaded, crashkernel memory reserved, kernel.unknown_nmi_panic = 1,
    kdump service operational (kdumpctl, kdump-config or systemd), free space in the dump
    directory of at least ``min_dump_space_ratio`` x memory. Windows: CrashControl dump
    enabled, NMICrashDump = 1, AutoReboot = 1, free space. An instance that cannot be checked
    is ``unknown``, never armed. Returns ``armed`` (true only when every instance is armed)
    and per instance the verdict, each check (status, found, expected) and the reasons.
    """
    ec2, ssm = client("ec2", configuration, secrets), client("ssm", configuration, secrets)
    verdicts = kdump_verdicts(ssm, _targets(ec2, instance_ids, filters, tags), min_dump_space_ratio)
    instances = {i: v.to_dict() for i, v in verdicts.items()}
    for i, v in instances.items():
        if v["verdict"] != "armed":
            logger.warning("%s kdump %s: %s", i, v["verdict"], "; ".join(v["reasons"]))
    armed = bool(instances) and all(v["verdict"] == "armed" for v in instances.values())
    return {"armed": armed, "instances": instances}


def _dump_verdict(injection: Injection, stdout: str) -> Dict[str, Any]:
    report = parse_report(stdout, "crash_dumps")
    if not report.complete:
        return {"verdict": "unknown", "problems": report.problems, "unchecked": [], **NO_ACCOUNT}
    files, problems = dump_files(report)
    searched = report.get("dump_dir")
    sent = parse_iso(injection.sent_at).timestamp()
    # mtime has whole seconds: a dump written in the second of the NMI still counts.
    newer = [f for f in files if f.mtime >= int(sent)]
    if not newer:
        return {
            "verdict": "only-older-dumps" if files else "no-dump",
            "dump_dir": searched,
            "problems": problems,
            "unchecked": [],
            "older": [f.path for f in files],
            "crash_account": None,
            "crash_account_reason": "no dump written after the NMI",
        }
    # The first listed is the newest, and the only one whose first blocks were sent.
    newest = max(newer, key=lambda f: f.mtime)
    found = inspect_source(newest.source(), newest.path)
    running = report.get("kernel_release")
    log = crash_log(report)
    account, reason = _crash_account(log, found)
    evidence = dump_evidence(
        panic_uptime("\n".join(log.lines)) if account else None,
        found.crash_time,
        newest.mtime,
        crashed_boot(injection.boot_before),
    )
    return {
        "verdict": "complete-dump" if found.complete else "incomplete-dump",
        "dump_dir": searched,
        "path": newest.path,
        "size": newest.size,
        "written_at": epoch_iso(newest.mtime),
        "format": found.format,
        "complete": found.complete,
        "kernel_release": found.kernel_release,
        "machine": found.machine,
        "crash_time": found.crash_time,
        "compression": found.details.get("compression", ""),
        "bugcheck": found.details.get("bugcheck"),
        **_cause(found, account),
        "crash_account": account,
        "crash_account_reason": reason,
        "problems": problems + list(found.problems),
        "unchecked": list(found.unchecked),
        "running_kernel": running,
        "same_kernel": found.kernel_release == running if found.kernel_release and running else None,
        "evidence": {m: e.to_dict() for m, e in evidence.items()},
    }


def _crash_account(log: CrashLog, found: Inspection) -> tuple[Dict[str, Any] | None, str]:
    """The dump's own account of its crash from the crash log the instance sent (the lines of
    the crashed kernel's log around its last panic), and why there is none ("" when there is)."""
    if found.format.startswith("windows"):
        return None, "a Windows dump tells its crash by its bugcheck code (bugcheck)"
    if log.error:
        return None, log.error
    told = summarise_log(log.lines)
    frames = [line.strip() for line in told.call_trace if line.startswith(" ")]
    account = {
        "source": log.source,
        "file": log.file,
        "panic_message": told.panic_message,
        "nmi_panic": told.nmi_panic,
        "cpu": told.cpu,
        "pid": told.pid,
        "comm": told.comm,
        "rip_function": told.rip_function,
        "call_trace": frames[:ACCOUNT_FRAMES],
    }
    return account, ""


def _cause(found: Inspection, account: Dict[str, Any] | None) -> Dict[str, Any]:
    """Whether the dump's crash was the NMI: what the dump itself says (a Windows bugcheck code),
    else its crash account, the crashed kernel's own log (None when nothing says)."""
    if found.nmi_panic is not None:
        return {"nmi_panic": found.nmi_panic, "panic_message": found.panic_message}
    if account is None:
        return {"nmi_panic": None, "panic_message": ""}
    return {"nmi_panic": account["nmi_panic"], "panic_message": account["panic_message"] or ""}


@requires(*RESOLVE, *RUN_SCRIPT)
def crash_dumps(
    instance_ids: List[str] = None,
    dump_dir: str = "",
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Look for the crash dump of the last NMI on each hit instance (this run's, or the named
    instances' latest in the ledger).

    Reads only the dump directory listing with sizes and times and, of the newest dump, its
    first blocks (up to 64 KiB, compressed), its last 16 bytes and the crashed kernel's log
    around its last panic (on Windows: MEMORY.DMP's header pages), and judges them with the
    readers of ``chaosec2panic inspect``. What is wrong with the dump is in ``problems``; what
    they cannot check from those bytes (a kdump-compressed file's page data) is in
    ``unchecked``, and does not make a dump incomplete. Per instance: ``no-dump``,
    ``only-older-dumps``, ``incomplete-dump`` or ``complete-dump``, with the directory searched
    (``dump_dir``), path, size, format, kernel release (and whether it is the running kernel's),
    and whether the crash was the NMI (``nmi_panic``, ``panic_message``); or ``unknown`` when it
    cannot be read. ``crash_account`` is the dump's own account of its crash, read on the
    instance from the dmesg kdump saved beside the dump, else out of the dump by ``makedumpfile
    --dump-dmesg``: ``source`` (``dmesg-file`` or ``dump-dmesg``), ``file``, ``panic_message``,
    ``nmi_panic``, the crashing ``cpu``, ``pid`` and ``comm``, ``rip_function`` and the top of the
    ``call_trace``; null when it was not read, with ``crash_account_reason`` saying why.
    On Linux the dumps are looked for where the instance's kdump configuration writes them
    (kdump.conf ``path``, kdump-tools ``KDUMP_COREDIR``, SUSE ``KDUMP_SAVEDIR``, else
    /var/crash), unless ``dump_dir`` names the directory; Windows reads its CrashControl
    DumpFile.
    """
    ec2, ssm = client("ec2", configuration, secrets), client("ssm", configuration, secrets)
    hits = judged_hits(configuration, instance_ids)
    variables = {"DUMP_DIR": dump_dir} if dump_dir else None
    results = run_script(ssm, platforms_of(ec2, sorted(hits)), "crash_dumps", variables, timeout=60)
    instances = {}
    for i, injection in hits.items():
        r = results[i]
        instances[i] = (
            _dump_verdict(injection, r.stdout)
            if r.ok
            else {
                "verdict": "unknown",
                "problems": [f"not read: {r.status} {r.error}".rstrip()],
                "unchecked": [],
                **NO_ACCOUNT,
            }
        )
        instances[i]["nmi_sent_at"] = injection.sent_at
    # The recovery timelines take the panic and the dump written from here.
    Ledger.of(configuration).update(
        {
            (i, e.sent_at): {
                "dump_found": instances[i]["written_at"],
                "evidence": {**e.evidence, **instances[i]["evidence"]},
            }
            for i, e in hits.items()
            if "written_at" in instances[i]
        }
    )
    return {"instances": instances}


@requires(*RESOLVE, *RUN_SCRIPT)
def crash_dump_present(
    instance_ids: List[str] = None,
    dump_dir: str = "",
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> bool:
    """True when every hit instance holds a complete crash dump written after its last NMI, of
    a crash the NMI caused (its crash account, the crashed kernel's log saved beside it or read
    out of it, shows the NMI panic; on Windows, bugcheck 0x80). True at once before any NMI of
    this run. Linux dumps are looked for as ``crash_dumps`` looks for them: where kdump is
    configured to write, unless ``dump_dir`` is given."""
    found = crash_dumps(instance_ids, dump_dir, configuration, secrets)["instances"]
    proven = {i: v["verdict"] == "complete-dump" and v.get("nmi_panic") is True for i, v in found.items()}
    for i, ok in proven.items():
        if not ok:
            v = found[i]
            logger.warning(
                "%s: %s, NMI panic %s %s",
                i,
                v["verdict"],
                v.get("nmi_panic"),
                "; ".join([*v.get("problems", []), v.get("crash_account_reason") or ""]).strip("; "),
            )
    return all(proven.values())


@requires("ec2:GetConsoleOutput")
def panic_on_console(
    instance_ids: List[str] = None,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> bool:
    """True when the console of every hit instance showed, after its last NMI, the kernel
    panicking: the NMI panic message, or the kdump capture kernel booting (recent kernels print
    an NMI panic only to the log when kdump takes over at once). A console holds only its last
    64 KiB, which the next boot soon fills: a capture kernel the recovery watch read there (kept
    with the instance's timeline) counts, else the console now (GetConsoleOutput, latest) must
    show it. True at once before any NMI."""
    ec2 = client("ec2", configuration, secrets)
    verdicts = {}
    for i, injection in judged_hits(configuration, instance_ids).items():
        seen = injection.timeline.get("evidence", {}).get("capture_started")
        if seen:
            logger.info("%s capture kernel seen on the console by the recovery watch: %s", i, seen)
            verdicts[i] = True
            continue
        findings = console_after(ec2, injection)
        verdicts[i] = findings.panicked_on_nmi
        if not findings.panicked_on_nmi:
            logger.warning("%s console after the NMI: %s", i, findings.to_dict())
    return all(verdicts.values())


def _watch(
    configuration: Configuration,
    secrets: Secrets,
    hits: Dict[str, Injection],
    deadline: float,
    check: Dict[str, Any] | None,
) -> Dict[str, Timeline]:
    app_check = parse_app_check(check)
    ec2, ssm = client("ec2", configuration, secrets), client("ssm", configuration, secrets)
    instances = resolve(ec2, Request(sorted(hits)), None).chosen
    platforms = {i["InstanceId"]: platform_of(i) for i in instances}
    app = None
    if app_check:
        elbv2 = client("elbv2", configuration, secrets) if app_check.target_group else None
        app = AppWatch(app_check, {i["InstanceId"]: app_check.target(i) for i in instances}, elbv2)
        unregistered = app.unregistered()
        if unregistered:
            raise InvalidRequest(
                f"{', '.join(unregistered)} not registered in target group {app_check.target_group}:"
                " register them or check another group"
            )
    return watch_recovery(
        ec2,
        ssm,
        Ledger.of(configuration),
        hits,
        platforms,
        deadline,
        settings(configuration).poll_interval,
        app,
    )


@requires(*RESOLVE, *WATCH_RECOVERY, *APP_CHECK)
def recovery_seconds(
    timeout: float = 600,
    slo: float = None,
    app_check: Dict[str, Any] = None,
    instance_ids: List[str] = None,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Wait up to ``timeout`` seconds until each hit instance is back (a new boot, status
    checks ok, SSM agent online) and return the seconds from its NMI per instance (null when
    not back), the fleet's max, p50 and p95 (and, with ``slo``, how many took longer), and each
    instance's timeline: the UTC time of each milestone (nmi_sent, panic, capture_started,
    dump_written, went_down, kernel_back, status_ok, agent_online, app_healthy; null and the
    reason when nothing shows it), the evidence of each (its source, such as the kernel's own
    printk times, the dump, the boot time or a status check, and its error bar in seconds), any
    conflict between them, and the durations derived from them. With ``app_check`` (``{"url":
    "http://{private_ip}:8080/health"}`` or ``{"tcp": "{private_ip}:5432"}``, optional
    ``expect_status`` and ``timeout``; or ``{"target_group": ARN}``, which every hit instance
    must be registered in), back also needs the application to answer in the new boot (a
    target group: to be reported healthy again after it reported the instance unhealthy).
    Before any NMI it returns at once."""
    hits = judged_hits(configuration, instance_ids)
    deadline = time.monotonic() + float(timeout)
    lines = _watch(configuration, secrets, hits, deadline, app_check) if hits else {}
    seconds = {i: line.recovery_seconds for i, line in lines.items()}
    return {
        "instances": seconds,
        **fleet_summary(seconds, None if slo is None else float(slo)),
        "timelines": {i: line.to_dict() for i, line in lines.items()},
    }


@requires(*RESOLVE, *WATCH_RECOVERY, *APP_CHECK)
def recovered_within(
    seconds: float,
    app_check: Dict[str, Any] = None,
    instance_ids: List[str] = None,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> bool:
    """True when every hit instance was back (a new boot, status checks ok, SSM agent online,
    and the ``app_check`` passing when given, as in ``recovery_seconds``) within ``seconds`` of
    its NMI. Waits no longer than that; before any NMI it is true at once."""
    hits = judged_hits(configuration, instance_ids)
    if not hits:
        return True
    latest_deadline = max(parse_iso(e.sent_at).timestamp() for e in hits.values()) + float(seconds)
    deadline = time.monotonic() + max(0.0, latest_deadline - time.time())
    lines = _watch(configuration, secrets, hits, deadline, app_check)
    late = {
        i: line.recovery_seconds
        for i, line in lines.items()
        if line.recovery_seconds is None or line.recovery_seconds > float(seconds)
    }
    for i, s in late.items():
        logger.warning(
            "%s not back within %ss of its NMI (%s)",
            i,
            seconds,
            "not back yet: " + "; ".join(lines[i].missing.values()) if s is None else f"back after {s}s",
        )
    return not late
