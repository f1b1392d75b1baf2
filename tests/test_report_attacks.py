"""The report on journals of every odd shape, and on hostile text: no traceback, no injected markup.

The journal is a real one (``fixtures/journals/three-one-not-back.json``, from `chaos run` against
the lab: three instances hit, one not back, one dump unreadable). Every value in it, at every key
path, is replaced in turn by values of other types, and every key deleted: the report renders
what it can and names each value it left out, or refuses with a one-line error; never a traceback.
"""

import copy
import html
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from test_report import parse

from chaosec2panic.journal import MAX_JOURNAL_BYTES, BadJournal, ReportError, load_journal
from chaosec2panic.recovery import seconds_between
from chaosec2panic.report import BadOption, report_model
from chaosec2panic.report_page import render_html

CLI = str(Path(sys.executable).with_name("chaosec2panic"))
REAL = Path(__file__).parent / "fixtures" / "journals" / "three-one-not-back.json"
Key = Tuple[Any, ...]  # a key path: object keys and list indexes


def real() -> Dict[str, Any]:
    return json.loads(REAL.read_text())


def key_paths(value: Any, path: Key = ()) -> Iterator[Key]:
    """Every key path in ``value``, parents before children."""
    if path:
        yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from key_paths(v, (*path, k))
    elif isinstance(value, list):
        for n, v in enumerate(value):
            yield from key_paths(v, (*path, n))


def at(journal: Any, path: Key) -> Any:
    for k in path:
        journal = journal[k]
    return journal


def named(path: Key) -> str:
    """A key path as the report names it: ``run[1].output.instances.i-0f3c``."""
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else f".{k}" if out else k
    return out


def json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    return "number" if isinstance(value, (int, float)) else type(value).__name__


# Stand-ins of other types (and of the right type but out of range) for each value in turn.
ODD = {
    "null": None,
    "true": True,
    "negative": -1,
    "NaN": math.nan,
    "huge": 10**400,
    "numeric string": "12",
    "lone surrogate": "\ud800",
    "list": [1, "x"],
    "object": {"a": {"b": None}},
}
DELETED = object()


def outcome(journal: Dict[str, Any]) -> Tuple[Dict[str, Any] | None, str]:
    """The model and its page, or None and the error's message; any other exception propagates."""
    try:
        model = report_model(journal)
    except ReportError as exc:
        return None, str(exc)
    return model, render_html(model)


def sweep(odd: Any) -> Tuple[int, List[str]]:
    """Puts ``odd`` (or deletes the key, for DELETED) at every key path of the real journal in
    turn; returns how many ran and what went wrong: an exception other than ReportError, an
    error not on one line, or a value of another type that changed the model without being
    named (by its path or the path of what holds it) in ``skipped`` or the error."""
    journal, base = real(), real()
    base_model, _ = outcome(base)
    assert base_model is not None and base_model.pop("skipped") == []
    ran, wrong = 0, []
    for path in list(key_paths(base)):
        parent, key, old = at(journal, path[:-1]), path[-1], at(base, path)
        if odd is DELETED and not isinstance(parent, dict):
            continue
        ran += 1
        if odd is DELETED:
            del parent[key]
        else:
            parent[key] = copy.deepcopy(odd)
        try:
            model, text = outcome(journal)
        except Exception as exc:  # the attack: anything but a ReportError ends in a traceback
            wrong.append(f"{named(path)}: {type(exc).__name__}: {exc}")
            continue
        finally:
            journal[path[0]] = copy.deepcopy(base[path[0]])  # undoes the change
        if model is None and ("\n" in text or not text):
            wrong.append(f"{named(path)}: error not on one line: {text!r}")
        if odd is DELETED or odd is None or old is None or json_type(odd) == json_type(old):
            continue  # a value may be absent, or null, and read as such: not named
        holders = {named(path[:k]) for k in range(1, len(path) + 1)}  # it, or what holds it
        if model is None:
            if not any(h in text for h in holders):
                wrong.append(f"{named(path)}: refused without naming it: {text}")
        elif not holders & {s.split(": ")[0] for s in model.pop("skipped")} and model != base_model:
            wrong.append(f"{named(path)}: changed the model without being named")
    assert journal == base, "the report changed the journal it read"
    return ran, wrong


