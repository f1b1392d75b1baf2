"""The report's page: the report model (:func:`chaosec2panic.report.report_model`) -> one
self-contained HTML page (inline CSS and SVG, no script, nothing fetched) -> a PNG of it.

:func:`render_html` is pure; :func:`screenshot` runs headless Chromium.
"""

import html
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from .journal import ReportError, count_of
from .recovery import parse_iso
from .report import domain_top, milestone_order, nice_step

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


@dataclass(frozen=True)
class Style:
    """How a milestone is drawn: a segment (the wait that ends at it) or a marker only."""

    label: str
    colour: str
    segment: bool


MILESTONE_STYLES: Dict[str, Style] = {
    "nmi_sent": Style("NMI sent", "#222222", False),
    "panic": Style("kernel panicked", "#E69F00", True),
    "capture_started": Style("capture kernel started", "#F0E442", True),
    "dump_written": Style("crash dump written", "#CC79A7", True),
    "went_down": Style("went down (impaired or offline)", "#D55E00", True),
    "kernel_back": Style("kernel back (new boot)", "#0072B2", True),
    "status_ok": Style("status checks ok", "#56B4E9", True),
    "agent_online": Style("SSM agent online", "#009E73", True),
    "app_healthy": Style("application healthy", "#117733", True),
}
OTHER_STYLE = Style("", "#888888", False)
SECONDS_ONLY_COLOUR = "#4477AA"
SLO_COLOUR = "#C00000"
NOT_BACK_COLOUR = "#C00000"
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
svg text{font-family:"DejaVu Sans",Arial,sans-serif}
"""
SVG_WIDTH = 1200
ROW = 20
BAR = 12
VALUE_X = 24  # where "back after" starts, right of the timeline's plot
MISSING_X = 176  # where the missing milestones start
MISSING_CHARS = 42
SKIPPED_LISTED = 500  # values left out, listed on the page


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _attrs(attrs: Mapping[str, Any]) -> str:
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{_e(v)}"' for k, v in attrs.items() if v is not None)


def _tag(name: str, content: str = "", **attrs: Any) -> str:
    return f"<{name}{_attrs(attrs)}>{content}</{name}>"


def _void(name: str, **attrs: Any) -> str:
    return f"<{name}{_attrs(attrs)}/>"


def _secs(value: float | None, unit: str = " s") -> str:
    if value is None:
        return "—"
    return f"{value:.2f}{unit}" if abs(value) < 10 else f"{value:.1f}{unit}"


def _when(moment: str | None) -> str:
    """A journal time, to the second, in UTC."""
    try:
        return parse_iso(moment or "").strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return moment or "?"


def _tick_label(value: float) -> str:
    return f"{round(value, 6):g} s"


def _size(size: Any) -> str:
    if not isinstance(size, int) or isinstance(size, bool):
        return "—"
    if size < 1024:
        return f"{size} B"
    power = min(int(math.log(size, 1024)), 3)
    return f"{size / 1024**power:.1f} {('KiB', 'MiB', 'GiB')[power - 1]}"


@dataclass(frozen=True)
class Scale:
    """Seconds ``lo``..``hi`` onto pixels ``x0``..``x1``, with round ticks every ``step``."""

    lo: float
    hi: float
    step: float
    x0: float
    x1: float

    @classmethod
    def of(cls, lo: float, top: float, x0: float, x1: float, target: int = 10) -> "Scale":
        step = nice_step(top - lo, target)
        return cls(math.floor(lo / step) * step, math.ceil(top / step - 1e-9) * step, step, x0, x1)

    def x(self, seconds: float) -> float:
        return round(self.x0 + (seconds - self.lo) / (self.hi - self.lo) * (self.x1 - self.x0), 2)

    def ticks(self) -> List[float]:
        return [self.lo + i * self.step for i in range(round((self.hi - self.lo) / self.step) + 1)]


def _x_axis(scale: Scale, top: float, bottom: float, labels_at: Sequence[float], title: str) -> List[str]:
    parts = []
    for t in scale.ticks():
        x = scale.x(t)
        parts.append(_void("line", x1=x, x2=x, y1=top, y2=bottom, stroke="#e2e2e2"))
        parts += [
            _tag("text", _tick_label(t), x=x, y=y, class_="tick-label", text_anchor="middle", font_size=11)
            for y in labels_at
        ]
    parts.append(_void("line", x1=scale.x0, x2=scale.x1, y1=bottom, y2=bottom, stroke="#888"))
    mid = (scale.x0 + scale.x1) / 2
    parts.append(_tag("text", _e(title), x=mid, y=bottom + 34, text_anchor="middle", font_size=12))
    return parts


def _slo_marks(scale: Scale, slo: float | None, top: float, bottom: float, label_y: float) -> List[str]:
    if slo is None:
        return []
    text = f"SLO {_tick_label(slo)}"
    if slo > scale.hi:
        return [
            _tag(
                "text",
                _e(f"{text} → (beyond this axis)"),
                x=scale.x1,
                y=label_y,
                class_="slo-off-scale",
                text_anchor="end",
                fill=SLO_COLOUR,
                font_size=12,
                font_weight="bold",
            )
        ]
    x = scale.x(slo)
    anchor = "end" if x > scale.x1 - 60 else "middle"
    return [
        _void(
            "line",
            x1=x,
            x2=x,
            y1=top - 8,
            y2=bottom,
            class_="slo-line",
            stroke=SLO_COLOUR,
            stroke_width=2,
            stroke_dasharray="7 4",
        ),
        _tag(
            "text",
            _e(text),
            x=x,
            y=label_y,
            text_anchor=anchor,
            fill=SLO_COLOUR,
            font_size=12,
            font_weight="bold",
        ),
    ]


def _over_slo_band(scale: Scale, slo: float | None, top: float, bottom: float) -> List[str]:
    if slo is None or slo >= scale.hi:
        return []
    x = scale.x(max(slo, scale.lo))
    return [_void("rect", x=x, y=top, width=scale.x1 - x, height=bottom - top, fill="#fdeeee")]


HATCH = (
    '<defs><pattern id="{id}" width="6" height="6" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fbe3e3"/>'
    f'<line x1="0" y1="0" x2="0" y2="6" stroke="{NOT_BACK_COLOUR}" stroke-width="3"/></pattern></defs>'
)


def _svg(svg_id: str, parts: Sequence[str], height: float) -> str:
    """A chart: its ``parts`` in an SVG element the page's width and ``height`` tall."""
    return _tag(
        "svg",
        "".join(parts),
        id=svg_id,
        xmlns="http://www.w3.org/2000/svg",
        width=SVG_WIDTH,
        height=height,
        viewBox=f"0 0 {SVG_WIDTH} {height:g}",
    )


