"""Which IAM actions each activity calls, and the least-privilege policy built from them.

Each activity declares its actions with :func:`requires`, composed from the building blocks
below (what resolving targets, running a guest script or looking at an instance calls).
The lab records every call it answers, and a test holds each declaration to what the
activity really called.
"""

import importlib
from typing import Any, Callable, Dict, Iterable, List, Sequence, TypeVar

__all__ = [
    "APP_CHECK",
    "OBSERVE",
    "RESOLVE",
    "RESOLVE_GUARDED",
    "RUN_SCRIPT",
    "STOP_ALARMS",
    "WATCH_RECOVERY",
    "activity_actions",
    "policy",
    "requires",
]

F = TypeVar("F", bound=Callable[..., Any])

RESOLVE = ("ec2:DescribeInstances",)
RESOLVE_GUARDED = (*RESOLVE, "ec2:DescribeInstanceTypes")
RUN_SCRIPT = (
    "ssm:DescribeInstanceInformation",
    "ssm:SendCommand",
    "ssm:ListCommandInvocations",
    "ssm:GetCommandInvocation",
)
OBSERVE = ("ec2:DescribeInstanceStatus", *RUN_SCRIPT)
# Watching hit instances come back: status looks, one identity command each, read when
# ListCommands shows answers, and the console once or twice.
WATCH_RECOVERY = (
    "ec2:DescribeInstanceStatus",
    "ec2:GetConsoleOutput",
    "ssm:SendCommand",
    "ssm:ListCommands",
    "ssm:ListCommandInvocations",
)
# An application check through an ELB target group (a URL or port check calls no AWS API).
APP_CHECK = ("elasticloadbalancing:DescribeTargetHealth",)
STOP_ALARMS = ("cloudwatch:DescribeAlarms", "cloudwatch:ListTagsForResource")
# Controls are not activities; their actions are listed under the name the policy uses.
CONTROL_ACTIONS = {"stop_alarms": STOP_ALARMS}
# Actions that change an instance: scoped to the opt-in tag (or to named instances).
INSTANCE_ACTIONS = frozenset(
    {
        "ec2:SendDiagnosticInterrupt",
        "ec2:RebootInstances",
        "ec2:StopInstances",
        "ec2:StartInstances",
    }
)
ACTIVITY_MODULES = ("chaosec2panic.actions", "chaosec2panic.probes", "chaosec2panic.rollbacks")
SSM_DOCUMENTS = ("AWS-RunShellScript", "AWS-RunPowerShellScript")
# The shared ledger's calls (its transactions are authorized as their Put and Update items).
LEDGER_TABLE_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:UpdateItem")


def requires(*actions: str) -> Callable[[F], F]:
    """Record on an activity the IAM actions it calls (the function itself is unchanged)."""

    def mark(func: F) -> F:
        func.__iam_actions__ = tuple(sorted(set(actions)))  # type: ignore[attr-defined]
        return func

    return mark


def activity_actions() -> Dict[str, List[str]]:
    """Every exported activity (and control) and the IAM actions it calls."""
    found: Dict[str, List[str]] = {name: list(actions) for name, actions in CONTROL_ACTIONS.items()}
    for name in ACTIVITY_MODULES:
        module = importlib.import_module(name)
        for activity in module.__all__:
            found[activity] = list(getattr(module, activity).__iam_actions__)
    return found


def policy(
    activities: Iterable[str] | None = None,
    opt_in: tuple[str, str] = ("chaos:nmi", "allowed"),
    instance_arns: Sequence[str] = (),
    ledger_table: str = "",
) -> Dict[str, Any]:
    """An IAM policy with exactly the actions ``activities`` call (all when None).

    Actions that change an instance are allowed only on instances carrying the opt-in tag,
    or only on ``instance_arns`` when given; SSM commands only with the two documents the
    guest scripts use; the shared ledger's reads and writes only on ``ledger_table``.
    """
    known = activity_actions()
    wanted = list(known) if activities is None else list(activities)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"unknown activities {unknown}; valid: {sorted(known)}")
    actions = sorted({a for name in wanted for a in known[name]})
    changing = [a for a in actions if a in INSTANCE_ACTIONS]
    reading = [a for a in actions if a not in INSTANCE_ACTIONS and a != "ssm:SendCommand"]
    statements: List[Dict[str, Any]] = []
    if reading:
        statements.append({"Sid": "Read", "Effect": "Allow", "Action": reading, "Resource": "*"})
    if changing:
        scoped: Dict[str, Any] = {"Sid": "ActOnOptedInInstances", "Effect": "Allow", "Action": changing}
        if instance_arns:
            scoped["Resource"] = list(instance_arns)
        else:
            scoped["Resource"] = "arn:aws:ec2:*:*:instance/*"
            scoped["Condition"] = {"StringEquals": {f"aws:ResourceTag/{opt_in[0]}": opt_in[1]}}
        statements.append(scoped)
    if "ssm:SendCommand" in actions:
        statements.append(
            {
                "Sid": "RunGuestScripts",
                "Effect": "Allow",
                "Action": ["ssm:SendCommand"],
                "Resource": [
                    "arn:aws:ec2:*:*:instance/*",
                    *(f"arn:aws:ssm:*::document/{d}" for d in SSM_DOCUMENTS),
                ],
            }
        )
    if ledger_table:
        table = {"Sid": "SharedLedger", "Effect": "Allow", "Action": list(LEDGER_TABLE_ACTIONS)}
        statements.append({**table, "Resource": f"arn:aws:dynamodb:*:*:table/{ledger_table}"})
    return {"Version": "2012-10-17", "Statement": statements}