@pytest.mark.parametrize("odd", [*ODD, "deleted"])
def test_every_value_of_a_real_journal_replaced_by_an_odd_one_is_reported_or_refused(odd):
    ran, wrong = sweep(ODD.get(odd, DELETED))
    assert ran > 300 and wrong == [], f"{len(wrong)} of {ran}:\n" + "\n".join(wrong[:15])


# renderable but odd: what is left out is named, the rest is drawn ---------------------------------
def ids(journal: Dict[str, Any]) -> List[str]:
    return list(journal["run"][1]["output"]["instances"])


def test_a_timeline_that_is_null_leaves_out_that_timeline_only():
    journal = real()
    first, second, lost = ids(journal)
    journal["run"][1]["output"]["timelines"][first] = None
    model = report_model(journal)
    assert model["skipped"] == [f"run[1].output.timelines.{first}: an object expected, found null"]
    rows = {r["instance_id"]: r for r in model["instances"]}
    assert rows[first]["offsets"] is None and rows[first]["recovery"] == 0.945  # its seconds remain
    assert rows[second]["offsets"]["kernel_back"] is not None and rows[lost]["recovery"] is None
    tree = parse(render_html(model))
    [item] = [e["text"].strip() for e in tree.find("li")]
    assert item == model["skipped"][0]
    assert [e["text"] for e in tree.inside("timeline") if "row-label" in e.get("class", "")] == [
        lost,
        second,  # 0.949 s
        first,  # 0.945 s
    ]


def test_numbers_as_strings_nan_and_infinity_are_named_not_drawn():
    journal = real()
    first, second, _ = ids(journal)
    journal["run"][1]["output"]["instances"].update({first: "0.945", second: math.inf})
    journal["run"][1]["output"]["timelines"][second]["durations"]["total_recovery"] = math.nan
    journal["run"][2]["output"]["instances"][first]["size"] = "278669557"
    model = report_model(journal)
    assert model["skipped"] == [
        f"run[1].output.instances.{first}: a number of seconds within ±1e+09 expected, found '0.945'",
        f"run[1].output.instances.{second}: a number of seconds within ±1e+09 expected, found inf",
        f"run[1].output.timelines.{second}.durations.total_recovery: "
        "a number of seconds within ±1e+09 expected, found nan",
        f"run[2].output.instances.{first}.size: a whole number, 0 or more expected, found '278669557'",
    ]
    rows = {r["instance_id"]: r for r in model["instances"]}
    assert rows[first]["recovery"] == 0.945  # from its timeline's total_recovery
    assert rows[second]["recovery"] is None and rows[first]["dump"]["size"] is None
    parse(render_html(model))


def test_times_without_a_zone_are_utc_as_chaos_run_writes_them():
    journal = real()
    [first, *_] = ids(journal)
    line = journal["run"][1]["output"]["timelines"][first]["milestones"]
    sent = line["nmi_sent"]
    line["nmi_sent"] = sent.removesuffix("Z")  # the other milestones keep their Z
    model = report_model(journal)
    row = next(r for r in model["instances"] if r["instance_id"] == first)
    assert model["skipped"] == [] and row["sent_at"] == sent
    assert row["offsets"]["kernel_back"] == seconds_between(sent, line["kernel_back"])


def test_an_slo_that_is_no_slo_is_refused():
    for slo in (math.nan, math.inf, 0, -5):
        with pytest.raises(BadOption, match="the SLO must be a positive number of seconds"):
            report_model(real(), slo=slo)
    journal = real()
    journal["experiment"]["steady-state-hypothesis"]["probes"][0]["provider"]["arguments"]["seconds"] = -1
    model = report_model(journal)
    assert model["slo"] is None and model["skipped"] == [
        "experiment.steady-state-hypothesis.probes[0].provider.arguments.seconds: "
        "a positive number of seconds up to 1e+09 expected, found -1"
    ]