def _histogram_svg(model: Mapping[str, Any]) -> str:
    hist, fleet, slo = model["histogram"], model["fleet"], model["slo"]
    left, right, top, bottom = 60.0, SVG_WIDTH - 130.0, 58.0, 250.0
    bins = hist["bins"]
    scale = Scale.of(0, bins[-1][1], left, right)
    tallest = max([c for _, _, c in bins] + [hist["not_back"], 1])
    ystep = max(1, round(nice_step(tallest, 5)))
    ymax = math.ceil(tallest * 1.12 / ystep) * ystep

    def y(count: float) -> float:
        return round(bottom - count / ymax * (bottom - top), 2)

    parts = [HATCH.format(id="hatch-h"), *_over_slo_band(scale, slo, top, bottom)]
    for c in range(0, ymax + 1, ystep):
        parts.append(_void("line", x1=left, x2=right, y1=y(c), y2=y(c), stroke="#eee"))
        parts.append(_tag("text", c, x=left - 6, y=y(c) + 4, text_anchor="end", font_size=11))
    parts += _x_axis(scale, top, bottom, [bottom + 16], "recovery time: seconds from the NMI until back")
    parts.append(
        _tag(
            "text",
            "instances",
            x=16,
            y=(top + bottom) / 2,
            transform=f"rotate(-90 16 {(top + bottom) / 2})",
            text_anchor="middle",
            font_size=12,
        )
    )
    for lo, hi, count in bins:
        if count:
            x0, x1 = scale.x(lo), scale.x(hi)
            parts.append(
                _tag(
                    "rect",
                    _tag("title", _e(f"{count} back in [{lo:g}, {hi:g}) s")),
                    x=x0 + 0.5,
                    y=y(count),
                    width=max(x1 - x0 - 1, 1),
                    height=bottom - y(count),
                    class_="bin",
                    fill=SECONDS_ONLY_COLOUR,
                )
            )
            parts.append(
                _tag("text", count, x=(x0 + x1) / 2, y=y(count) - 3, text_anchor="middle", font_size=10)
            )
    for name, row_y in (("p50", top - 8), ("p95", top - 24)):
        value = fleet.get(name)
        if value is not None and value <= scale.hi:
            x = scale.x(value)
            parts.append(
                _void("line", x1=x, x2=x, y1=row_y + 3, y2=bottom, stroke="#333", stroke_dasharray="2 3")
            )
            parts.append(
                _tag("text", _e(f"{name} {_secs(value)}"), x=x + 3, y=row_y, font_size=11, fill="#333")
            )
    parts += _slo_marks(scale, slo, top, bottom, top - 40)
    nb_x = right + 40
    parts.append(
        _tag(
            "rect",
            _tag("title", _e(f"{hist['not_back']} not back")),
            x=nb_x,
            y=y(hist["not_back"]),
            width=50,
            height=bottom - y(hist["not_back"]),
            fill="url(#hatch-h)",
            stroke=NOT_BACK_COLOUR,
            class_="not-back",
        )
    )
    parts.append(
        _tag(
            "text",
            hist["not_back"],
            x=nb_x + 25,
            y=y(hist["not_back"]) - 3,
            text_anchor="middle",
            font_size=11,
        )
    )
    parts.append(
        _tag(
            "text",
            "not back",
            x=nb_x + 25,
            y=bottom + 16,
            text_anchor="middle",
            font_size=11,
            fill=NOT_BACK_COLOUR,
        )
    )
    return _svg("histogram", parts, bottom + 44)


