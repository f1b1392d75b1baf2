"""The report: journal -> model -> HTML (parsed back) -> PNG (rendered by real headless Chromium)."""

import html
import json
import random
import re
import struct
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import pytest
from conftest import ROOT, opted_in, run_experiment

from chaosec2panic.journal import BadJournal, describe, load_journal
from chaosec2panic.recovery import MILESTONES, WHY_MISSING, Evidence, assemble, iso, seconds_between
from chaosec2panic.report import NoRecoveryData, report_model
from chaosec2panic.report_page import (
    MILESTONE_STYLES,
    PAGE_WIDTH,
    SLO_COLOUR,
    ChromiumMissing,
    chromium,
    render_html,
    screenshot,
)

CLI = str(Path(sys.executable).with_name("chaosec2panic"))
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NO_APP = "no application check configured"


def at(seconds: float) -> str:
    return iso(T0 + timedelta(seconds=seconds))


def result(func: str, output: Any, end: float, module: str = "chaosec2panic.probes", **more: Any) -> Dict:
    """One activity result as `chaos run` journals it."""
    return {
        "activity": {
            "type": "action" if func == "send_nmi" else "probe",
            "name": func.replace("_", "-"),
            "provider": {"type": "python", "module": module, "func": func, "arguments": {}},
        },
        "status": "succeeded",
        "output": output,
        "start": at(0),
        "end": at(end),
        **more,
    }