def test_recovery_data_all_of_the_wrong_type_says_so_and_where():
    journal = real()
    journal["run"][1]["output"]["instances"] = "i-0f3cfb4382155b6a5"
    journal["run"][1]["output"]["timelines"] = []
    with pytest.raises(ReportError, match="no recovery data") as raised:
        report_model(journal)
    assert "2 values of the journal left out" in str(raised.value)
    assert "run[1].output.instances: an object expected, found 'i-0f3cfb4382155b6a5'" in str(raised.value)
    assert "run[1].output.timelines: an object expected, found a list of 0 items" in str(raised.value)


def test_a_file_larger_than_any_journal_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "journal.json"
    with big.open("wb") as f:
        f.truncate(MAX_JOURNAL_BYTES + 1)  # sparse: no disk used
    with pytest.raises(BadJournal, match=f"{big} is {MAX_JOURNAL_BYTES + 1} bytes, more than any journal"):
        load_journal(big)


def test_a_file_of_white_space_is_called_empty(tmp_path):
    blank = tmp_path / "journal.json"
    blank.write_text(" \n\t\n")
    with pytest.raises(BadJournal, match=f"^{blank} is empty: pass the journal.json"):
        load_journal(blank)


# the command ---------------------------------------------------------------------------------------
def journal_bytes() -> Dict[str, bytes]:
    """Journal files of odd shapes, from the real one, by what is odd about them."""
    text = REAL.read_text()
    huge = text.replace('"count": 3', '"count": ' + "9" * 5000, 1)
    assert huge != text
    data = real()
    data["run"][1]["output"]["timelines"][ids(data)[0]] = None
    return {
        "empty": b"",
        "not UTF-8": text.replace("An NMI", "An \udcff NMI", 1).encode("utf-8", "surrogateescape"),
        "nested too deep": ("[" * 200_000 + "]" * 200_000).encode(),
        "an integer of 5000 digits": huge.encode(),
        "timeline null": json.dumps(data).encode(),
    }


# what: (exit code, what stderr's first line must say, whether a page is written)
COMMAND_CASES = {
    "empty": (2, "{path} is empty: pass the journal.json `chaos run` writes", False),
    "not UTF-8": (2, "{path} is not UTF-8 text (byte 0xff at offset ", False),
    "nested too deep": (2, "{path} nests lists or objects too deep to be a journal", False),
    "an integer of 5000 digits": (2, "{path} is not JSON (Exceeds the limit (4300 digits)", False),
    "timeline null": (
        0,
        "1 value of the journal left out, as not in the shape `chaos run` writes: "
        "run[1].output.timelines.{first}: an object expected, found null",
        True,
    ),
}


def run_report(tmp_path: Path, journal: Path, *more: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "report", str(journal), "-o", str(tmp_path / "r.html"), *more],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PATH": str(tmp_path)},  # no Chromium: no PNG to wait for
        check=False,
    )


@pytest.mark.parametrize("shape", list(COMMAND_CASES))
def test_the_command_on_an_odd_journal_names_the_problem_without_a_traceback(tmp_path, shape):
    path = tmp_path / "journal.json"
    path.write_bytes(journal_bytes()[shape])
    code, message, written = COMMAND_CASES[shape]
    done = run_report(tmp_path, path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, done.stderr
    first_line = done.stderr.splitlines()[0]
    expected = message.format(path=path, first=ids(real())[0])
    assert first_line.startswith(f"chaosec2panic: {expected}"), first_line
    assert (tmp_path / "r.html").exists() is written
    if written:
        tree = parse((tmp_path / "r.html").read_text(encoding="utf-8"))
        assert [e["text"].strip() for e in tree.find("li")] == [expected.split("writes: ")[1]]


def test_the_command_on_a_fifo_does_not_wait_for_a_writer(tmp_path):
    fifo = tmp_path / "journal.json"
    os.mkfifo(fifo)
    done = run_report(tmp_path, fifo, timeout=20)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"chaosec2panic: {fifo} is not a regular file"), done.stderr


