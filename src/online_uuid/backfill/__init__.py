"""The throttled, resumable backfill: keyset batches per shadow column, barrier, throttle, runtime control.

`run_backfill` (in `run`) is the entry point; the modules beside it each hold one concern:
`worker` (one job's batch loop), `batch` (one batch's SQL and cursor), `keyset` (batch bounds),
`ctid` (heap walk by block ranges, for tables with no integer key to walk),
`barrier` (waits out transactions older than the key backfill), `context` (sessions and reconnects),
`signals` (what the server says about load), `throttle` (pure pacing decisions), `control`
(pause/resume/throttle from another shell) and `progress` (bars and log lines).
"""

from .run import BackfillResult, run_backfill

__all__ = ["BackfillResult", "run_backfill"]