def _dated(row: Mapping[str, Any], m: str, t: float) -> str:
    """A milestone's time after the NMI, with its error bar and the source that dates it."""
    e = row["evidence"].get(m)
    if e is None:
        return f"{m} at +{_secs(t)}"
    bar = (
        f"up to {_secs(e['uncertainty_s'])} earlier" if e["upper_bound"] else f"± {_secs(e['uncertainty_s'])}"
    )
    return f"{m} at +{_secs(t)}, {bar} ({e['source']})"


def _reach(row: Mapping[str, Any]) -> List[float]:
    """Where the row's error bars end, in seconds after the NMI."""
    ends = []
    for e in row["evidence"].values():
        if e["offset"] is not None:
            ends.append(e["offset"] - e["uncertainty_s"])
            ends.append(e["offset"] + (0.0 if e["upper_bound"] else e["uncertainty_s"]))
    return ends


def _whiskers(row: Mapping[str, Any], scale: Scale, y: float) -> List[str]:
    """Each milestone's error bar: either side of it, or before it only for an upper bound (a look
    that found it done), capped at both ends; none for a bar under a pixel."""
    parts = []
    c = y + BAR / 2
    for m, e in row["evidence"].items():
        t = e["offset"]
        if t is None:
            continue
        lo, hi = (
            scale.x(t - e["uncertainty_s"]),
            scale.x(t + (0.0 if e["upper_bound"] else e["uncertainty_s"])),
        )
        if hi - lo < 1:
            continue
        ticks = "".join(f"M{x} {c - 4}V{c + 4}" for x in (lo, hi))
        parts.append(
            _tag(
                "path",
                _tag("title", _e(_dated(row, m, t))),
                d=f"M{lo} {c}H{hi}{ticks}",
                stroke="#000",
                stroke_width=1,
                fill="none",
                class_=f"whisker {m}",
            )
        )
    return parts


