"""Values that reach a guest script, as an attacker would write them: each must arrive as the very
string it was, and nothing in it may run. Every value check takes the whole value.

Linux: the prelude :func:`chaosec2panic.guest.script` writes runs under sh. Windows: PowerShell
cannot run here, so the prelude is read by :func:`powershell_variables`, a strict reader of the
one statement form it may hold, with PowerShell's own tokenizer rule for single-quoted strings.
"""

import base64
import re
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Dict

import pytest
from conftest import sim_guest

from chaosec2panic import guest
from chaosec2panic.app import parse_app_check
from chaosec2panic.errors import InvalidRequest
from chaosec2panic.guest.parsers import (
    CRASHKERNEL,
    LINUX_SETTINGS,
    RESTORABLE_VALUES,
    parse_report,
    settings_change,
)
from chaosec2panic.lab.simwindows import script_variables
from chaosec2panic.targets import INSTANCE_ID

LINUX, WINDOWS = guest.PLATFORMS["linux"], guest.PLATFORMS["windows"]
PWNED = "pwned"  # what a payload that ran would leave behind
HOSTILE = [
    "$(touch pwned)",
    "`touch pwned`",
    "; touch pwned",
    "| touch pwned",
    "& touch pwned",
    "&& touch pwned",
    "|| touch pwned",
    "\ntouch pwned",
    "\r\ntouch pwned\n",
    "'; touch pwned; '",
    "'\"'\"'; touch pwned; '",
    '"; touch pwned; "',
    "\\'; touch pwned; \\'",
    "\u2019; touch pwned; \u2019",  # the typographic single quotes PowerShell also ends strings at
    "\u2018$(touch pwned)\u2018",
    "\u201a; touch pwned; \u201b",
    "\u201c\u201d\u201e $(touch pwned)",
    "*",
    "/*",
    "~",
    "~root",
    "$HOME",
    "${PATH}",
    "$((1+1))",
    "${IFS}",
    "$0 $@ $1 $$",
    "!!",
    "# not a comment",
    "-n",
    "-e \\n",
    "--",
    "%s%n%x",
    "\\",
    "\\\\'",
    "a\x01b\x1b[2Jc\x7f",
    "\t",
    " leading and trailing ",
    "",
    "\u00e9 \u65e5\u672c \u202e\u0412",  # U+0412's UTF-8 holds 0x92, a quote mark in Windows-1252
    "<(touch pwned)",
    ">pwned",
    "2>pwned",
    "{a,b}",
    "$(touch pwned)'$(touch pwned)'\"$(touch pwned)\"",
    '256M"; touch pwned; x="',
    "$env:PATH",
    "$(Remove-Item pwned)",
    "@(touch pwned)",
    "x`$(touch pwned)",
]
# The variables each Linux script reads (kdump_status and identity read none: VALUE stands in).
LINUX_READS = {
    "kdump_status": ("VALUE",),
    "identity": ("VALUE",),
    "crash_dumps": ("DUMP_DIR", "MAX_DUMPS"),
    "collect_crash_dump": ("DUMP_FILE", "BUCKET", "KEY"),
    "kdump_settings": (
        "ACTION",
        "CRASHKERNEL",
        "CRASHKERNEL_FORCE",
        "RESTORE",
        *(f"BEFORE_{s}" for s in RESTORABLE_VALUES if s in LINUX_SETTINGS),
    ),
}


def _split_prelude(platform: guest.Platform, name: str, variables: Dict[str, str]) -> str:
    """The prelude of the script sent with ``variables``: all that comes before the script itself."""
    text, body = guest.script(platform, name, variables), guest.script(platform, name)
    assert text.endswith(body)
    return text[: len(text) - len(body)]


def test_every_script_variable_list_names_what_the_script_reads():
    for name, names in LINUX_READS.items():
        text = guest.script(LINUX, name)
        assert all(n == "VALUE" or n in text for n in names), name
    assert set(LINUX_READS) == set(guest.SCRIPTS)


