"""The report's page: the report model (:func:`chaosec2panic.report.report_model`) -> one
self-contained HTML page (inline CSS and SVG, no script, nothing fetched) -> a PNG of it. The
charts come from :mod:`chaosec2panic.report_charts`; the page lays them out with the cards, the
legend and the tables.

:func:`render_html` is pure; :func:`screenshot` runs headless Chromium.
"""

import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Sequence, Tuple

from .journal import ReportError, count_of
from .recovery import parse_iso
from .report import milestone_order
from .report_charts import (
    MILESTONE_STYLES,
    NOT_BACK_COLOUR,
    OTHER_STYLE,
    SECONDS_ONLY_COLOUR,
    SLO_COLOUR,
    escape,
    histogram_svg,
    secs,
    tag,
    tick_label,
    timeline_svg,
)

__all__ = [
    "MILESTONE_STYLES",
    "PAGE_WIDTH",
    "SLO_COLOUR",
    "ChromiumMissing",
    "chromium",
    "render_html",
    "screenshot",
]

PAGE_WIDTH = 1280
MAX_PNG_HEIGHT = 16384
CHROMIUM_TIMEOUT = 120
VERDICT_COLOURS = {
    "complete-dump": "#1B7837",
    "incomplete-dump": "#D55E00",
    "only-older-dumps": "#C00000",
    "no-dump": "#C00000",
}


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
INSTALL_HINT = (
    "the PNG needs Chromium, which is not installed: as root, "
    "apt-get install --no-install-recommends chromium (scripts/setup.sh installs it)"
)


class ChromiumMissing(ReportError):
    """Headless Chromium, which takes the PNG, is not installed."""


# model -> HTML -------------------------------------------------------------------------------------
CSS = """
*{box-sizing:border-box}
body{margin:0;background:#fff;color:#1a1a1a;font:13px/1.45 "DejaVu Sans",Arial,sans-serif}
main{width:1280px;padding:24px 40px 32px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:16px;margin:26px 0 6px;padding-bottom:3px;border-bottom:1px solid #ddd}
p{margin:4px 0}
.meta,.note{color:#555}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:14px}
.card{border:1px solid #ccc;border-radius:6px;padding:6px 12px;min-width:112px}
.card b{display:block;font-size:21px}
.card.bad{border-color:#C00000;background:#fff4f4}
.card.bad b{color:#C00000}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;margin:6px 0}
.sw{display:inline-block;width:22px;height:10px;margin-right:5px;vertical-align:middle}
table{border-collapse:collapse;width:100%;font-size:12px}
th{text-align:left;background:#f3f3f3;border-bottom:1px solid #ccc}
th,td{padding:1px 7px;white-space:nowrap}
td{border-bottom:1px solid #eee}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{white-space:normal;font-size:11px}
td.sub{padding-left:24px;border-bottom:1px solid #ddd}
tr:has(+ tr.sub) td{border-bottom:none}
.mono{font-family:"DejaVu Sans Mono",monospace;font-size:11.5px}
.bad{color:#C00000;font-weight:bold}
.ok{color:#1B7837}
.account .frame{white-space:pre;padding-left:12px}
.account summary{cursor:pointer;color:#555}
svg text{font-family:"DejaVu Sans",Arial,sans-serif}
"""
SKIPPED_LISTED = 500  # values left out, listed on the page
FRAMES_SHOWN = 6  # call-trace frames shown of a crash account; the rest are folded


def _when(moment: str | None) -> str:
    """A journal time, to the second, in UTC."""
    try:
        return parse_iso(moment or "").strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return moment or "?"


def _size(size: Any) -> str:
    if not isinstance(size, int) or isinstance(size, bool):
        return "—"
    if size < 1024:
        return f"{size} B"
    power = min(int(math.log(size, 1024)), 3)
    return f"{size / 1024**power:.1f} {('KiB', 'MiB', 'GiB')[power - 1]}"


