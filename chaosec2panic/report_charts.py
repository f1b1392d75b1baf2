"""The report's charts: the fleet's histogram of recovery times and the timeline per instance
(milestone segments, markers, error-bar whiskers, the SLO), as inline SVG drawn from the report
model (:func:`chaosec2panic.report.report_model`); and the markup helpers the page
(:mod:`chaosec2panic.report_page`) shares with them, every value escaped.

All is pure: model in, markup out.
"""

import html
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence

from .report import domain_top, milestone_order, nice_step

__all__ = [
    "MILESTONE_STYLES",
    "NOT_BACK_COLOUR",
    "OTHER_STYLE",
    "SECONDS_ONLY_COLOUR",
    "SLO_COLOUR",
    "Scale",
    "Style",
    "escape",
    "histogram_svg",
    "secs",
    "tag",
    "tick_label",
    "timeline_svg",
    "void",
]


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

SVG_WIDTH = 1200
ROW = 20
BAR = 12
VALUE_X = 24  # where "back after" starts, right of the timeline's plot
MISSING_X = 176  # where the missing milestones start
MISSING_CHARS = 42


def escape(value: Any) -> str:
    """``value`` as text for HTML or SVG, quotes included: the journal's strings are untrusted."""
    return html.escape(str(value), quote=True)


def _attrs(attrs: Mapping[str, Any]) -> str:
    return "".join(
        f' {k.rstrip("_").replace("_", "-")}="{escape(v)}"' for k, v in attrs.items() if v is not None
    )


def tag(name: str, content: str = "", **attrs: Any) -> str:
    """An element around ``content`` (markup, already escaped); attribute values are escaped,
    ``class_`` is ``class``, ``font_size`` is ``font-size``, None leaves one out."""
    return f"<{name}{_attrs(attrs)}>{content}</{name}>"


def void(name: str, **attrs: Any) -> str:
    """An element without content, its attributes as :func:`tag` writes them."""
    return f"<{name}{_attrs(attrs)}/>"


def secs(value: float | None, unit: str = " s") -> str:
    """Seconds, 2 decimals under 10 and 1 above ("—" for None)."""
    if value is None:
        return "—"
    return f"{value:.2f}{unit}" if abs(value) < 10 else f"{value:.1f}{unit}"


def tick_label(value: float) -> str:
    """A round number of seconds as an axis labels it: "120 s"."""
    return f"{round(value, 6):g} s"


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
        parts.append(void("line", x1=x, x2=x, y1=top, y2=bottom, stroke="#e2e2e2"))
        parts += [
            tag("text", tick_label(t), x=x, y=y, class_="tick-label", text_anchor="middle", font_size=11)
            for y in labels_at
        ]
    parts.append(void("line", x1=scale.x0, x2=scale.x1, y1=bottom, y2=bottom, stroke="#888"))
    mid = (scale.x0 + scale.x1) / 2
    parts.append(tag("text", escape(title), x=mid, y=bottom + 34, text_anchor="middle", font_size=12))
    return parts


