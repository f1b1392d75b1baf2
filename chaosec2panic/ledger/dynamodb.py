"""The ledger as a DynamoDB table: one ledger shared by runners on any number of machines.

The table (``chaosec2panic ledger create-table NAME``) has the key ``ledger`` (string, always
``injections``) and ``seq`` (number): every item of the ledger is in one partition, so a
strongly consistent Query reads all of it in the order it was written. The item at ``seq`` 0
is the head: its ``head`` attribute is the ledger's version, a number that every write raises.
Each entry is an item of its own at ``seq`` 1, 2, ...: its :class:`Injection` as JSON text in
``entry`` (checked on read like the file's entries: a wrong item is an error naming the table
and its ``seq``, and nothing is written over it) and ``expires_at``, the epoch second of
``sent_at`` plus ``chaosec2panic_ledger_ttl_days`` (90), after which DynamoDB's TTL removes it.

Why a head item: :meth:`DynamoDbLedger.admit` must decide on everything the ledger holds and
append before anyone else decides, on every machine. It reads the head, then the entries, lets
``decide`` choose, and writes in one TransactWriteItems the head raised by the number of new
entries (on condition that it still holds the version read) and each new entry at the next
``seq`` (on condition that no item is there). Any write in between, by any process, changed the
head, so the transaction is cancelled as a whole and ``admit`` reads and decides again, up to
``ATTEMPTS`` times; then it fails, having written nothing. :meth:`DynamoDbLedger.update` raises
the head too, so a decision never stands on an entry that changed under it, and changes each
entry on condition that it is still the one read (else it reads and changes again): updates
are idempotent, so doing one again is harmless.

A transaction holds at most 100 actions (the head and 99 entries): ``admit`` refuses, before
writing anything, to add more than ``MAX_NEW`` entries at once, rather than split them over
transactions another runner could decide between (a rollout's batches are each admitted
apart, so a ``batch_size`` of at most 99 is what that asks for). Updates of more entries are
split into transactions of 99: each change stands alone (a settle, a recovery), and one not
yet made leaves its entry counting as a hit, which errs on the side of refusing. Each
transaction carries a ClientRequestToken, so botocore's retry of one whose answer was lost is
not applied twice. Reads are strongly consistent, and a Query's pages are all read.
"""

import json
import random
import time
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any, Callable, Dict, List, Mapping, Tuple

from botocore.exceptions import BotoCoreError, ClientError
from chaoslib.types import Configuration

from ..aws import client, error_code, paginate
from .entries import Injection, Ledger, LedgerError, entry_problem

__all__ = ["ATTEMPTS", "MAX_NEW", "TTL_ATTRIBUTE", "DynamoDbLedger", "create_table"]

PARTITION = "injections"  # the value of ``ledger`` on every item of a ledger
HEAD = 0  # the ``seq`` of the head item
MAX_NEW = 99  # TransactWriteItems takes at most 100 actions: the head's and 99 more
ATTEMPTS = 20  # reads and decisions of one admit or update lost to other writers before it fails
TTL_ATTRIBUTE = "expires_at"
CONFLICTS = frozenset({"ConditionalCheckFailed", "TransactionConflict"})
ENTRY_ATTRIBUTES = frozenset({"ledger", "seq", "entry", TTL_ATTRIBUTE})


class _Lost(Exception):
    """Another writer changed the ledger between the read and the write: read and decide again."""