def _legend(model: Mapping[str, Any]) -> str:
    def item(swatch: str, text: str) -> str:
        return tag("span", swatch + escape(text))

    def box(fill: str, style: str = "") -> str:
        return tag("span", "", class_="sw", style=f"background:{fill};{style}")

    items = []
    if model["source"] == "timelines":
        for m in model["milestones"]:
            style = MILESTONE_STYLES.get(m, OTHER_STYLE)
            shape = "" if style.segment else "width:10px;height:10px;transform:rotate(45deg);"
            items.append(item(box(style.colour, shape), style.label or m))
    else:
        items.append(item(box(SECONDS_ONLY_COLOUR), "NMI → back (this journal has no milestones)"))
    if model["evidence_sources"]:
        items.append(
            item(
                box(
                    "linear-gradient(#000,#000) center/100% 1px no-repeat",
                    "border:solid #000;border-width:0 1px",
                ),
                "error bar: where the moment may be (a look that found it done: before it only)",
            )
        )
    items += [
        item(box("#000", "width:3px;height:16px;"), "back (total recovery)"),
        item(
            box(f"repeating-linear-gradient(45deg,{NOT_BACK_COLOUR} 0 2px,#fbe3e3 2px 5px)"),
            "not back: the wait until the last look",
        ),
        item(
            box(f"repeating-linear-gradient(90deg,{SLO_COLOUR} 0 7px,transparent 7px 11px)", "height:2px;"),
            "SLO",
        ),
    ]
    return tag("div", "".join(items), class_="legend")


def _card(label: str, value: Any, bad: bool = False) -> str:
    return tag("div", tag("b", escape(value)) + escape(label), class_="card bad" if bad else "card")


def _cards(model: Mapping[str, Any]) -> str:
    fleet, slo = model["fleet"], model["slo"]
    pending = len(fleet["pending"])
    verdicts = model["dumps"]["verdicts"]
    cards = [
        _card("instances measured", fleet["count"]),
        _card("back", fleet["recovered"]),
        _card("not back", pending, pending > 0),
    ]
    if slo is not None:
        cards.append(_card(f"over the SLO of {tick_label(slo)}", fleet["over_slo"], fleet["over_slo"] > 0))
    cards += [
        _card("max", secs(fleet["max"])),
        _card("p95", secs(fleet["p95"])),
        _card("p50", secs(fleet["p50"])),
    ]
    if verdicts:
        complete = verdicts.get("complete-dump", 0)
        cards.append(
            _card(
                "complete dumps", f"{complete} / {sum(verdicts.values())}", complete < sum(verdicts.values())
            )
        )
    if fleet["not_sent"]:
        cards.append(_card("NMI not sent", fleet["not_sent"], True))
    return tag("div", "".join(cards), class_="cards")


def _verdict(dump: Mapping[str, Any] | None) -> str:
    if dump is None:
        return "—"
    verdict = dump.get("verdict", "unknown")
    return tag(
        "span", escape(verdict), style=f"color:{VERDICT_COLOURS.get(verdict, '#555')};font-weight:bold"
    )


def _table(
    head: Sequence[str], rows: Iterable[Sequence[str] | str], numeric: Sequence[int], **attrs: Any
) -> str:
    """A table; numeric columns align right, the last column wraps; a row given as one string
    spans the table (a note on the row above)."""

    def kind(i: int) -> str | None:
        return "n" if i in numeric else "wrap" if i == len(head) - 1 else None

    def tr(cells: Sequence[str] | str) -> str:
        if isinstance(cells, str):
            return tag("tr", tag("td", cells, colspan=len(head), class_="wrap sub"), class_="sub")
        return tag("tr", "".join(tag("td", c, class_=kind(i)) for i, c in enumerate(cells)))

    th = "".join(tag("th", escape(h), class_=kind(i)) for i, h in enumerate(head))
    body = "".join(tr(r) for r in rows)
    return tag("table", tag("thead", tag("tr", th)) + tag("tbody", body), **attrs)


def _yes_no(value: Any) -> str:
    return {True: tag("span", "yes", class_="ok"), False: tag("span", "no", class_="bad")}.get(value, "—")