# Linux: the prelude under sh --------------------------------------------------------------------
@pytest.mark.parametrize("name", guest.SCRIPTS)
@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_in_every_linux_variable_is_held_literally_and_nothing_runs(tmp_path, name, value):
    variables = {k: value for k in LINUX_READS[name]}
    prelude = _split_prelude(LINUX, name, variables)
    probe = tmp_path / "probe.sh"
    probe.write_text(prelude + "".join(f'printf "%s\\0" "${k}"\n' for k in variables))
    done = subprocess.run(["sh", str(probe)], cwd=tmp_path, capture_output=True, timeout=30)
    assert done.returncode == 0 and done.stderr == b""
    assert done.stdout.split(b"\0")[:-1] == [v.encode() for v in variables.values()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.sh"]  # nothing ran


@pytest.mark.parametrize(
    ("variables", "why"),
    [
        ({"KEY": "a\0b"}, "a NUL character cannot be passed"),
        ({"KEY": "\udc80"}, "not encodable as UTF-8"),
        ({"KEY": 3}, "expected text"),
        ({"KEY=x; touch pwned; Y": "v"}, "variable name"),
        ({"$env:X": "v"}, "variable name"),
        ({"KEY\n": "v"}, "variable name"),
    ],
)
def test_a_variable_no_script_could_hold_as_given_is_refused(variables, why):
    for platform in (LINUX, WINDOWS):
        with pytest.raises(ValueError, match=why):
            guest.script(platform, "collect_crash_dump", variables)


# Windows: the prelude as PowerShell reads it -----------------------------------------------------
# PowerShell's tokenizer (CharExtensions.IsSingleQuote) ends a single-quoted string at any of these,
# and reads two of them in a row as the second one.
POWERSHELL_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"
ASSIGNMENT = re.compile(r"\$env:([A-Za-z_][A-Za-z0-9_]*) = ")
DECODE_OPEN = "[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String("
DECODE_CLOSE = "))"


def _single_quoted(text: str, at: int) -> tuple[str, int]:
    """The single-quoted PowerShell string starting at ``text[at]``: its value, and where it ends."""
    assert text[at] in POWERSHELL_SINGLE_QUOTES, f"not a string at {text[at : at + 40]!r}"
    value, i = [], at + 1
    while i < len(text):
        if text[i] in POWERSHELL_SINGLE_QUOTES:
            if i + 1 < len(text) and text[i + 1] in POWERSHELL_SINGLE_QUOTES:
                value.append(text[i + 1])
                i += 2
                continue
            return "".join(value), i + 1
        value.append(text[i])
        i += 1
    raise AssertionError("a string literal that never ends")


def powershell_variables(prelude: str) -> Dict[str, str]:
    """What a prelude sets, read strictly as PowerShell would: nothing but statements
    ``$env:NAME = 'literal'`` or ``$env:NAME = [Text.Encoding]::UTF8.GetString(
    [Convert]::FromBase64String('literal'))``, one a line. Anything else after a string, such as
    what a quote mark inside a value let out, fails."""
    found: Dict[str, str] = {}
    at = 0
    while at < len(prelude):
        assignment = ASSIGNMENT.match(prelude, at)
        assert assignment, f"not an assignment: {prelude[at : at + 60]!r}"
        at = assignment.end()
        encoded = prelude.startswith(DECODE_OPEN, at)
        value, at = _single_quoted(prelude, at + len(DECODE_OPEN) if encoded else at)
        if encoded:
            assert prelude.startswith(DECODE_CLOSE, at), f"after the string: {prelude[at : at + 60]!r}"
            at += len(DECODE_CLOSE)
            value = base64.b64decode(value, validate=True).decode("utf-8")
        assert prelude.startswith("\n", at), f"after the string: {prelude[at : at + 60]!r}"
        found[assignment.group(1)] = value
        at += 1
    return found


@pytest.mark.parametrize("name", guest.SCRIPTS)
def test_a_windows_value_with_any_quote_mark_is_one_string_and_read_back_literally(name):
    for value in HOSTILE:
        variables = {"KEY": value, "BUCKET": f"b{value}", "BEFORE_auto_reboot": value + "'\u2019"}
        prelude = _split_prelude(WINDOWS, name, variables)
        assert powershell_variables(prelude) == variables, repr(value)
        # the lab's Windows stand-in reads the very same values
        assert script_variables(guest.script(WINDOWS, name, variables)) == variables, repr(value)


def test_the_strict_reader_sees_a_quote_mark_let_out():
    # What the prelude was: a value spliced into a literal, with only ' doubled.
    spliced = "$env:KEY = 'dumps\u2019 + $env:PATH + \u2019/'\n"
    with pytest.raises(AssertionError, match="after the string"):
        powershell_variables(spliced)
    assert powershell_variables("$env:KEY = 'it''s \u2019\u2019 ok'\n") == {"KEY": "it's \u2019 ok"}


def test_a_windows_script_is_ascii_whatever_its_values():
    # Windows PowerShell reads a .ps1 without a byte order mark in the ANSI code page, where
    # UTF-8's bytes of other characters can read as quote marks: a script of ASCII reads the same.
    for name in guest.SCRIPTS:
        assert guest.script(WINDOWS, name, {"KEY": "\u00e9\u2019\u0412\u65e5"}).isascii()


# Whole values: no trailing newline, no leading dash ---------------------------------------------
CRASHKERNEL_VALUES = {
    "256M": True,
    "256m": True,
    "1G-4G:192M,4G-64G:256M,64G-:512M": True,
    "384M-:128M": True,
    "128M@16M": True,
    "1G-4G:192M@16M": True,
    "512M,high": True,
    "64M,low": True,
    "64M,cma": True,
    "0x10000000": True,
    "auto": True,
    "": False,
    "-256M": False,
    "256M\n": False,
    "256M,high\n": False,
    "\n256M": False,
    "256M; reboot": False,
    '256M"': False,
    "256M|": False,
    "256MB": False,
    "M": False,
    "256M,": False,
    "256M@": False,
    "1G-4G:192M,high": False,
    "256M@16M,high": False,
    "1G-:": False,
    "1G:256M": False,
    "256M 512M": False,
    "\u0662\u0665\u0666M": False,  # Arabic-Indic digits: \d would take them
}


@pytest.mark.parametrize(("value", "valid"), sorted(CRASHKERNEL_VALUES.items()))
def test_a_crashkernel_is_checked_whole_against_the_kernels_grammar_here_and_on_the_instance(
    tmp_path, value, valid
):
    assert bool(CRASHKERNEL.fullmatch(value)) is valid
    assert RESTORABLE_VALUES["crashkernel"].fits(value) is (valid or value == "")
    library = files("chaosec2panic.guest").joinpath("linux", "crashkernel.sh").read_text()
    probe = tmp_path / "probe.sh"
    probe.write_text(library + 'crashkernel_value "$1" && echo valid || echo invalid\n')
    done = subprocess.run(["sh", str(probe), value], capture_output=True, text=True, timeout=30)
    assert done.stdout == ("valid\n" if valid else "invalid\n"), done.stderr


@pytest.mark.parametrize("value", ["i-0123456789abcdef0\n", "i-01234567\n", "\ni-01234567", "i-01234567 "])
def test_an_instance_id_is_checked_whole_whichever_way_it_is_matched(value):
    assert INSTANCE_ID.fullmatch(value.strip())
    assert not INSTANCE_ID.fullmatch(value) and not INSTANCE_ID.match(value)  # the lab uses match


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef\n",
        "arn:aws:elasticloadbalancing:us-east-1:\u0661\u0662\u0663456789012:targetgroup/web/0123456789abcdef",
    ],
)
def test_a_target_group_arn_is_checked_whole(arn):
    with pytest.raises(InvalidRequest, match="must be a target group ARN"):
        parse_app_check({"target_group": arn})