class DynamoDbLedger(Ledger):
    """The injections recorded in one DynamoDB table (``dynamodb`` a boto3 client of its region)."""

    def __init__(self, table: str, dynamodb: Any, ttl_days: float = 90.0):
        self.table = table
        self.where = f"dynamodb table {table} in {dynamodb.meta.region_name}"
        self._db = dynamodb
        self._ttl_s = int(ttl_days * 86400)

    @classmethod
    def of(cls, table: str, configuration: Configuration, ttl_days: float) -> "DynamoDbLedger":
        return cls(table, client("dynamodb", configuration, None), ttl_days)

    def _error(self, what: str) -> LedgerError:
        return LedgerError(f"the ledger ({self.where}) {what}")

    def _call(self, operation: str, **params: Any) -> Any:
        """``operation`` on the table; an AWS error is a :class:`LedgerError` saying what to do."""
        try:
            return getattr(self._db, operation)(TableName=self.table, **params)
        except ClientError as exc:
            raise self._aws_error(exc) from exc
        except BotoCoreError as exc:
            raise self._error(f"cannot be reached: {exc}. Nothing was changed.") from exc

    def _aws_error(self, exc: ClientError) -> LedgerError:
        code = error_code(exc)
        if code == "ResourceNotFoundException":
            return self._error(
                f"does not exist: make it with `chaosec2panic ledger create-table {self.table} --region "
                f"{self._db.meta.region_name}`, or name another. Nothing was changed."
            )
        return self._error(f"refused: {code}: {exc.response.get('Error', {}).get('Message', exc)}")

    # Reading -----------------------------------------------------------------------------------
    def _parse(self, item: Dict[str, Any]) -> Tuple[Injection | None, str | None]:
        unknown = sorted(set(item) - ENTRY_ATTRIBUTES)
        if unknown:
            return None, f"has unknown attributes {unknown}"
        text = item.get("entry", {}).get("S")
        if text is None:
            return None, "has no entry (a string of JSON)"
        try:
            entry = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return None, f"entry is not readable JSON: {exc}"
        problem = entry_problem(entry)
        return (None, f"entry {problem}") if problem else (Injection(**entry), None)

    def _read(self) -> Tuple[int, List[Tuple[int, str, Injection]]]:
        """The head's version, then every entry as (seq, its JSON text, the entry)."""
        head = self._call("get_item", Key=_key(HEAD), ConsistentRead=True).get("Item")
        version = 0
        if head is not None:
            number = head.get("head", {}).get("N")
            if number is None or set(head) != {"ledger", "seq", "head"} or not number.isdigit():
                raise self._error(
                    f"holds a head item (seq {HEAD}) of the wrong shape: {sorted(head)}. It numbers the "
                    "ledger's versions: fix or delete it only with every runner stopped. Nothing was changed."
                )
            version = int(number)
        found: List[Tuple[int, str, Injection]] = []
        try:
            items = list(
                paginate(
                    self._db,
                    "query",
                    "Items",
                    TableName=self.table,
                    ConsistentRead=True,
                    KeyConditionExpression="#l = :l AND #s > :head",
                    ExpressionAttributeNames={"#l": "ledger", "#s": "seq"},
                    ExpressionAttributeValues={":l": {"S": PARTITION}, ":head": {"N": str(HEAD)}},
                )
            )
        except ClientError as exc:
            raise self._aws_error(exc) from exc
        for item in items:
            seq = int(item["seq"]["N"])
            entry, problem = self._parse(item)
            if problem or entry is None:
                raise self._error(
                    f"holds an item of the wrong shape at seq {seq}: it {problem}. It decides what may be "
                    "hit: fix or delete that item. Nothing was changed."
                )
            found.append((seq, item["entry"]["S"], entry))
        return version, found

    def entries(self) -> List[Injection]:
        return [e for _, _, e in self._read()[1]]

    # Writing -----------------------------------------------------------------------------------
    def _transact(self, actions: List[Dict[str, Any]], appending: bool) -> None:
        """Write ``actions`` (on this table, the head's first) all or none; :class:`_Lost` when a
        condition failed because another writer came first. ``appending``: the actions after the
        head's put new entries, so one failing while the head's holds is a head left behind."""
        for action in actions:
            next(iter(action.values()))["TableName"] = self.table
        try:
            self._db.transact_write_items(TransactItems=actions, ClientRequestToken=uuid.uuid4().hex)
        except ClientError as exc:
            code = error_code(exc)
            reasons = [r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])]
            if code == "TransactionCanceledException" and {r for r in reasons if r != "None"} <= CONFLICTS:
                if appending and reasons and reasons[0] == "None" and "ConditionalCheckFailed" in reasons:
                    raise self._error(
                        "has entries past its head item (seq 0): was the head deleted or edited? Put it "
                        "back to the highest seq with every runner stopped. Nothing was written."
                    ) from exc
                raise _Lost() from exc
            if code in ("TransactionConflictException", "TransactionInProgressException"):
                raise _Lost() from exc
            raise self._aws_error(exc) from exc
        except BotoCoreError as exc:
            raise self._error(f"cannot be reached: {exc}. Whether it was written is unknown.") from exc

    def _retrying(self, attempt: Callable[[], Any], what: str) -> Any:
        for n in range(ATTEMPTS):
            try:
                return attempt()
            except _Lost:
                time.sleep(random.uniform(0, min(0.5, 0.02 * 2**n)))
        raise self._error(
            f"changed under each of {ATTEMPTS} attempts to {what} (other runners writing it all the "
            "while); run again."
        )

    def admit(self, decide: Callable[[List[Injection]], List[Injection]]) -> List[Injection]:
        """``decide`` reads every entry and returns those to append (or raises, and nothing is
        written); they are written with the head, in one transaction that fails if anyone wrote
        since the read, and then ``decide`` runs again on what the ledger holds now."""

        def attempt() -> List[Injection]:
            version, found = self._read()
            added = decide([e for _, _, e in found])
            if len(added) > MAX_NEW:
                raise self._error(
                    f"admits at most {MAX_NEW} entries at once (one DynamoDB transaction), not "
                    f"{len(added)}: roll out in batches (batch_size <= {MAX_NEW}). Nothing was written."
                )
            if not added:
                return added
            head: Dict[str, Any] = {
                "Key": _key(HEAD),
                "UpdateExpression": "SET #h = :new",
                "ExpressionAttributeNames": {"#h": "head"},
                "ExpressionAttributeValues": {":new": {"N": str(version + len(added))}},
            }
            if version:
                head["ConditionExpression"] = "#h = :read"
                head["ExpressionAttributeValues"][":read"] = {"N": str(version)}
            else:
                head["ConditionExpression"] = "attribute_not_exists(#h)"
            puts = [
                {
                    "Put": {
                        "Item": {**_key(version + n), **self._body(e)},
                        "ConditionExpression": "attribute_not_exists(#s)",
                        "ExpressionAttributeNames": {"#s": "seq"},
                    }
                }
                for n, e in enumerate(added, 1)
            ]
            self._transact([{"Update": head}, *puts], appending=True)
            return added

        return self._retrying(attempt, "admit new entries: none was written")

    def update(self, changes: Mapping[Tuple[str, str], Mapping[str, Any]]) -> None:
        """Change the entries keyed ``(instance_id, sent_at)``, each on condition that it is still
        the one read (in transactions of at most 99, each raising the head)."""
        if not changes:
            return

        def attempt() -> None:
            _, found = self._read()
            writes = []
            for seq, text, e in found:
                change = changes.get((e.instance_id, e.sent_at))
                new = json.dumps(replace(e, **change).to_dict(), sort_keys=True) if change else text
                if new != text:
                    writes.append(
                        {
                            "Update": {
                                "Key": _key(seq),
                                "UpdateExpression": "SET #e = :new",
                                "ConditionExpression": "#e = :read",
                                "ExpressionAttributeNames": {"#e": "entry"},
                                "ExpressionAttributeValues": {":new": {"S": new}, ":read": {"S": text}},
                            }
                        }
                    )
            for start in range(0, len(writes), MAX_NEW):
                raise_head = {
                    "Update": {
                        "Key": _key(HEAD),
                        "UpdateExpression": "ADD #h :one",
                        "ExpressionAttributeNames": {"#h": "head"},
                        "ExpressionAttributeValues": {":one": {"N": "1"}},
                    }
                }
                self._transact([raise_head, *writes[start : start + MAX_NEW]], appending=False)

        self._retrying(attempt, "update entries: some may be left as they were")

    def _body(self, entry: Injection) -> Dict[str, Any]:
        sent = datetime.fromisoformat(entry.sent_at.replace("Z", "+00:00")).timestamp()
        return {
            "entry": {"S": json.dumps(entry.to_dict(), sort_keys=True)},
            TTL_ATTRIBUTE: {"N": str(int(sent) + self._ttl_s)},
        }