def timeline(sent: float, times: Dict[str, float | None]) -> Dict[str, Any]:
    """A timeline in the recovery output's shape, from seconds after T0 (None: missing)."""
    milestones = {m: None if times.get(m) is None else at(times[m]) for m in MILESTONES}
    milestones["nmi_sent"] = at(sent)
    healthy = [times.get(m) for m in ("kernel_back", "status_ok", "agent_online")]
    back = max(healthy) if all(t is not None for t in healthy) else None

    def span(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(b - a, 3)

    return {
        "milestones": milestones,
        "missing": {m: WHY_MISSING[m] for m, t in milestones.items() if t is None},
        "durations": {
            "time_to_crash": span(sent, times.get("panic")),
            "time_to_reboot": span(sent, times.get("kernel_back")),
            "time_to_healthy": span(times.get("kernel_back"), back),
            "total_recovery": span(sent, back),
        },
    }


def fleet_journal(
    n: int, not_back: Sequence[int] = (), slo: float = 600, timelines: bool = True, seed: int = 1
) -> Dict[str, Any]:
    """A journal of a rolling NMI over ``n`` instances (batches of 50); ``not_back`` never return,
    and the last of them lost its panic too. Recovery takes 40 to 130 s."""
    rng = random.Random(seed)
    ids = [f"i-{k:017x}" for k in range(1, n + 1)]
    injections, seconds, lines, dumps = [], {}, {}, {}
    for k, i in enumerate(ids):
        sent = (k // 50) * 150 + rng.uniform(0, 0.5)
        injections.append(
            {"instance_id": i, "batch": k // 50 + 1, "sent_at": at(sent), "outcome": "sent", "error": ""}
        )
        kernel = sent + rng.uniform(20, 60)
        times: Dict[str, float | None] = {
            "panic": sent + rng.uniform(0.2, 2),
            "went_down": sent + rng.uniform(3, 10),
            "kernel_back": kernel,
            "status_ok": kernel + rng.uniform(10, 70),
            "agent_online": kernel + rng.uniform(5, 30),
            "capture_started": sent + rng.uniform(2.1, 3),
            "dump_written": kernel - rng.uniform(1, 5),
        }
        if k in not_back:
            times.update(kernel_back=None, status_ok=None, agent_online=None, dump_written=None)
            if k == max(not_back):
                times["panic"] = None
        lines[i] = timeline(sent, times)
        seconds[i] = lines[i]["durations"]["total_recovery"]
        dumps[i] = (
            {"verdict": "no-dump", "problems": [], "older": [], "nmi_sent_at": at(sent)}
            if k in not_back
            else {
                "verdict": "complete-dump",
                "path": f"/var/crash/127.0.0.1-2026-03-01-12:00:{k % 60:02d}/vmcore",
                "size": 22_000_000 + k,
                "written_at": at(kernel - 5),
                "format": "kdump-compressed",
                "complete": True,
                "kernel_release": "6.1.0-18-amd64",
                "nmi_panic": True,
                "same_kernel": True,
                "problems": [],
                "nmi_sent_at": at(sent),
            }
        )
    recovery: Dict[str, Any] = {"instances": seconds, "count": n}
    if timelines:
        recovery["timelines"] = lines
    last = max(sent for sent in ((k // 50) * 150 for k in range(n))) + 300  # the last look
    return {
        "experiment": {
            "title": "A fleet survives NMIs",
            "steady-state-hypothesis": {
                "probes": [
                    {
                        "type": "probe",
                        "name": "back",
                        "provider": {
                            "type": "python",
                            "module": "chaosec2panic.probes",
                            "func": "recovered_within",
                            "arguments": {"seconds": slo},
                        },
                    }
                ]
            },
        },
        "status": "completed",
        "deviated": bool(not_back),
        "start": at(-10),
        "end": at(last + 10),
        "steady_states": {
            "before": {"probes": [result("recovery_seconds", {"instances": {}, "count": 0}, 0)]},
            "after": {"probes": [result("recovered_within", not not_back, last + 5)]},
        },
        "run": [
            result(
                "send_nmi",
                {"batches": [], "halted": None, "injections": injections},
                1,
                "chaosec2panic.actions",
            ),
            result("recovery_seconds", recovery, last),
            result("crash_dumps", {"instances": dumps}, last + 2),
        ],
    }


# the model ---------------------------------------------------------------------------------------
def test_one_instance_model_has_its_milestones_as_offsets_from_the_nmi():
    model = report_model(fleet_journal(1, slo=120))
    [row] = model["instances"]
    assert model["source"] == "timelines" and model["slo"] == 120
    assert model["slo_source"] == "recovered_within in the experiment"
    assert model["timeline"] == [row["instance_id"]]
    line = fleet_journal(1)["run"][1]["output"]["timelines"][row["instance_id"]]
    assert row["recovery"] == line["durations"]["total_recovery"]
    assert row["offsets"]["nmi_sent"] == 0
    assert row["offsets"]["kernel_back"] == line["durations"]["time_to_reboot"]
    assert row["offsets"]["app_healthy"] is None and row["missing"] == {"app_healthy": NO_APP}
    assert model["missing_everywhere"] == {"app_healthy": NO_APP}
    assert row["batch"] == 1 and row["dump"]["verdict"] == "complete-dump"
    assert model["fleet"]["count"] == 1 and model["fleet"]["over_slo"] == 0
    assert sum(c for _, _, c in model["histogram"]["bins"]) == 1


def test_a_dump_found_by_crash_dumps_after_the_recovery_probe_fills_its_milestone():
    journal = fleet_journal(1)
    [line] = journal["run"][1]["output"]["timelines"].values()
    line["milestones"]["dump_written"] = None
    line["missing"]["dump_written"] = WHY_MISSING["dump_written"]
    [dump] = journal["run"][2]["output"]["instances"].values()
    [row] = report_model(journal)["instances"]
    assert row["offsets"]["dump_written"] == seconds_between(
        line["milestones"]["nmi_sent"], dump["written_at"]
    )
    assert "dump_written" not in row["missing"]


Dated = Dict[str, Tuple[Any, ...]]


def evidence_journal(dated: Dated, dump_dated: Dated | None = None) -> Dict[str, Any]:
    """A one-instance journal whose timeline is assembled, as the probes assemble it, from
    evidence: milestone -> (seconds after T0, source, error bar, upper bound[, lower bound]); ``dump_dated``
    is the evidence crash_dumps wrote after the recovery probe."""
    journal = fleet_journal(1)
    [(instance, _)] = journal["run"][1]["output"]["timelines"].items()

    def evidence(found: Dated) -> Dict[str, Evidence]:
        return {m: Evidence(at(t), source, bar, *bounds) for m, (t, source, bar, *bounds) in found.items()}

    healthy = at(max(dated[m][0] for m in ("kernel_back", "status_ok", "agent_online")))
    line = assemble(instance, evidence(dated), WHY_MISSING, healthy).to_dict()
    journal["run"][1]["output"]["timelines"][instance] = line
    journal["run"][1]["output"]["instances"][instance] = line["durations"]["total_recovery"]
    dump = journal["run"][2]["output"]["instances"][instance]
    dump["evidence"] = {m: e.to_dict() for m, e in evidence(dump_dated or {}).items()}
    return journal


DATED = {
    "nmi_sent": (0.0, "api-call", 0.02, False),
    "panic": (0.1, "console-printk", 0.5, False),
    "went_down": (6.0, "status-check", 5.0, True),
    "kernel_back": (40.0, "boot-time", 0.01, False),
    "status_ok": (60.0, "status-check", 10.0, True),
    "agent_online": (50.0, "agent-answer", 0.5, False),
}


def test_each_milestone_keeps_its_source_and_error_bar_and_the_page_draws_them():
    model = report_model(evidence_journal(DATED))
    [row] = model["instances"]
    assert row["evidence"]["panic"] == {
        "offset": 0.1,
        "source": "console-printk",
        "uncertainty_s": 0.5,
        "upper_bound": False,
        "lower_bound": False,
    }
    assert row["evidence"]["status_ok"]["upper_bound"] is True and row["conflicts"] == []
    assert model["evidence_sources"]["status_ok"] == {
        "sources": {"status-check": 1},
        "widest_s": 10.0,
        "upper_bounds": 1,
        "lower_bounds": 0,
    }
    assert list(model["evidence_sources"]) == [m for m in MILESTONES if m in DATED]
    tree = parse(render_html(model))

    def span(m: str) -> Tuple[float, float]:
        [whisker] = [e for e in tree.find("path", **{"class": m}) if "whisker" in e["class"].split()]
        lo, hi = re.match(r"M([\d.]+) [\d.]+H([\d.]+)", whisker["d"]).groups()
        return float(lo), float(hi)

    [ok_bar] = tree.find("rect", **{"class": "status_ok"})
    lo, hi = span("status_ok")  # an upper bound: before the moment only, up to the look before
    assert hi == pytest.approx(float(ok_bar["x"]) + float(ok_bar["width"]), abs=0.02) and lo < hi
    back_lo, back_hi = span("agent_online")  # either side of it
    [agent_bar] = tree.find("rect", **{"class": "agent_online"})
    end = float(agent_bar["x"]) + float(agent_bar["width"])
    assert back_lo < end < back_hi and end - back_lo == pytest.approx(back_hi - end, abs=0.02)
    assert (hi - lo) == pytest.approx(20 * (back_hi - back_lo) / 2, rel=0.01)  # 10 s against ±0.5 s
    whiskers = {e["class"].split()[1] for e in tree.find("path", **{"class": "whisker"})}
    assert "kernel_back" not in whiskers and "panic" in whiskers  # ±0.01 s is under a pixel
    sources = [e["text"] for e in tree.inside("sources") if e["tag"] == "td"]
    assert "status-check (1)" in sources and "console-printk (1)" in sources
    assert any("± 0.50 s (console-printk)" in e["text"] for e in tree.find("title"))


def test_a_lower_bound_is_drawn_after_its_moment_only_and_counted():
    started = {**DATED, "agent_online": (45.0, "agent-start", 5.0, False, True)}
    model = report_model(evidence_journal(started))
    [row] = model["instances"]
    assert row["evidence"]["agent_online"]["lower_bound"] is True
    assert model["evidence_sources"]["agent_online"]["lower_bounds"] == 1
    tree = parse(render_html(model))
    [whisker] = [e for e in tree.find("path", **{"class": "agent_online"}) if "whisker" in e["class"].split()]
    lo, hi = map(float, re.match(r"M([\d.]+) [\d.]+H([\d.]+)", whisker["d"]).groups())
    [agent_bar] = tree.find("rect", **{"class": "agent_online"})
    assert lo == pytest.approx(float(agent_bar["x"]) + float(agent_bar["width"]), abs=0.02) and lo < hi
    assert any("up to 5.00 s later (agent-start)" in e["text"] for e in tree.find("title"))


def test_a_dump_that_dates_better_replaces_the_evidence_and_the_durations_follow():
    dump_dated = {
        "panic": (0.03, "dump-dmesg", 0.01, False),
        "dump_written": (30.0, "vmcore", 1.0, False),
    }
    [row] = report_model(evidence_journal(DATED, dump_dated))["instances"]
    assert row["evidence"]["panic"]["source"] == "dump-dmesg" and row["offsets"]["panic"] == 0.03
    assert row["durations"]["time_to_crash"] == 0.03 and row["durations"]["time_to_capture"] == 30.0
    assert row["durations"]["reboot_after_capture"] == 10.0
    assert "dump_written" not in row["missing"] and row["conflicts"] == []
    weaker = {"panic": (0.6, "vmcore", 0.5, False)}  # console-printk ranks above the vmcore
    [row] = report_model(evidence_journal(DATED, weaker))["instances"]
    assert row["evidence"]["panic"]["source"] == "console-printk" and row["offsets"]["panic"] == 0.1


def test_a_dump_that_contradicts_the_timeline_is_listed_and_nothing_is_reordered():
    after_back = {"dump_written": (45.0, "vmcore", 1.0, False)}  # written after the new kernel started
    model = report_model(evidence_journal(DATED, after_back))
    [row] = model["instances"]
    assert row["offsets"]["dump_written"] == 45.0 and row["offsets"]["kernel_back"] == 40.0
    assert row["conflicts"] and "dump_written" in row["conflicts"][0]
    assert model["conflicts"] == {row["instance_id"]: row["conflicts"]}
    page = render_html(model)
    assert len([e for e in parse(page).inside("conflicts") if e["tag"] == "li"]) == 1
    assert html.escape(row["conflicts"][0]) in page.split('id="conflicts"')[1]


def test_evidence_of_the_wrong_shape_is_left_out_and_named():
    journal = evidence_journal(DATED, {"panic": (0.03, "dump-dmesg", 0.01, False)})
    [line] = journal["run"][1]["output"]["timelines"].values()
    line["evidence"]["agent_online"]["source"] = "a guess"
    [dump] = journal["run"][2]["output"]["instances"].values()
    dump["evidence"]["panic"]["uncertainty_s"] = -1
    model = report_model(journal)
    assert any(".evidence.agent_online: evidence: {at:" in s for s in model["skipped"])
    assert any(".evidence.panic: evidence: {at:" in s and "found an object" in s for s in model["skipped"])
    [row] = model["instances"]
    assert "agent_online" not in row["evidence"]
    assert row["evidence"]["panic"]["source"] == "console-printk"  # the dump's bad evidence is not used


def test_five_hundred_instances_keep_the_slowest_and_every_one_not_back():
    model = report_model(fleet_journal(500, not_back=(7, 250, 499)), slowest=25)
    rows = {r["instance_id"]: r for r in model["instances"]}
    not_back = [f"i-{k + 1:017x}" for k in (7, 250, 499)]
    assert model["timeline"][:3] == not_back and len(model["timeline"]) == 28
    slowest = sorted((r["recovery"] for r in rows.values() if r["recovery"] is not None), reverse=True)
    assert [rows[i]["recovery"] for i in model["timeline"][3:]] == slowest[:25]
    assert len(model["instances"]) == 500 and model["fleet"]["pending"] == sorted(not_back)
    assert model["fleet"]["recovered"] == 497 and model["histogram"]["not_back"] == 3
    assert sum(c for _, _, c in model["histogram"]["bins"]) == 497
    lost = rows[not_back[-1]]
    assert lost["offsets"]["panic"] is None and lost["offsets"]["kernel_back"] is None
    assert lost["missing"]["panic"] == WHY_MISSING["panic"]
    assert lost["observed"] > 200 and lost["over_slo"] is True
    assert model["dumps"]["verdicts"] == {"complete-dump": 497, "no-dump": 3}
    assert model["dumps"]["rows"][:3] == not_back and model["dumps"]["more"] == 497 - 25


def test_without_timelines_the_model_falls_back_to_seconds_and_invents_no_milestone():
    model = report_model(fleet_journal(5, not_back=(2,), timelines=False))
    assert model["source"] == "seconds" and model["milestones"] == []
    for row in model["instances"]:
        assert row["offsets"] is None and row["missing"] == {} and row["durations"] == {}
    assert [r["recovery"] is None for r in model["instances"]] == [True, False, False, False, False]


def test_the_slo_comes_from_the_command_line_then_the_experiment_then_the_recovery_output():
    journal = fleet_journal(3, slo=300)
    assert report_model(journal, slo=90)["slo"] == 90
    journal["experiment"]["steady-state-hypothesis"]["probes"][0]["provider"]["arguments"]["seconds"] = (
        "${slo}"
    )
    journal["run"][1]["output"]["slo_seconds"] = 240
    model = report_model(journal)
    assert (model["slo"], model["slo_source"]) == (240, "slo_seconds in the recovery output")
    del journal["run"][1]["output"]["slo_seconds"]
    assert report_model(journal)["slo"] is None


def test_every_milestone_the_timelines_know_has_a_style():
    assert set(MILESTONES) <= set(MILESTONE_STYLES)


def test_a_journal_without_recovery_data_says_so(tmp_path):
    journal = fleet_journal(2)
    journal["run"][1].update(status="failed", exception=["Traceback...", "ActivityFailed: no region\n"])
    with pytest.raises(
        NoRecoveryData, match=r"recovery-seconds .*recovery_seconds\) failed: ActivityFailed: no region"
    ):
        report_model(journal)
    del journal["run"][1]
    with pytest.raises(NoRecoveryData, match=r"no output of chaosec2panic\.probes\.recovery_seconds"):
        report_model(journal)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read the journal"),
        ("{oops", "is not JSON"),
        ('{"experiment": {}}', "not a Chaos Toolkit journal"),
    ],
)
def test_bad_input_is_named(tmp_path, content, message):
    path = tmp_path / "journal.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadJournal, match=message):
        load_journal(path)


# the HTML ----------------------------------------------------------------------------------------
VOID = {"meta", "br", "hr", "img", "input", "link"}


class Tree(HTMLParser):
    """Checks nesting while it collects every element with its attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: List[str] = []
        self.elements: List[Dict[str, Any]] = []
        self.problems: List[str] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, str | None]]) -> None:
        self.elements.append({"tag": tag, **dict(attrs), "text": "", "parents": list(self.stack)})
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: List[Tuple[str, str | None]]) -> None:
        self.elements.append({"tag": tag, **dict(attrs), "text": "", "parents": list(self.stack)})

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.elements:
            self.elements[-1]["text"] += data

    def find(self, tag: str, **attrs: str) -> List[Dict[str, Any]]:
        return [
            e
            for e in self.elements
            if e["tag"] == tag and all(attrs[k] in (e.get(k) or "").split() for k in attrs)
        ]

    def inside(self, svg_id: str) -> List[Dict[str, Any]]:
        start = next(n for n, e in enumerate(self.elements) if e.get("id") == svg_id)
        depth = len(self.elements[start]["parents"])
        end = next(
            (n for n in range(start + 1, len(self.elements)) if len(self.elements[n]["parents"]) <= depth),
            len(self.elements),
        )
        return self.elements[start + 1 : end]


def parse(page: str) -> Tree:
    tree = Tree()
    tree.feed(page)
    tree.close()
    assert tree.problems == [] and tree.stack == []
    return tree


def slo_x_by_the_ticks(elements: List[Dict[str, Any]], slo: float) -> float:
    """Where ``slo`` falls on the axis its tick labels draw (a line through the first and last)."""
    ticks = sorted(
        (float(e["text"].removesuffix(" s")), float(e["x"]))
        for e in elements
        if "tick-label" in e.get("class", "")
    )
    (s0, x0), (s1, x1) = ticks[0], ticks[-1]
    return x0 + (slo - s0) * (x1 - x0) / (s1 - s0)


def test_the_page_is_well_formed_self_contained_and_draws_the_slowest_rows():
    model = report_model(fleet_journal(500, not_back=(7, 250, 499), slo=120))
    page = render_html(model)
    tree = parse(page)
    assert not tree.find("script") and not tree.find("link") and not tree.find("img")
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    timeline = tree.inside("timeline")
    labels = [e["text"] for e in timeline if "row-label" in e.get("class", "")]
    assert labels == model["timeline"]
    kernel_back = [e for e in timeline if e["tag"] == "rect" and "kernel_back" in e.get("class", "").split()]
    assert len(kernel_back) == 25  # the 3 not back never had a new kernel
    assert len([e for e in timeline if "not-back" in e.get("class", "").split()]) == 3
    missing = [e["text"] for e in timeline if "missing" in e.get("class", "").split()]
    lost = "panic, dump_written, kernel_back, status_ok, agent_online"
    expected = ["dump_written, kernel_back, status_ok, agent_online"] * 2 + [lost]
    for text, full in zip(missing, expected, strict=True):
        assert text == full or (text.endswith("…") and full.startswith(text[:-1])), (text, full)
    for svg_id in ("timeline", "histogram"):
        elements = tree.inside(svg_id)
        [line] = [e for e in elements if "slo-line" in e.get("class", "")]
        assert line["stroke"] == SLO_COLOUR and line["x1"] == line["x2"]
        assert float(line["x1"]) == pytest.approx(slo_x_by_the_ticks(elements, 120), abs=0.05)
    histogram = tree.inside("histogram")
    bins = [n for n, e in enumerate(histogram) if "bin" in e.get("class", "").split()]
    assert sum(int(histogram[n + 1]["text"].split()[0]) for n in bins) == 497  # each bar's <title>
    assert len(tree.find("tr")) == 1 + 500 + 1 + 3 + 25  # every instance; dumps needing a look + 25
    assert "Missing on every instance: app_healthy (no application check configured)." in page


def test_an_slo_far_beyond_the_data_is_marked_off_the_axis():
    tree = parse(render_html(report_model(fleet_journal(5), slo=3600)))
    assert not tree.find("line", **{"class": "slo-line"})
    assert [e["text"] for e in tree.find("text", **{"class": "slo-off-scale"})] == [
        "SLO 3600 s → (beyond this axis)"
    ] * 2


def test_text_from_the_journal_is_escaped():
    journal = fleet_journal(1)
    journal["experiment"]["title"] = "<script>alert(1)</script> & co"
    page = render_html(report_model(journal))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page


TRACE = [  # as crash_dumps sends them: the top of the trace, stripped
    "<NMI>",
    "dump_stack_lvl+0x44/0x5c",
    "panic+0x118/0x2f4",
    "nmi_panic.cold+0xc/0xc",
    "unknown_nmi_error.cold+0x22/0x2e",
    "default_do_nmi+0xc6/0x110",
    "exc_nmi+0x5a/0x110",
    "asm_exc_nmi+0xb5/0xc0",
    "</NMI>",
    "<TASK>",
]
ACCOUNT = {
    "source": "dmesg-file",
    "file": "/var/crash/127.0.0.1-2026-03-01-12:00:00/dmesg.txt",
    "panic_message": "NMI: Not continuing",
    "nmi_panic": True,
    "cpu": 0,
    "pid": 0,
    "comm": "swapper/0",
    "rip_function": "native_safe_halt",
    "call_trace": TRACE,
}


def account_page(account: Any, panic_message: str | None = None) -> Tuple[Dict[str, Any], str]:
    """The model's dump row and the page of a one-instance journal whose dump has ``account``."""
    journal = fleet_journal(1)
    [dump] = journal["run"][2]["output"]["instances"].values()
    dump["crash_account"] = account
    if panic_message is not None:
        dump["panic_message"] = panic_message
    model = report_model(journal)
    return model, render_html(model)


def test_the_dumps_table_shows_what_the_instances_log_said_of_the_crash():
    model, page = account_page(ACCOUNT)
    assert model["instances"][0]["dump"]["crash_account"] == ACCOUNT and model["skipped"] == []
    tree = parse(page)
    [panel] = tree.find("div", **{"class": "account"})
    assert panel["parents"][-3:] == ["tbody", "tr", "td"]  # a row of the dumps table
    said = [e["text"].split(" · ")[0] for e in tree.find("span", **{"class": "mono"})]
    assert {"NMI: Not continuing", "CPU 0 PID 0 swapper/0", "native_safe_halt"} <= set(said)
    frames = tree.find("div", **{"class": "frame"})
    assert [e["text"] for e in frames] == TRACE
    shown = [e["text"] for e in frames if "details" not in e["parents"]]
    assert shown == TRACE[:6]  # the top of the trace; the other 4 folded
    assert [e["text"] for e in tree.find("summary")] == ["4 more frames"]


def test_without_an_account_the_panic_message_alone_or_nothing_is_shown():
    model, page = account_page(None, panic_message="NMI: Not continuing")  # older probe output
    tree = parse(page)
    [panel] = tree.find("div", **{"class": "account"})
    assert (
        panel["text"] == "panic: "
        and tree.find("span", **{"class": "panic"})[0]["text"] == "NMI: Not continuing"
    )
    assert not tree.find("div", **{"class": "frame"}) and not tree.find("details")
    for account in (None, {}):
        model, page = account_page(account)
        assert model["skipped"] == [] and not parse(page).find("div", **{"class": "account"})


def test_a_hostile_crash_account_is_escaped_bounded_and_named():
    payload = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    hostile = {
        **{k: payload for k in ("source", "file", "panic_message", "comm", "rip_function")},
        "cpu": "0",
        "pid": -1,
        "nmi_panic": "yes",
        "call_trace": [payload * 10_000, 7, None, *([" frame+0x1/0x2"] * 100_000)],
    }
    model, page = account_page(hostile)
    tree = parse(page)
    assert not tree.find("script") and not tree.find("img") and html.escape(payload) in page
    where = "run[2].output.instances.i-00000000000000001.crash_account"
    assert model["skipped"] == [
        f"{where}.nmi_panic: true or false expected, found 'yes'",
        f"{where}.cpu: a whole number, 0 or more expected, found '0'",
        f"{where}.pid: a whole number, 0 or more expected, found -1",
        f"{where}.call_trace[1]: a string expected, found 7",
        f"{where}.call_trace[2]: a string expected, found null",
    ]
    account = model["instances"][0]["dump"]["crash_account"]
    assert len(account["call_trace"]) == 12 - 2 and len(account["call_trace"][0]) == 300
    assert (account["cpu"], account["pid"]) == (None, None) and len(page) < 60_000
    for odd in ("a list", ["not an object"], 3):
        model, page = account_page(odd)
        assert model["skipped"] == [f"{where}: an object expected, found {describe(odd)}"]
        assert not parse(page).find("div", **{"class": "account"})


# the PNG -----------------------------------------------------------------------------------------
def read_png(path: Path, max_rows: int = 1400) -> Tuple[int, int, List[bytes]]:
    """Width, height and the first ``max_rows`` rows (RGB) of an 8-bit RGB(A) PNG, decoded with
    zlib and the five scanline filters."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = {}, 8
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        chunks.setdefault(kind, []).append(data[offset + 8 : offset + 8 + size])
        offset += 12 + size
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][0][:10])
    assert depth == 8 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks[b"IDAT"]))
    stride = width * bpp
    rows, previous = [], bytearray(stride)
    for y in range(min(height, max_rows)):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = previous[x]
            c = previous[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, [bytes(r[i] for n in range(0, stride, bpp) for i in range(n, n + 3)) for r in rows]


def colours(rows: List[bytes], top: int, bottom: int) -> Dict[bytes, int]:
    seen: Dict[bytes, int] = {}
    for row in rows[top:bottom]:
        for x in range(0, len(row), 3):
            seen[row[x : x + 3]] = seen.get(row[x : x + 3], 0) + 1
    return seen


def rgb(colour: str) -> bytes:
    return bytes.fromhex(colour.lstrip("#"))


def test_chromium_is_installed():
    assert chromium(), "scripts/setup.sh installs chromium: apt-get install --no-install-recommends chromium"


@pytest.mark.parametrize("n, not_back", [(5, (3,)), (500, (7, 250, 499))])
def test_chromium_renders_the_charts(tmp_path, n, not_back):
    page, png = tmp_path / "report.html", tmp_path / "report.png"
    model = report_model(fleet_journal(n, not_back=not_back, slo=120))
    page.write_text(render_html(model))
    size = screenshot(page, png)
    width, height, rows = read_png(png)
    assert size == (width, height) and width == PAGE_WIDTH and height > (1200 if n == 5 else 10_000)
    charts = colours(rows, 150, 1300)
    assert len(charts) > 50  # text, bars, hatching, anti-aliasing: not a blank page
    for name in ("panic", "went_down", "kernel_back", "status_ok", "agent_online", "dump_written"):
        assert charts.get(rgb(MILESTONE_STYLES[name].colour), 0) > 100, name
    assert charts.get(rgb(SLO_COLOUR), 0) > 200


def test_without_chromium_the_page_is_still_written_and_the_png_is_explained(tmp_path, monkeypatch):
    journal = tmp_path / "journal.json"
    journal.write_text(json.dumps(fleet_journal(3)))
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on it
    out = tmp_path / "r.html"
    asked = subprocess.run(
        [CLI, "report", str(journal), "-o", str(out), "--png", str(tmp_path / "r.png")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert asked.returncode == 1 and "apt-get install --no-install-recommends chromium" in asked.stderr
    assert out.exists() and not (tmp_path / "r.png").exists()
    implied = subprocess.run(
        [CLI, "report", str(journal), "-o", str(out)], capture_output=True, text=True, check=False
    )
    assert implied.returncode == 0 and "needs Chromium" in implied.stderr
    with pytest.raises(ChromiumMissing):
        screenshot(out, tmp_path / "r.png")


@pytest.mark.parametrize(
    "content, code, message",
    [
        (None, 2, "cannot read the journal"),
        ("[]", 2, "not a Chaos Toolkit journal"),
        ('{"run": []}', 1, "no recovery data"),
    ],
)
def test_the_command_names_bad_input(tmp_path, content, code, message):
    journal = tmp_path / "journal.json"
    if content is not None:
        journal.write_text(content)
    done = subprocess.run(
        [CLI, "report", str(journal), "-o", str(tmp_path / "r.html")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == code and message in done.stderr
    assert not (tmp_path / "r.html").exists()


# end to end --------------------------------------------------------------------------------------
def test_a_real_run_against_the_lab_is_reported(make_lab, tmp_path):
    lab = make_lab(
        [opted_in("a", tags={"role": "crash-capture"}), opted_in("b", tags={"role": "crash-capture"})]
    )
    journal = run_experiment(lab, ROOT / "experiments" / "crash-capture.yaml", tmp_path / "journal.json")
    out, png = tmp_path / "report.html", tmp_path / "report.png"
    done = subprocess.run(
        [CLI, "report", str(tmp_path / "journal.json"), "-o", str(out), "--png", str(png)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outputs = {r["activity"]["name"]: r["output"] for r in journal["run"]}
    [hit] = outputs["recovery-seconds"]["instances"]
    model = report_model(journal)
    [row] = model["instances"]
    assert row["instance_id"] == hit and row["recovery"] == outputs["recovery-seconds"]["instances"][hit]
    assert model["slo"] == 600 and row["dump"]["verdict"] == "complete-dump" and row["batch"] == 1
    tree = parse(out.read_text())
    assert [e["text"] for e in tree.inside("timeline") if "row-label" in e.get("class", "")] == [hit]
    if "timelines" in outputs["recovery-seconds"]:
        assert model["source"] == "timelines"
        assert row["offsets"]["kernel_back"] is not None and row["offsets"]["agent_online"] is not None
        assert tree.find("rect", **{"class": "kernel_back"})
        assert row["evidence"]["nmi_sent"]["source"] == "api-call"
        assert row["evidence"]["kernel_back"]["source"] == "boot-time" and row["conflicts"] == []
        assert model["evidence_sources"]["nmi_sent"]["sources"] == {"api-call": 1}
        assert tree.find("table", id="sources")
    else:
        assert model["source"] == "seconds" and tree.find("rect", **{"class": "seconds"})
    width, height, rows = read_png(png)
    assert width == PAGE_WIDTH and height > 900 and len(colours(rows, 0, height)) > 50