def test_no_guest_script_evaluates_text():
    for platform in guest.PLATFORMS.values():
        for name in guest.SCRIPTS:
            code = [
                line
                for line in guest.script(platform, name).splitlines()
                if not line.lstrip().startswith("#")
            ]
            assert not [line for line in code if re.search(r"\beval\b|Invoke-Expression|\biex\b", line)], name


# kdump_settings on the instance: a planted value is refused before anything changes -------------
def _files(root: Path) -> Dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "etc").rglob("*")) if p.is_file()
    }


# Each payload aimed at where the value would go: a sourced grub.d file (Debian, Ubuntu), the sed
# program that edits /etc/default/grub (SUSE) or the sysctl file, and USE_KDUMP's sed program
# (GNU sed's e command runs the shell).
RUN = "echo pwned >/pwned"  # a builtin: guests have few tools
PLANTED = [
    ("ubuntu", "crashkernel", f'256M"; {RUN}; x="'),
    ("suse", "crashkernel", f"256M|;1e {RUN};#"),
    ("debian", "nmi_sysctl_file", f"0/;1e {RUN};#"),
    ("debian", "use_kdump", f"0/;1e {RUN};#"),
    ("debian", "unknown_nmi_panic", "0\n1"),
    ("debian", "kdump_active", f"$({RUN})"),
]