def _segments(row: Mapping[str, Any], scale: Scale, y: float) -> List[str]:
    """The row's bar: milestone segments (or one bar of seconds only), markers, the not-back wait."""
    parts = []
    offsets = row["offsets"]
    end_of_bar = 0.0
    if offsets is None:
        if row["recovery"] is not None:
            parts.append(_bar(scale, 0, row["recovery"], y, SECONDS_ONLY_COLOUR, "NMI → back"))
            end_of_bar = row["recovery"]
    else:
        present = sorted(
            ((t, m) for m, t in offsets.items() if t is not None),
            key=lambda p: (p[0], milestone_order(p[1])),
        )
        previous = min([0.0, *(t for t, _ in present)])
        for t, m in present:
            style = MILESTONE_STYLES.get(m, OTHER_STYLE)
            if style.segment:
                parts.append(_bar(scale, previous, t, y, style.colour, _dated(row, m, t), m))
                previous = t
        end_of_bar = previous
        for t, m in present:
            style = MILESTONE_STYLES.get(m, OTHER_STYLE)
            x = scale.x(t)
            if style.segment:
                parts.append(
                    _void("line", x1=x, x2=x, y1=y - 1, y2=y + BAR + 1, stroke="#fff", stroke_width=1)
                )
            else:
                c = y + BAR / 2
                parts.append(
                    _tag(
                        "path",
                        _tag("title", _e(_dated(row, m, t))),
                        d=f"M{x} {c - 6}L{x + 6} {c}L{x} {c + 6}L{x - 6} {c}Z",
                        fill=style.colour,
                        stroke="#fff",
                        class_=f"marker {m}",
                    )
                )
    parts += _whiskers(row, scale, y)
    if row["recovery"] is not None:
        x = scale.x(row["recovery"])
        parts.append(
            _void("line", x1=x, x2=x, y1=y - 3, y2=y + BAR + 3, stroke="#000", stroke_width=2, class_="back")
        )
    elif row["observed"] is not None and row["observed"] > end_of_bar:
        end = min(row["observed"], scale.hi)
        title = f"not back after {_secs(row['observed'])}"
        parts.append(_bar(scale, end_of_bar, end, y, "url(#hatch-t)", title, "not-back"))
        if end < row["observed"]:
            x, c = scale.x(end), y + BAR / 2
            parts.append(
                _void("path", d=f"M{x + 1} {c - 7}L{x + 9} {c}L{x + 1} {c + 7}Z", fill=NOT_BACK_COLOUR)
            )
    return parts


def _bar(
    scale: Scale, start: float, end: float, y: float, fill: str, title: str, kind: str = "seconds"
) -> str:
    x0, x1 = scale.x(start), scale.x(end)
    return _tag(
        "rect",
        _tag("title", _e(title)),
        x=x0,
        y=y,
        width=max(round(x1 - x0, 2), 1.5),
        height=BAR,
        fill=fill,
        class_=f"seg {kind}",
    )