def _slo_marks(scale: Scale, slo: float | None, top: float, bottom: float, label_y: float) -> List[str]:
    if slo is None:
        return []
    text = f"SLO {tick_label(slo)}"
    if slo > scale.hi:
        return [
            tag(
                "text",
                escape(f"{text} → (beyond this axis)"),
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
        void(
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
        tag(
            "text",
            escape(text),
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
    return [void("rect", x=x, y=top, width=scale.x1 - x, height=bottom - top, fill="#fdeeee")]


HATCH = (
    '<defs><pattern id="{id}" width="6" height="6" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fbe3e3"/>'
    f'<line x1="0" y1="0" x2="0" y2="6" stroke="{NOT_BACK_COLOUR}" stroke-width="3"/></pattern></defs>'
)


def _svg(svg_id: str, parts: Sequence[str], height: float) -> str:
    """A chart: its ``parts`` in an SVG element the page's width and ``height`` tall."""
    return tag(
        "svg",
        "".join(parts),
        id=svg_id,
        xmlns="http://www.w3.org/2000/svg",
        width=SVG_WIDTH,
        height=height,
        viewBox=f"0 0 {SVG_WIDTH} {height:g}",
    )


def histogram_svg(model: Mapping[str, Any]) -> str:
    """The fleet's recovery times: a bar per bin, the p50 and p95, the SLO, and a hatched bar for
    the instances not back."""
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
        parts.append(void("line", x1=left, x2=right, y1=y(c), y2=y(c), stroke="#eee"))
        parts.append(tag("text", c, x=left - 6, y=y(c) + 4, text_anchor="end", font_size=11))
    parts += _x_axis(scale, top, bottom, [bottom + 16], "recovery time: seconds from the NMI until back")
    parts.append(
        tag(
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
                tag(
                    "rect",
                    tag("title", escape(f"{count} back in [{lo:g}, {hi:g}) s")),
                    x=x0 + 0.5,
                    y=y(count),
                    width=max(x1 - x0 - 1, 1),
                    height=bottom - y(count),
                    class_="bin",
                    fill=SECONDS_ONLY_COLOUR,
                )
            )
            parts.append(
                tag("text", count, x=(x0 + x1) / 2, y=y(count) - 3, text_anchor="middle", font_size=10)
            )
    for name, row_y in (("p50", top - 8), ("p95", top - 24)):
        value = fleet.get(name)
        if value is not None and value <= scale.hi:
            x = scale.x(value)
            parts.append(
                void("line", x1=x, x2=x, y1=row_y + 3, y2=bottom, stroke="#333", stroke_dasharray="2 3")
            )
            parts.append(
                tag("text", escape(f"{name} {secs(value)}"), x=x + 3, y=row_y, font_size=11, fill="#333")
            )
    parts += _slo_marks(scale, slo, top, bottom, top - 40)
    nb_x = right + 40
    parts.append(
        tag(
            "rect",
            tag("title", escape(f"{hist['not_back']} not back")),
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
        tag(
            "text",
            hist["not_back"],
            x=nb_x + 25,
            y=y(hist["not_back"]) - 3,
            text_anchor="middle",
            font_size=11,
        )
    )
    parts.append(
        tag(
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
        return f"{m} at +{secs(t)}"
    side = "earlier" if e["upper_bound"] else "later" if e["lower_bound"] else ""
    bar = f"up to {secs(e['uncertainty_s'])} {side}" if side else f"± {secs(e['uncertainty_s'])}"
    return f"{m} at +{secs(t)}, {bar} ({e['source']})"


def _bar_ends(e: Mapping[str, Any]) -> tuple[float, float]:
    """Where one error bar starts and ends, in seconds after the NMI: only before the moment for
    an upper bound, only after it for a lower bound."""
    t, u = e["offset"], e["uncertainty_s"]
    return (t if e["lower_bound"] else t - u), (t if e["upper_bound"] else t + u)


def _reach(row: Mapping[str, Any]) -> List[float]:
    """Where the row's error bars end, in seconds after the NMI."""
    return [end for e in row["evidence"].values() if e["offset"] is not None for end in _bar_ends(e)]


def _whiskers(row: Mapping[str, Any], scale: Scale, y: float) -> List[str]:
    """Each milestone's error bar: either side of it, before it only for an upper bound (a look
    that found it done), after it only for a lower bound (a start), capped at both ends; none for
    a bar under a pixel."""
    parts = []
    c = y + BAR / 2
    for m, e in row["evidence"].items():
        t = e["offset"]
        if t is None:
            continue
        lo, hi = (scale.x(end) for end in _bar_ends(e))
        if hi - lo < 1:
            continue
        ticks = "".join(f"M{x} {c - 4}V{c + 4}" for x in (lo, hi))
        parts.append(
            tag(
                "path",
                tag("title", escape(_dated(row, m, t))),
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
                    void("line", x1=x, x2=x, y1=y - 1, y2=y + BAR + 1, stroke="#fff", stroke_width=1)
                )
            else:
                c = y + BAR / 2
                parts.append(
                    tag(
                        "path",
                        tag("title", escape(_dated(row, m, t))),
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
            void("line", x1=x, x2=x, y1=y - 3, y2=y + BAR + 3, stroke="#000", stroke_width=2, class_="back")
        )
    elif row["observed"] is not None and row["observed"] > end_of_bar:
        end = min(row["observed"], scale.hi)
        title = f"not back after {secs(row['observed'])}"
        parts.append(_bar(scale, end_of_bar, end, y, "url(#hatch-t)", title, "not-back"))
        if end < row["observed"]:
            x, c = scale.x(end), y + BAR / 2
            parts.append(
                void("path", d=f"M{x + 1} {c - 7}L{x + 9} {c}L{x + 1} {c + 7}Z", fill=NOT_BACK_COLOUR)
            )
    return parts


def _bar(
    scale: Scale, start: float, end: float, y: float, fill: str, title: str, kind: str = "seconds"
) -> str:
    x0, x1 = scale.x(start), scale.x(end)
    return tag(
        "rect",
        tag("title", escape(title)),
        x=x0,
        y=y,
        width=max(round(x1 - x0, 2), 1.5),
        height=BAR,
        fill=fill,
        class_=f"seg {kind}",
    )


def timeline_svg(model: Mapping[str, Any]) -> str:
    """A row per instance drawn (``model["timeline"]``): its milestones as segments and markers
    with their error bars, the moment it was back or the wait of one not back, its recovery
    time and the milestones it misses; the SLO across all."""
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
        parts.append(void("rect", x=0, y=top + n * ROW, width=SVG_WIDTH, height=ROW, fill="#f7f7f7"))
    parts += _over_slo_band(scale, model["slo"], top, bottom)
    parts += _x_axis(scale, top, bottom, [top - 6, bottom + 16], "seconds since the NMI")
    parts.append(tag("text", "instance", x=8, y=top - 6, font_size=11, fill="#555"))
    parts.append(tag("text", "back after", x=right + VALUE_X, y=top - 6, font_size=11, fill="#555"))
    if model["source"] == "timelines":
        parts.append(
            tag("text", "missing milestones", x=right + MISSING_X, y=top - 6, font_size=11, fill="#555")
        )
    for n, row in enumerate(shown):
        y = top + n * ROW + (ROW - BAR) / 2
        base = y + BAR - 2
        parts.append(
            tag(
                "text",
                escape(row["instance_id"]),
                x=8,
                y=base,
                class_="row-label",
                font_size=11,
                font_family="DejaVu Sans Mono,monospace",
            )
        )
        if row["sent_at"] is None:
            parts.append(tag("text", "no NMI time recorded", x=left + 4, y=base, font_size=11, fill="#555"))
        else:
            parts += _segments(row, scale, y)
        late = row["over_slo"] is True
        value = (
            secs(row["recovery"])
            if row["recovery"] is not None
            else f"not back after {secs(row['observed'])}"
            if row["observed"] is not None
            else "not back"
        )
        parts.append(
            tag(
                "text",
                escape(value),
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
                tag(
                    "text",
                    escape(text if len(text) <= MISSING_CHARS else text[: MISSING_CHARS - 1] + "…")
                    + tag("title", escape(title)),
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