def _run_settings(g, **variables: str):
    outcome = g.run_command(guest.script(LINUX, "kdump_settings", variables))
    assert outcome.code == 0, outcome.stderr
    return settings_change(parse_report(outcome.stdout, "kdump_settings"))


@pytest.mark.parametrize(("os_name", "setting", "planted"), PLANTED)
def test_kdump_settings_refuses_a_planted_before_value_and_changes_nothing(
    tmp_path, os_name, setting, planted
):
    g = sim_guest(tmp_path / "root", os=os_name, kdump=False, crashkernel_mib=0, unknown_nmi_panic=0)
    armed = _run_settings(g, ACTION="arm")
    assert armed.error == ""
    names = [n for n in LINUX_SETTINGS if n in armed.changed and n != "packages"]
    before = {f"BEFORE_{n}": armed.settings[n]["before"] for n in names}
    files_before = _files(g.root)
    restored = _run_settings(
        g,
        ACTION="restore",
        RESTORE=" ".join(dict.fromkeys([*names, setting])),
        **{**before, f"BEFORE_{setting}": planted},
    )
    assert restored.error.startswith(f"BEFORE_{setting} is not a value {setting} can be put back to")
    assert restored.error.endswith("nothing was changed") and restored.changed == []
    assert _files(g.root) == files_before
    assert not (g.root / PWNED).exists()


@pytest.mark.parametrize("crashkernel", [f'256M"; {RUN}; x="', "-256M", "256M\n"])
def test_kdump_settings_refuses_a_crashkernel_it_was_not_meant_to_get(tmp_path, crashkernel):
    g = sim_guest(tmp_path / "root", os="ubuntu", kdump=False, crashkernel_mib=0)
    assert _run_settings(g).error == ""  # a report: the guest's files are laid out
    files_before = _files(g.root)
    change = _run_settings(g, ACTION="arm", CRASHKERNEL=crashkernel, CRASHKERNEL_FORCE="1")
    assert change.error.startswith("CRASHKERNEL ") and change.error.endswith("nothing was changed")
    assert change.changed == [] and _files(g.root) == files_before and not (g.root / PWNED).exists()


@pytest.mark.parametrize("name", ["collect_crash_dump", "crash_dumps"])
def test_the_whole_script_run_with_hostile_values_runs_none_of_them(tmp_path, name):
    g = sim_guest(tmp_path / "root")
    for value in [v.replace("touch pwned", RUN) for v in HOSTILE if "pwned" in v]:
        outcome = g.run_command(guest.script(LINUX, name, {k: value for k in LINUX_READS[name]}))
        assert outcome.code == 0 and outcome.stdout.endswith("end=ok\n"), (value, outcome.stderr)
        assert not (g.root / PWNED).exists(), value
