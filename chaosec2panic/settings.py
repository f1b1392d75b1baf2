"""The extension's configuration keys, read and checked in one place.

| key | meaning | default |
| --- | --- | --- |
| ``chaosec2panic_opt_in_tag_key`` / ``_value`` | the tag a target must carry | ``chaos:nmi=allowed`` |
| ``chaosec2panic_ledger_path`` | the ledger file (not ``*.lock``, ``*.tmp``) | see below |
| ``chaosec2panic_ledger_table`` | a DynamoDB table, the ledger shared across machines | see below |
| ``chaosec2panic_ledger_ttl_days`` | days the DynamoDB ledger keeps an entry (its TTL) | 90 |
| ``chaosec2panic_poll_interval`` | seconds between looks while waiting | 5 |
| ``chaosec2panic_retry_attempts`` | attempts of a throttled call | 5 |
| ``chaosec2panic_retry_base_delay`` | the n-th retry waits at random up to this x 2^n | 0.5 |
| ``chaosec2panic_stop_alarms`` | alarms that stop the NMI unless OK: ``names``, ``arns``, ``tags`` | none |
| ``chaosec2panic_stop_alarms_insufficient_data_ok`` | stop alarm names allowed INSUFFICIENT_DATA | none |

The ledger is ``$CHAOSEC2PANIC_LEDGER`` when the key is not set, else
``$XDG_STATE_HOME/chaosec2panic/ledger.json``
(``~/.local/state/chaosec2panic/ledger.json``): private to the user (0600, in a 0700
directory), never a shared directory such as /tmp. The DynamoDB table (made by
``chaosec2panic ledger create-table``, in the run's AWS region) is
``$CHAOSEC2PANIC_LEDGER_TABLE`` when its key is not set; when either names one, it is the
ledger and the file is not. A stop alarm in INSUFFICIENT_DATA stops the NMI like one in ALARM
(its metric is not reported, as when the service is too broken to report it), unless it is
named in ``chaosec2panic_stop_alarms_insufficient_data_ok``: for an alarm on a metric reported
only when something fails.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Tuple

from chaoslib.types import Configuration

from .aws import RetryPolicy
from .errors import InvalidRequest

__all__ = ["Settings", "settings"]


@dataclass(frozen=True)
class Settings:
    opt_in_key: str
    opt_in_value: str
    ledger_path: Path
    ledger_table: str
    ledger_ttl_days: float
    poll_interval: float
    retry_attempts: int
    retry_base_delay: float
    insufficient_data_ok: Tuple[str, ...]

    def retry(self) -> RetryPolicy:
        return RetryPolicy(self.retry_attempts, self.retry_base_delay)


def _number(configuration: Configuration, key: str, default: float, minimum: float) -> float:
    raw: Any = configuration.get(key, default)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InvalidRequest(f"configuration {key} must be a number, got {raw!r}") from None
    if value < minimum:
        raise InvalidRequest(f"configuration {key} must be >= {minimum}, got {raw!r}")
    return value


def _ledger_path(configuration: Configuration) -> Path:
    if configuration.get("chaosec2panic_ledger_path"):
        return Path(str(configuration["chaosec2panic_ledger_path"])).expanduser()
    if os.environ.get("CHAOSEC2PANIC_LEDGER"):
        return Path(os.environ["CHAOSEC2PANIC_LEDGER"]).expanduser()
    state = Path(os.environ.get("XDG_STATE_HOME", ""))
    if not state.is_absolute():  # the XDG base directory spec: a relative path is to be ignored
        state = Path.home() / ".local" / "state"
    return state / "chaosec2panic" / "ledger.json"


def _names(configuration: Configuration, key: str) -> Tuple[str, ...]:
    raw: Any = configuration.get(key)
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw):
        raise InvalidRequest(f"configuration {key} must be a list of alarm names, got {raw!r}")
    return tuple(n.split(":alarm:", 1)[-1] for n in raw)


def settings(configuration: Configuration | None) -> Settings:
    """The extension's settings from a Chaos Toolkit configuration; bad values are refused."""
    configuration = configuration or {}
    return Settings(
        opt_in_key=str(configuration.get("chaosec2panic_opt_in_tag_key", "chaos:nmi")),
        opt_in_value=str(configuration.get("chaosec2panic_opt_in_tag_value", "allowed")),
        ledger_path=_ledger_path(configuration),
        ledger_table=str(
            configuration.get("chaosec2panic_ledger_table")
            or os.environ.get("CHAOSEC2PANIC_LEDGER_TABLE", "")
        ),
        ledger_ttl_days=_number(configuration, "chaosec2panic_ledger_ttl_days", 90.0, 1.0),
        poll_interval=_number(configuration, "chaosec2panic_poll_interval", 5.0, 0.05),
        retry_attempts=int(_number(configuration, "chaosec2panic_retry_attempts", 5, 1)),
        retry_base_delay=_number(configuration, "chaosec2panic_retry_base_delay", 0.5, 0.0),
        insufficient_data_ok=_names(configuration, "chaosec2panic_stop_alarms_insufficient_data_ok"),
    )