def _timeline_svg(model: Mapping[str, Any]) -> str:
    rows = {r["instance_id"]: r for r in model["instances"]}
    shown = [rows[i] for i in model["timeline"]]
    left, right, top = 160.0, SVG_WIDTH - 420.0, 56.0
    bottom = top + len(shown) * ROW + 4
    seen = [
        v for r in shown for v in [*(r["offsets"] or {}).values(), r["recovery"], *_reach(r)] if v is not None
    ]
    waited = [r["observed"] for r in shown if r["observed"] is not None]
    scale = Scale.of(min([0.0, *seen]), domain_top(seen or waited, model["slo"]), left, right)
    everywhere = model["missing_everywhere"]
    parts = [HATCH.format(id="hatch-t")]
    for n in range(1, len(shown), 2):
        parts.append(_void("rect", x=0, y=top + n * ROW, width=SVG_WIDTH, height=ROW, fill="#f7f7f7"))
    parts += _over_slo_band(scale, model["slo"], top, bottom)
    parts += _x_axis(scale, top, bottom, [top - 6, bottom + 16], "seconds since the NMI")
    parts.append(_tag("text", "instance", x=8, y=top - 6, font_size=11, fill="#555"))
    parts.append(_tag("text", "back after", x=right + VALUE_X, y=top - 6, font_size=11, fill="#555"))
    if model["source"] == "timelines":
        parts.append(
            _tag("text", "missing milestones", x=right + MISSING_X, y=top - 6, font_size=11, fill="#555")
        )
    for n, row in enumerate(shown):
        y = top + n * ROW + (ROW - BAR) / 2
        base = y + BAR - 2
        parts.append(
            _tag(
                "text",
                _e(row["instance_id"]),
                x=8,
                y=base,
                class_="row-label",
                font_size=11,
                font_family="DejaVu Sans Mono,monospace",
            )
        )
        if row["sent_at"] is None:
            parts.append(_tag("text", "no NMI time recorded", x=left + 4, y=base, font_size=11, fill="#555"))
        else:
            parts += _segments(row, scale, y)
        late = row["over_slo"] is True
        value = (
            _secs(row["recovery"])
            if row["recovery"] is not None
            else f"not back after {_secs(row['observed'])}"
            if row["observed"] is not None
            else "not back"
        )
        parts.append(
            _tag(
                "text",
                _e(value),
                x=right + VALUE_X,
                y=base,
                font_size=11,
                font_weight="bold" if late else None,
                fill=NOT_BACK_COLOUR if late or row["recovery"] is None else "#000",
            )
        )
        missing = {m: why for m, why in row["missing"].items() if m not in everywhere}
        if missing:
            text = ", ".join(sorted(missing, key=milestone_order))
            title = "; ".join(f"{m}: {why}" for m, why in missing.items())
            parts.append(
                _tag(
                    "text",
                    _e(text if len(text) <= MISSING_CHARS else text[: MISSING_CHARS - 1] + "…")
                    + _tag("title", _e(title)),
                    x=right + MISSING_X,
                    y=base,
                    font_size=10.5,
                    fill="#777",
                    font_style="italic",
                    class_="missing",
                )
            )
    parts += _slo_marks(scale, model["slo"], top, bottom, top - 26)
    return _svg("timeline", parts, bottom + 44)


def _legend(model: Mapping[str, Any]) -> str:
    def item(swatch: str, text: str) -> str:
        return _tag("span", swatch + _e(text))

    def box(fill: str, style: str = "") -> str:
        return _tag("span", "", class_="sw", style=f"background:{fill};{style}")

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
    return _tag("div", "".join(items), class_="legend")