def test_the_command_writes_a_title_that_is_a_lone_surrogate_as_a_named_omission(tmp_path):
    path = tmp_path / "journal.json"
    path.write_text(REAL.read_text().replace('"title": "An NMI', '"title": "\\ud800 An NMI', 1))
    done = run_report(tmp_path, path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "experiment.title: a string expected, found '\\\\ud800 An NMI" in done.stderr
    assert "(untitled experiment)" in (tmp_path / "r.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("slo", ["nan", "-3"])
def test_the_command_refuses_an_slo_that_is_no_slo(tmp_path, slo):
    done = run_report(tmp_path, REAL, f"--slo={slo}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("chaosec2panic: the SLO must be a positive number of seconds"), done.stderr
    assert not (tmp_path / "r.html").exists()


# hostile text: every string and every name the journal holds, none injected ------------------------
PAYLOAD = "\"'><script>alert(1)</script><img src=x onerror=alert(2)><svg onload=alert(3)>]]><!--"
TAGS = {
    *(
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "main",
        "h1",
        "h2",
        "p",
        "div",
        "b",
        "span",
        "ul",
        "li",
    ),
    *("table", "thead", "tbody", "tr", "th", "td"),
    *("svg", "defs", "pattern", "rect", "line", "text", "path"),
}
ATTRIBUTES = {
    *(
        "lang",
        "charset",
        "id",
        "class",
        "style",
        "colspan",
        "xmlns",
        "viewbox",
        "width",
        "height",
        "transform",
    ),
    *("x", "y", "x1", "x2", "y1", "y2", "d", "fill", "stroke", "stroke-width", "stroke-dasharray"),
    *("font-size", "font-weight", "font-family", "font-style", "text-anchor"),
    *("patternunits", "patterntransform"),
}


def hostile_journals() -> Iterator[Tuple[str, Dict[str, Any]]]:
    """The real journal with PAYLOAD as each string value in turn, after each name (object key)
    in turn, and after every instance id everywhere at once."""
    base = real()
    for path in key_paths(base):
        if isinstance(at(base, path), str):
            journal = real()
            at(journal, path[:-1])[path[-1]] = PAYLOAD
            yield named(path), journal
        if isinstance(path[-1], str):
            journal = real()
            parent = at(journal, path[:-1])
            items = [(k + PAYLOAD if k == path[-1] else k, v) for k, v in parent.items()]
            parent.clear()
            parent.update(items)
            yield f"the name {named(path)}", journal
    text = REAL.read_text()
    for i in ids(base):
        text = text.replace(f'"{i}', json.dumps(i + PAYLOAD)[:-1])
    yield "every instance id", json.loads(text)


def test_no_string_or_name_of_the_journal_becomes_markup():
    """The audit's "263 payload positions in the HTML report, none injected", kept: PAYLOAD at
    each position either leaves the page as it was (not read), or reaches it as text (whole, or
    cut short in the list of values left out) and never as an element or an attribute."""
    _, base_page = outcome(real())
    positions, reached, whole = 0, 0, 0
    for where, journal in hostile_journals():
        positions += 1
        try:
            model, page = outcome(journal)
        except Exception as exc:
            raise AssertionError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if model is None:
            continue  # refused: nothing written
        tree = parse(page)
        for e in tree.elements:
            assert e["tag"] in TAGS, (where, e)
            assert set(e) - {"tag", "text", "parents"} <= ATTRIBUTES, (where, e)
        reached += page != base_page
        whole += html.escape(PAYLOAD) in page
    assert positions > 600 and reached > 170 and whole > 50, (positions, reached, whole)