def _key(seq: int) -> Dict[str, Any]:
    return {"ledger": {"S": PARTITION}, "seq": {"N": str(seq)}}


def create_table(dynamodb: Any, table: str) -> str:
    """Make ``table`` a ledger (on-demand, TTL on ``expires_at``) unless it is one already; what was done."""
    try:
        dynamodb.create_table(
            TableName=table,
            AttributeDefinitions=[
                {"AttributeName": "ledger", "AttributeType": "S"},
                {"AttributeName": "seq", "AttributeType": "N"},
            ],
            KeySchema=[
                {"AttributeName": "ledger", "KeyType": "HASH"},
                {"AttributeName": "seq", "KeyType": "RANGE"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        made = "made"
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":
            raise
        made = "already there"
    dynamodb.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 2, "MaxAttempts": 60})
    keys = dynamodb.describe_table(TableName=table)["Table"]["KeySchema"]
    if sorted((k["AttributeName"], k["KeyType"]) for k in keys) != [("ledger", "HASH"), ("seq", "RANGE")]:
        raise LedgerError(
            f"dynamodb table {table} exists with the key {keys}, not ledger (HASH) and seq (RANGE): it "
            "is no ledger. Name another table."
        )
    ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        dynamodb.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
        )
    return f"dynamodb table {table} in {dynamodb.meta.region_name}: {made}, TTL on {TTL_ATTRIBUTE}"
