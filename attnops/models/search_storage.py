"""The study's storage: Optuna's RDB storage, made safe for several workers on one SQLite file.

A waiting trial (the spec's own configuration, or a killed trial queued again) is claimed by
moving it from WAITING to RUNNING after checking its state. PostgreSQL and MySQL lock the row
for that (SELECT ... FOR UPDATE); SQLite ignores the lock, so two workers (threads of one
flow, or processes) could both read WAITING, both claim the trial, and the second to finish
fails with "Cannot tell a COMPLETE trial" after training it a second time. Claims on SQLite
therefore take an exclusive file lock beside the database, across threads and processes.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from optuna.storages import RDBStorage
from optuna.trial import TrialState


class ClaimSafeStorage(RDBStorage):
    """`RDBStorage` whose WAITING -> RUNNING claims are serialised on SQLite."""

    def __init__(self, url: str, **kwargs) -> None:
        super().__init__(url, **kwargs)
        database = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        self._claim_lock = None if database is None else Path(f"{database}.claim.lock")

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        if self._claim_lock is None or state != TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        # A new open file description per call: flock then excludes other threads too.
        with open(self._claim_lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return super().set_trial_state_values(trial_id, state, values)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
