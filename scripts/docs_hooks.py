"""MkDocs hooks: the reference pages are written from the code at build time.

Activities come from the same discovery as ``chaos discover chaosec2panic``, the control and
the configuration keys from their docstrings, the CLI from its argument parser, and the IAM
policy from ``chaosec2panic.iam.policy``: nothing is copied by hand, so nothing drifts.
"""

import argparse
import inspect
import json
import os
from typing import Any, Dict, Iterator, List, Tuple

from mkdocs.structure.files import File, Files

import chaosec2panic
from chaosec2panic import settings
from chaosec2panic.cli import parser
from chaosec2panic.controls import alarms, verdict
from chaosec2panic.iam import activity_actions, policy

MODULES = {
    "chaosec2panic.actions": "Actions",
    "chaosec2panic.probes": "Probes",
    "chaosec2panic.rollbacks": "Rollbacks",
}
POLICY_MARKER = "<!-- generated policy -->"
CONTROL_HOOKS = (
    "configure_control",
    "before_activity_control",
    "after_experiment_control",
    "cleanup_control",
)


def _cell(value: Any) -> str:
    return "" if value is None else f"`{json.dumps(value)}`".replace("|", "\\|")


def activities_page() -> str:
    found = chaosec2panic.load_exported_activities()
    actions = activity_actions()
    lines = [
        "# Activities",
        "",
        "Every action, probe and rollback the extension exports, as `chaos discover chaosec2panic`",
        "sees them. Each takes `configuration` and `secrets` from Chaos Toolkit as well (declare",
        "`secrets: [aws]` to pass AWS secrets). The IAM actions are those the activity calls.",
    ]
    for module, title in MODULES.items():
        lines += ["", f"## {title}", "", f"Module `{module}`."]
        for activity in (a for a in found if a["mod"] == module):
            arguments = [a for a in activity["arguments"] if a["name"] not in ("configuration", "secrets")]
            lines += ["", f"### `{activity['name']}`", "", f"*{activity['type']}*", "", activity["doc"], ""]
            if arguments:
                lines += ["| argument | type | default |", "| --- | --- | --- |"]
                lines += [
                    f"| `{a['name']}` | {a.get('type', '')} | "
                    + (_cell(a["default"]) if "default" in a else "**required**")
                    + " |"
                    for a in arguments
                ]
            lines += ["", "IAM: " + ", ".join(f"`{x}`" for x in actions.get(activity["name"], []))]
    return "\n".join(lines) + "\n"


def controls_page() -> str:
    lines = ["# Controls"]
    for module in (alarms, verdict):
        lines += ["", f"## `{module.__name__}`", "", inspect.getdoc(module) or ""]
        for name in CONTROL_HOOKS:
            func = getattr(module, name, None)
            if func is not None:
                lines += ["", f"### `{name}{inspect.signature(func)}`", "", inspect.getdoc(func) or ""]
    return "\n".join(lines) + "\n"


def configuration_page() -> str:
    return "\n".join(["# Configuration keys", "", inspect.getdoc(settings) or ""]) + "\n"


def _commands(command: argparse.ArgumentParser, words: Tuple[str, ...]) -> Iterator[Tuple[str, str]]:
    subcommands = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
    yield " ".join(("chaosec2panic", *words)), command.format_help()
    for group in subcommands:
        for name, sub in group.choices.items():
            yield from _commands(sub, (*words, name))


def cli_page() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal: the same width each build
    top = parser()
    lines = ["# The `chaosec2panic` command", "", inspect.getdoc(chaosec2panic.cli) or ""]
    for words, text in _commands(top, ()):
        lines += ["", f"## `{words}`"]
        lines += ["", "```text", text.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def pages() -> Dict[str, str]:
    """The generated pages, by their path under docs/."""
    return {
        "reference/activities.md": activities_page(),
        "reference/controls.md": controls_page(),
        "reference/configuration.md": configuration_page(),
        "reference/cli.md": cli_page(),
    }


def on_files(files: Files, config: Any) -> Files:
    for path, text in pages().items():
        files.append(File.generated(config, path, content=text))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if POLICY_MARKER not in markdown:
        return markdown
    generated: List[str] = ["```json", json.dumps(policy(), indent=2), "```"]
    return markdown.replace(POLICY_MARKER, "\n".join(generated))
