"""The AWS requests and the CloudFormation stack: the FIS experiment template that starts the fleet
runbook, the EventBridge Scheduler schedule that starts the experiment, and the IAM roles."""

import json
import math
from typing import Any, Dict, Mapping

from ..iam import policy
from .plan import ExportRefused, Plan

__all__ = ["DEFAULT_SCHEDULE", "arns_of", "experiment_template", "schedule_request", "stack_template"]

SCHEDULER_FIS_TARGET = "arn:aws:scheduler:::aws-sdk:fis:startExperiment"
# Seconds an instance's execution takes besides its three waits of up to batch_slo (the dump check
# in the new boot, the two status checks): the checks before the NMI.
STEP_MARGIN = 600
FIS_MAX_DURATION_MINUTES = 12 * 60
DEFAULT_SCHEDULE = "cron(0 6 ? * TUE *)"


def _max_duration(p: Plan) -> str:
    width = p.max_instances if p.concurrency.endswith("%") else int(p.concurrency)
    waves = math.ceil(p.max_instances / max(1, min(width, p.max_instances)))
    minutes = math.ceil(waves * (3 * p.batch_slo + STEP_MARGIN) / 60)
    if minutes > FIS_MAX_DURATION_MINUTES:
        raise ExportRefused(
            f"{waves} rounds of up to {3 * p.batch_slo + STEP_MARGIN} s need {minutes} minutes, more than "
            f"FIS's {FIS_MAX_DURATION_MINUTES}: lower max_instances or batch_slo, or raise batch_size"
        )
    return f"PT{minutes}M"


def arns_of(p: Plan, region: str, account: str) -> Dict[str, str]:
    base = f"arn:aws:%s:{region}:{account}:%s"
    return {
        "fleet_document": base % ("ssm", f"document/{p.name('fleet')}"),
        "automation_role": f"arn:aws:iam::{account}:role/{p.name('automation')}",
        "fis_role": f"arn:aws:iam::{account}:role/{p.name('fis')}",
        "scheduler_role": f"arn:aws:iam::{account}:role/{p.name('scheduler')}",
        **{f"alarm:{n}": arn or base % ("cloudwatch", f"alarm:{n}") for n, arn in p.alarms.items()},
    }


def experiment_template(p: Plan, arns: Mapping[str, str]) -> Dict[str, Any]:
    stops = [{"source": "aws:cloudwatch:alarm", "value": arns[f"alarm:{n}"]} for n in p.alarms]
    return {
        "description": f"chaosec2panic: {p.title}"[:512],
        "targets": {},
        "actions": {
            "SendNmiRunbook": {
                "actionId": "aws:ssm:start-automation-execution",
                "description": f"runs {p.name('fleet')}",
                "parameters": {
                    "documentArn": arns["fleet_document"],
                    "documentParameters": json.dumps({"AutomationAssumeRole": arns["automation_role"]}),
                    "maxDuration": _max_duration(p),
                },
            }
        },
        "stopConditions": stops or [{"source": "none"}],
        "roleArn": arns["fis_role"],
        "tags": {"Name": p.name("experiment"), "chaosec2panic": p.slug},
    }


def schedule_request(p: Plan, arns: Mapping[str, str], template_id: str) -> Dict[str, Any]:
    start = {"experimentTemplateId": template_id, "clientToken": "<aws.scheduler.execution-id>"}
    return {
        "Name": p.name("schedule"),
        "Description": f"starts the FIS experiment of {p.slug}",
        "ScheduleExpression": DEFAULT_SCHEDULE,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "DISABLED",
        "Target": {
            "Arn": SCHEDULER_FIS_TARGET,
            "RoleArn": arns["scheduler_role"],
            "Input": json.dumps(start),
        },
    }


def _sub(text: str) -> Dict[str, str]:
    return {"Fn::Sub": text}


def _role(name: str, service: str, policies: Dict[str, Any]) -> Dict[str, Any]:
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "RoleName": name,
            "AssumeRolePolicyDocument": trust,
            "Policies": [{"PolicyName": k, "PolicyDocument": v} for k, v in policies.items()],
        },
    }


def _allow(*statements: Dict[str, Any]) -> Dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", **s} for s in statements]}


