"""Export a catalogue experiment's ``send_nmi`` to AWS's own engines: SSM Automation runbooks run by
an AWS FIS experiment template, started by an EventBridge Scheduler schedule, in one
CloudFormation stack.

Pure: :func:`export_fis` takes the experiment (the dict its YAML holds) and returns the text of
each file. AWS FIS's ``aws:ssm:start-automation-execution`` action takes no targets, so the
selection is not FIS's: the runbook FIS starts (``fleet-runbook.yaml``) resolves the targets with
DescribeInstances, picks and caps them, and runs the per-instance runbook (``runbook.yaml``) on
each through Automation's rate control. What each guard of ``send_nmi`` becomes there is in
docs/export.md.
"""

import json
from typing import Any, Dict, Mapping, Sequence

import yaml

from .plan import ExportRefused, plan
from .runbooks import fleet_runbook, instance_runbook
from .stack import arns_of, experiment_template, schedule_request, stack_template

__all__ = ["FILES", "ExportRefused", "export_fis"]

FILES = ("runbook.yaml", "fleet-runbook.yaml", "experiment-template.json", "schedule.json", "stack.yaml")


class _Dumper(yaml.SafeDumper):
    """YAML without aliases (CloudFormation rejects them), multi-line text as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _text)


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)


def export_fis(
    experiment: Mapping[str, Any],
    slug: str,
    stop_alarm_arns: Sequence[str] = (),
    region: str = "REGION",
    account: str = "ACCOUNT_ID",
) -> Dict[str, str]:
    """The files (name -> text) that run ``experiment``'s send_nmi on SSM Automation under AWS FIS.

    ``slug`` names every resource (``chaosec2panic-<slug>-...``); ``stop_alarm_arns`` add stop
    alarms (and are needed when the experiment finds its alarms by tags); ``region`` and
    ``account`` fill the ARNs of the request files (stack.yaml needs neither). Raises
    ExportRefused when the experiment sends no NMI or asks what the export cannot keep.
    """
    p = plan(experiment, slug, stop_alarm_arns)
    runbook, fleet = instance_runbook(p), fleet_runbook(p)
    arns = arns_of(p, region, account)
    template = experiment_template(p, arns)
    return {
        "runbook.yaml": _yaml(runbook),
        "fleet-runbook.yaml": _yaml(fleet),
        "experiment-template.json": json.dumps(template, indent=2) + "\n",
        "schedule.json": json.dumps(schedule_request(p, arns, "EXPERIMENT_TEMPLATE_ID"), indent=2) + "\n",
        "stack.yaml": _yaml(stack_template(p, runbook, fleet, template)),
    }