def _card(label: str, value: Any, bad: bool = False) -> str:
    return _tag("div", _tag("b", _e(value)) + _e(label), class_="card bad" if bad else "card")


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
        cards.append(_card(f"over the SLO of {_tick_label(slo)}", fleet["over_slo"], fleet["over_slo"] > 0))
    cards += [
        _card("max", _secs(fleet["max"])),
        _card("p95", _secs(fleet["p95"])),
        _card("p50", _secs(fleet["p50"])),
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
    return _tag("div", "".join(cards), class_="cards")


def _verdict(dump: Mapping[str, Any] | None) -> str:
    if dump is None:
        return "—"
    verdict = dump.get("verdict", "unknown")
    return _tag("span", _e(verdict), style=f"color:{VERDICT_COLOURS.get(verdict, '#555')};font-weight:bold")


def _table(
    head: Sequence[str], rows: Iterable[Sequence[str] | str], numeric: Sequence[int], **attrs: Any
) -> str:
    """A table; numeric columns align right, the last column wraps; a row given as one string
    spans the table (a note on the row above)."""

    def kind(i: int) -> str | None:
        return "n" if i in numeric else "wrap" if i == len(head) - 1 else None

    def tr(cells: Sequence[str] | str) -> str:
        if isinstance(cells, str):
            return _tag("tr", _tag("td", cells, colspan=len(head), class_="wrap sub"), class_="sub")
        return _tag("tr", "".join(_tag("td", c, class_=kind(i)) for i, c in enumerate(cells)))

    th = "".join(_tag("th", _e(h), class_=kind(i)) for i, h in enumerate(head))
    body = "".join(tr(r) for r in rows)
    return _tag("table", _tag("thead", _tag("tr", th)) + _tag("tbody", body), **attrs)


def _yes_no(value: Any) -> str:
    return {True: _tag("span", "yes", class_="ok"), False: _tag("span", "no", class_="bad")}.get(value, "—")


def _dumps_table(model: Mapping[str, Any]) -> str:
    rows = {r["instance_id"]: r for r in model["instances"]}
    lines: List[Sequence[str] | str] = []
    for i in model["dumps"]["rows"]:
        row = rows[i]
        d = row["dump"]
        lines.append(
            [
                _tag("span", _e(i), class_="mono"),
                _verdict(d),
                _yes_no(d["nmi_panic"]),
                _tag("span", _e(d["path"] or "—"), class_="mono"),
                _size(d["size"]),
                _e(d["format"] or "—"),
                _e(d["kernel_release"] or "—"),
                _secs(d["written_after"]),
            ]
        )
        if d["problems"]:
            lines.append(_tag("span", "problems: ", class_="bad") + _e("; ".join(d["problems"])))
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
    return _tag("p", _e(f"Verdicts: {counts}.{note}"), class_="note") + table


def _instances_table(model: Mapping[str, Any]) -> str:
    slo = model["slo"]
    lines = []
    for r in model["instances"]:
        d = r["durations"]
        if not r["measured"]:
            back = "not measured"
        elif r["recovery"] is None:
            back = _tag("span", "not back", class_="bad")
        else:
            back = _secs(r["recovery"])
        over = (
            "—"
            if r["over_slo"] is None
            else _tag("span", "over", class_="bad")
            if r["over_slo"]
            else "within"
        )
        lines.append(
            [
                _tag("span", _e(r["instance_id"]), class_="mono"),
                _e(r["batch"] if r["batch"] is not None else "—"),
                _e((r["sent_at"] or "—").replace("T", " ")),
                _e(r["outcome"] or "—")
                + (_tag("span", _e(f" {r['error']}"), class_="bad") if r["error"] else ""),
                back,
                over if slo is not None else "—",
                _secs(d.get("time_to_crash")),
                _secs(d.get("time_to_reboot")),
                _secs(d.get("time_to_healthy")),
                _verdict(r["dump"]),
                _e(
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
                _e(label),
                _tag("span", _e(m), class_="mono"),
                _secs(found["widest_s"]),
                _e(found["upper_bounds"]),
                _e(sources),
            ]
        )
    return _table(
        ["milestone", "name", "widest error bar", "upper bounds", "dated by (instances)"],
        lines,
        (2, 3),
        id="sources",
    )


def _conflicts_list(conflicts: Mapping[str, Sequence[str]]) -> str:
    """Each instance whose evidence contradicted itself, and how (its bars were widened)."""
    if not conflicts:
        return ""
    items = [
        _tag("li", _tag("span", _e(i), class_="mono") + ": " + _e("; ".join(said)))
        for i, said in list(conflicts.items())[:SKIPPED_LISTED]
    ]
    if len(conflicts) > SKIPPED_LISTED:
        items.append(_tag("li", _e(f"and {len(conflicts) - SKIPPED_LISTED} more")))
    return (
        _tag("h2", f"Evidence that contradicted itself ({count_of(len(conflicts), 'instance')})")
        + _tag(
            "p",
            _e(
                "Nothing was reordered: the weaker evidence's error bar was widened to cover the "
                "contradiction, and the times stay as their sources said."
            ),
            class_="note",
        )
        + _tag("ul", "".join(items), id="conflicts")
    )


def _skipped_list(skipped: Sequence[str]) -> str:
    """The values of the journal left out, each with where it is, what was expected and found."""
    if not skipped:
        return ""
    items = [_tag("li", _e(s), class_="mono") for s in skipped[:SKIPPED_LISTED]]
    if len(skipped) > SKIPPED_LISTED:
        items.append(_tag("li", _e(f"and {len(skipped) - SKIPPED_LISTED} more")))
    return _tag("h2", f"Left out of the journal ({len(skipped)})") + _tag("ul", "".join(items), id="skipped")


def render_html(model: Mapping[str, Any]) -> str:
    """The whole page for ``model`` (from :func:`report_model`): one string, nothing to fetch."""
    fleet, slo = model["fleet"], model["slo"]
    slo_text = (
        f"SLO {_tick_label(slo)} (from {model['slo_source']})"
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
        _tag(
            "p",
            _e(
                "Missing on every instance: "
                + "; ".join(f"{m} ({why})" for m, why in everywhere.items())
                + "."
            ),
            class_="note",
        )
        if everywhere
        else ""
    )
    halted = _tag("p", _e(f"Rollout halted {fleet['halted']}"), class_="bad") if fleet["halted"] else ""
    skipped = model["skipped"]
    skipped_note = (
        _tag(
            "p",
            _e(
                f"{count_of(len(skipped), 'value')} of the journal left out, as not in the shape "
                "`chaos run` writes: listed at the end."
            ),
            class_="bad",
        )
        if skipped
        else ""
    )
    body = [
        _tag("h1", _e(f"Crash-capture report: {model['title']}")),
        _tag("p", _e(meta), class_="meta"),
        halted,
        skipped_note,
        _cards(model),
        _tag("h2", "Fleet: recovery times"),
        _tag(
            "p",
            _e(
                f"{fleet['recovered']} of {count_of(count, 'instance')} back; "
                "the hatched bar: those not back."
            ),
            class_="note",
        ),
        _histogram_svg(model),
        _tag("h2", "Timeline per instance"),
        _tag("p", _e(scope), class_="note"),
        _legend(model),
        missing_note,
        _timeline_svg(model),
        *(
            [
                _tag("h2", "How each milestone was dated"),
                _tag(
                    "p",
                    _e(
                        "Each milestone is dated by the best evidence found: the API call, then the "
                        "kernel's own printk times (console-printk, dump-dmesg), the vmcore, the new "
                        "boot's start, the agent's answer, and last a look that found it done "
                        "(status-check, app-check, first-seen: an upper bound)."
                    ),
                    class_="note",
                ),
                _sources_table(model),
            ]
            if model["evidence_sources"]
            else []
        ),
        _conflicts_list(model["conflicts"]),
        _tag("h2", "Crash dumps"),
        _dumps_table(model)
        if model["dumps"]["rows"]
        else _tag("p", "No crash dump was looked for in this run.", class_="note"),
        _tag("h2", f"Every instance ({len(model['instances'])})"),
        _instances_table(model),
        _skipped_list(skipped),
    ]
    head = (
        '<meta charset="utf-8">'
        + _tag("title", _e(f"Crash-capture report: {model['title']}"))
        + _tag("style", CSS)
    )
    return (
        "<!DOCTYPE html>\n"
        + _tag("html", _tag("head", head) + _tag("body", _tag("main", "".join(body))), lang="en")
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