def stack_template(
    p: Plan, runbook: Dict[str, Any], fleet: Dict[str, Any], template: Dict[str, Any]
) -> Dict[str, Any]:
    ssm = "arn:aws:ssm:${AWS::Region}:${AWS::AccountId}"
    automation_role = "arn:aws:iam::${AWS::AccountId}:role/" + p.name("automation")
    executions = _sub(f"{ssm}:automation-execution/*")

    def start(document: str) -> Dict[str, Any]:
        return {
            "Action": ["ssm:StartAutomationExecution"],
            "Resource": [
                _sub(f"{ssm}:document/{document}"),
                _sub(f"{ssm}:automation-definition/{document}:*"),
                executions,
            ],
        }

    pass_role = {
        "Action": ["iam:PassRole"],
        "Resource": [_sub(automation_role)],
        "Condition": {"StringEquals": {"iam:PassedToService": "ssm.amazonaws.com"}},
    }
    action = template["actions"]["SendNmiRunbook"]
    fis_template = {
        "Description": template["description"],
        "RoleArn": {"Fn::GetAtt": ["FisRole", "Arn"]},
        "Targets": {},
        "Actions": {
            "SendNmiRunbook": {
                "ActionId": action["actionId"],
                "Description": action["description"],
                "Parameters": {
                    "documentArn": _sub(f"{ssm}:document/${{FleetRunbook}}"),
                    "documentParameters": _sub(json.dumps({"AutomationAssumeRole": "${AutomationRole.Arn}"})),
                    "maxDuration": action["parameters"]["maxDuration"],
                },
            }
        },
        "StopConditions": [
            {
                "Source": "aws:cloudwatch:alarm",
                "Value": arn or _sub(f"arn:aws:cloudwatch:${{AWS::Region}}:${{AWS::AccountId}}:alarm:{n}"),
            }
            for n, arn in p.alarms.items()
        ]
        or [{"Source": "none"}],
        "Tags": template["tags"],
    }
    start_input = json.dumps(
        {"experimentTemplateId": "${ExperimentTemplate}", "clientToken": "<aws.scheduler.execution-id>"}
    )
    resources = {
        "AutomationRole": _role(
            p.name("automation"),
            "ssm.amazonaws.com",
            {
                "send-nmi-guarded": policy(["send_nmi", "crash_dumps"], p.opt_in),
                "run-per-instance-runbook": _allow(
                    start(p.name("instance")),
                    {"Action": ["ssm:GetAutomationExecution"], "Resource": [executions]},
                    pass_role,
                ),
            },
        ),
        "FisRole": _role(
            p.name("fis"),
            "fis.amazonaws.com",
            {
                "start-fleet-runbook": _allow(
                    start(p.name("fleet")),
                    {
                        "Action": ["ssm:GetAutomationExecution", "ssm:StopAutomationExecution"],
                        "Resource": [executions],
                    },
                    pass_role,
                )
            },
        ),
        "SchedulerRole": _role(
            p.name("scheduler"),
            "scheduler.amazonaws.com",
            {
                "start-experiment": _allow(
                    {
                        "Action": ["fis:StartExperiment"],
                        "Resource": [
                            _sub(
                                "arn:aws:fis:${AWS::Region}:${AWS::AccountId}:experiment-template/${ExperimentTemplate}"
                            ),
                            _sub("arn:aws:fis:${AWS::Region}:${AWS::AccountId}:experiment/*"),
                        ],
                    },
                )
            },
        ),
        "InstanceRunbook": {
            "Type": "AWS::SSM::Document",
            "Properties": {"Name": p.name("instance"), "DocumentType": "Automation", "Content": runbook},
        },
        "FleetRunbook": {
            "Type": "AWS::SSM::Document",
            "DependsOn": "InstanceRunbook",
            "Properties": {"Name": p.name("fleet"), "DocumentType": "Automation", "Content": fleet},
        },
        "ExperimentTemplate": {"Type": "AWS::FIS::ExperimentTemplate", "Properties": fis_template},
        "Schedule": {
            "Type": "AWS::Scheduler::Schedule",
            "Properties": {
                "Name": p.name("schedule"),
                "Description": f"starts the FIS experiment of {p.slug}",
                "ScheduleExpression": {"Ref": "ScheduleExpression"},
                "State": {"Ref": "ScheduleState"},
                "FlexibleTimeWindow": {"Mode": "OFF"},
                "Target": {
                    "Arn": SCHEDULER_FIS_TARGET,
                    "RoleArn": {"Fn::GetAtt": ["SchedulerRole", "Arn"]},
                    "Input": _sub(start_input),
                },
            },
        },
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"chaosec2panic export of {p.slug}: runbooks, FIS template, schedule, roles",
        "Parameters": {
            "ScheduleExpression": {
                "Type": "String",
                "Default": DEFAULT_SCHEDULE,
                "Description": "when EventBridge Scheduler starts the experiment",
            },
            "ScheduleState": {
                "Type": "String",
                "Default": "DISABLED",
                "AllowedValues": ["ENABLED", "DISABLED"],
                "Description": "the schedule is created DISABLED: enable it once a manual run passed",
            },
        },
        "Resources": resources,
        "Outputs": {
            "ExperimentTemplateId": {"Value": {"Ref": "ExperimentTemplate"}},
            "InstanceRunbook": {"Value": {"Ref": "InstanceRunbook"}},
            "FleetRunbook": {"Value": {"Ref": "FleetRunbook"}},
        },
    }