def _crash_account(dump: Mapping[str, Any]) -> str:
    """What the instance's log said of the crash, under its dump: the panic line, the crashing
    task, the RIP's function, where it was read, and the top of the call trace (the rest
    folded). A journal older than the account: the panic message alone, if any; else ""."""
    account = dump["crash_account"] or {}
    message = account.get("panic_message") or dump["panic_message"]
    said = [f"panic: {tag('span', escape(message), class_='mono panic')}"] if message else []
    task = [account.get(k) for k in ("cpu", "pid", "comm")]
    if any(v is not None for v in task):
        cpu, pid, comm = ("?" if v is None else v for v in task)
        said.append(tag("span", escape(f"CPU {cpu} PID {pid} {comm}"), class_="mono"))
    if account.get("rip_function"):
        said.append("RIP in " + tag("span", escape(account["rip_function"]), class_="mono"))
    if account.get("source"):
        said.append(
            escape(f"read from {account['source']}" + (f" {account['file']}" if account["file"] else ""))
        )
    frames = [tag("div", escape(f), class_="frame mono") for f in account.get("call_trace", [])]
    if not said and not frames:
        return ""
    folded = frames[FRAMES_SHOWN:]
    if folded:
        more = tag("summary", escape(count_of(len(folded), "more frame")))
        frames = [*frames[:FRAMES_SHOWN], tag("details", more + "".join(folded))]
    trace = tag("div", "call trace:" + "".join(frames), class_="trace") if frames else ""
    return tag("div", " · ".join(said) + trace, class_="account")


def _dumps_table(model: Mapping[str, Any]) -> str:
    rows = {r["instance_id"]: r for r in model["instances"]}
    lines: List[Sequence[str] | str] = []
    for i in model["dumps"]["rows"]:
        row = rows[i]
        d = row["dump"]
        lines.append(
            [
                tag("span", escape(i), class_="mono"),
                _verdict(d),
                _yes_no(d["nmi_panic"]),
                tag("span", escape(d["path"] or "—"), class_="mono"),
                _size(d["size"]),
                escape(d["format"] or "—"),
                escape(d["kernel_release"] or "—"),
                secs(d["written_after"]),
            ]
        )
        account = _crash_account(d)
        if account:
            lines.append(account)
        if d["problems"]:
            lines.append(tag("span", "problems: ", class_="bad") + escape("; ".join(d["problems"])))
    table = _table(
        [
            "instance",
            "verdict",
            "NMI panic",
            "path",
            "size",
            "format",
            "kernel",
            "written after NMI",
        ],
        lines,
        (4, 7),
        id="dumps",
    )
    counts = ", ".join(f"{n} {v}" for v, n in sorted(model["dumps"]["verdicts"].items()))
    more = model["dumps"]["more"]
    note = f" The other {more} complete dumps of an NMI panic are in the per-instance table." if more else ""
    return tag("p", escape(f"Verdicts: {counts}.{note}"), class_="note") + table


def _instances_table(model: Mapping[str, Any]) -> str:
    slo = model["slo"]
    lines = []
    for r in model["instances"]:
        d = r["durations"]
        if not r["measured"]:
            back = "not measured"
        elif r["recovery"] is None:
            back = tag("span", "not back", class_="bad")
        else:
            back = secs(r["recovery"])
        over = (
            "—" if r["over_slo"] is None else tag("span", "over", class_="bad") if r["over_slo"] else "within"
        )
        lines.append(
            [
                tag("span", escape(r["instance_id"]), class_="mono"),
                escape(r["batch"] if r["batch"] is not None else "—"),
                escape((r["sent_at"] or "—").replace("T", " ")),
                escape(r["outcome"] or "—")
                + (tag("span", escape(f" {r['error']}"), class_="bad") if r["error"] else ""),
                back,
                over if slo is not None else "—",
                secs(d.get("time_to_crash")),
                secs(d.get("time_to_reboot")),
                secs(d.get("time_to_healthy")),
                _verdict(r["dump"]),
                escape(
                    ", ".join(
                        m
                        for m in sorted(r["missing"], key=milestone_order)
                        if m not in model["missing_everywhere"]
                    )
                ),
            ]
        )
    return _table(
        [
            "instance",
            "batch",
            "NMI sent (UTC)",
            "NMI",
            "back after",
            "SLO",
            "to crash",
            "to reboot",
            "to healthy",
            "dump",
            "missing milestones",
        ],
        lines,
        (1, 4, 6, 7, 8),
        id="instances",
    )


