"""What was injected, when, and what came of it: shared by the activities of a run and persisted.

- :mod:`.entries`: :class:`Injection` (one NMI request and its aftermath), the checks every
  entry read passes (:func:`entry_problem`), and :class:`Ledger`, the interface the activities
  use (``entries``, ``admit``, ``record``, ``update``, ``latest``, ``misses``, ``unrecovered``,
  ``where``); :meth:`Ledger.of` picks the backend: the DynamoDB table named by
  ``chaosec2panic_ledger_table`` (else ``$CHAOSEC2PANIC_LEDGER_TABLE``), else the file.
- :mod:`.file`: the ledger as a JSON file under a lock, for runs on one machine, and
  :class:`JsonRecord`, the atomic JSON file it is made of.
- :mod:`.dynamodb`: the ledger as a DynamoDB table, shared by runs on any number of machines.

Entries of the current process share one ``RUN_ID``.
"""

from .entries import OUTCOMES, RUN_ID, Injection, Ledger, LedgerError, entry_problem, unrecovered
from .file import FileLedger, JsonRecord

__all__ = [
    "OUTCOMES",
    "RUN_ID",
    "FileLedger",
    "Injection",
    "JsonRecord",
    "Ledger",
    "LedgerError",
    "entry_problem",
    "unrecovered",
]