def _sources_table(model: Mapping[str, Any]) -> str:
    """Per milestone, fleet-wide: the sources that dated it, best first, and the widest error bar."""
    lines = []
    for m, found in model["evidence_sources"].items():
        sources = ", ".join(f"{source} ({n})" for source, n in found["sources"].items())
        label = MILESTONE_STYLES.get(m, OTHER_STYLE).label or m
        lines.append(
            [
                escape(label),
                tag("span", escape(m), class_="mono"),
                secs(found["widest_s"]),
                escape(found["upper_bounds"]),
                escape(found["lower_bounds"]),
                escape(sources),
            ]
        )
    return _table(
        ["milestone", "name", "widest error bar", "upper bounds", "lower bounds", "dated by (instances)"],
        lines,
        (2, 3, 4),
        id="sources",
    )


def _conflicts_list(conflicts: Mapping[str, Sequence[str]]) -> str:
    """Each instance whose evidence contradicted itself, and how (its bars were widened)."""
    if not conflicts:
        return ""
    items = [
        tag("li", tag("span", escape(i), class_="mono") + ": " + escape("; ".join(said)))
        for i, said in list(conflicts.items())[:SKIPPED_LISTED]
    ]
    if len(conflicts) > SKIPPED_LISTED:
        items.append(tag("li", escape(f"and {len(conflicts) - SKIPPED_LISTED} more")))
    return (
        tag("h2", f"Evidence that contradicted itself ({count_of(len(conflicts), 'instance')})")
        + tag(
            "p",
            escape(
                "Nothing was reordered: the weaker evidence's error bar was widened to cover the "
                "contradiction, and the times stay as their sources said."
            ),
            class_="note",
        )
        + tag("ul", "".join(items), id="conflicts")
    )


def _skipped_list(skipped: Sequence[str]) -> str:
    """The values of the journal left out, each with where it is, what was expected and found."""
    if not skipped:
        return ""
    items = [tag("li", escape(s), class_="mono") for s in skipped[:SKIPPED_LISTED]]
    if len(skipped) > SKIPPED_LISTED:
        items.append(tag("li", escape(f"and {len(skipped) - SKIPPED_LISTED} more")))
    return tag("h2", f"Left out of the journal ({len(skipped)})") + tag("ul", "".join(items), id="skipped")


def render_html(model: Mapping[str, Any]) -> str:
    """The whole page for ``model`` (from :func:`report_model`): one string, nothing to fetch."""
    fleet, slo = model["fleet"], model["slo"]
    slo_text = (
        f"SLO {tick_label(slo)} (from {model['slo_source']})"
        if slo is not None
        else "no SLO in the journal (pass --slo)"
    )
    measured_by = (
        "milestone timelines"
        if model["source"] == "timelines"
        else "recovery seconds only (this journal has no milestone timelines)"
    )
    meta = (
        f"run {model['status'] or '?'}, deviated: {'yes' if model['deviated'] else 'no'} · "
        f"{_when(model['start'])} → {_when(model['end'])} · {slo_text} · {measured_by}"
    )
    count, shown = fleet["count"], len(model["timeline"])
    not_back = len(fleet["pending"])
    if shown == count:
        scope = (
            "1 instance measured."
            if count == 1
            else f"{count} instances: not back first, then slowest first."
        )
    else:
        scope = (
            f"The {shown - not_back} slowest of the {fleet['recovered']} instances back"
            + (f" and all {not_back} not back" if not_back else "")
            + f", of {count} measured; every instance is in the table at the end."
        )
    everywhere = model["missing_everywhere"]
    missing_note = (
        tag(
            "p",
            escape(
                "Missing on every instance: "
                + "; ".join(f"{m} ({why})" for m, why in everywhere.items())
                + "."
            ),
            class_="note",
        )
        if everywhere
        else ""
    )
    halted = tag("p", escape(f"Rollout halted {fleet['halted']}"), class_="bad") if fleet["halted"] else ""
    skipped = model["skipped"]
    skipped_note = (
        tag(
            "p",
            escape(
                f"{count_of(len(skipped), 'value')} of the journal left out, as not in the shape "
                "`chaos run` writes: listed at the end."
            ),
            class_="bad",
        )
        if skipped
        else ""
    )
    body = [
        tag("h1", escape(f"Crash-capture report: {model['title']}")),
        tag("p", escape(meta), class_="meta"),
        halted,
        skipped_note,
        _cards(model),
        tag("h2", "Fleet: recovery times"),
        tag(
            "p",
            escape(
                f"{fleet['recovered']} of {count_of(count, 'instance')} back; "
                "the hatched bar: those not back."
            ),
            class_="note",
        ),
        histogram_svg(model),
        tag("h2", "Timeline per instance"),
        tag("p", escape(scope), class_="note"),
        _legend(model),
        missing_note,
        timeline_svg(model),
        *(
            [
                tag("h2", "How each milestone was dated"),
                tag(
                    "p",
                    escape(
                        "Each milestone is dated by the best evidence found: the API call, then the "
                        "kernel's own printk times (console-printk, dump-dmesg), the vmcore, the new "
                        "boot's start, the agent's start (a lower bound) and answer, and last a look "
                        "that found it done (status-check, app-check, first-seen: an upper bound)."
                    ),
                    class_="note",
                ),
                _sources_table(model),
            ]
            if model["evidence_sources"]
            else []
        ),
        _conflicts_list(model["conflicts"]),
        tag("h2", "Crash dumps"),
        _dumps_table(model)
        if model["dumps"]["rows"]
        else tag("p", "No crash dump was looked for in this run.", class_="note"),
        tag("h2", f"Every instance ({len(model['instances'])})"),
        _instances_table(model),
        _skipped_list(skipped),
    ]
    head = (
        '<meta charset="utf-8">'
        + tag("title", escape(f"Crash-capture report: {model['title']}"))
        + tag("style", CSS)
    )
    return (
        "<!DOCTYPE html>\n"
        + tag("html", tag("head", head) + tag("body", tag("main", "".join(body))), lang="en")
        + "\n"
    )


# HTML -> PNG --------------------------------------------------------------------------------------
MEASURE_SCRIPT = (
    "<script>document.body.setAttribute('data-height',document.documentElement.scrollHeight)</script>"
)


def chromium() -> str | None:
    """The Chromium executable, if installed."""
    return shutil.which("chromium")


def _run_chromium(browser: str, profile: Path, action: str, height: int, page: Path) -> str:
    command = [
        browser,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        action,
        f"--window-size={PAGE_WIDTH},{height}",
        page.resolve().as_uri(),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReportError(f"Chromium did not run: {exc}") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise ReportError(f"Chromium failed (exit {done.returncode}): {tail}")
    return done.stdout


def screenshot(page: Path, png: Path, browser: str | None = None) -> Tuple[int, int]:
    """Render ``page`` in headless Chromium into ``png``, as tall as the page (at most
    MAX_PNG_HEIGHT pixels); returns its width and height.

    Chromium screenshots only its window: a first run measures the page's height, with a
    script added to a copy of it (the report itself has none)."""
    browser = browser or chromium()
    if not browser:
        raise ChromiumMissing(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="chaosec2panic-report-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        probe = work / "measure.html"
        text = page.read_text(encoding="utf-8")
        probe.write_text(text.replace("</body>", MEASURE_SCRIPT + "</body>", 1), encoding="utf-8")
        dom = _run_chromium(browser, work / "profile-measure", "--dump-dom", 800, probe)
        found = re.search(r'data-height="(\d+)"', dom)
        if not found:
            raise ReportError("Chromium did not report the page's height")
        height = min(int(found.group(1)), MAX_PNG_HEIGHT)
        png.unlink(missing_ok=True)
        _run_chromium(browser, work / "profile-shot", f"--screenshot={png.resolve()}", height, page)
    if not png.exists():
        raise ReportError(f"Chromium wrote no PNG at {png}")
    return PAGE_WIDTH, height
