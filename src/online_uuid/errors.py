"""Error hierarchy: every error the tool raises on purpose carries its CLI exit code."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .catalog import Blocker

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_REFUSED = 2
EXIT_LOCK_TIMEOUT = 3


class OnlineUuidError(Exception):
    """Base class; the message is one line naming the object and the fix."""

    exit_code = EXIT_FAILURE


class RefusedError(OnlineUuidError):
    """Bad input or a precondition that does not hold; nothing was changed."""

    exit_code = EXIT_REFUSED


class PlanError(RefusedError):
    """The schema cannot be migrated safely as asked (found at plan time)."""


class StateError(RefusedError):
    """The migration state does not allow this command now (wrong phase, busy, too new)."""


class ConcurrentRunError(StateError):
    """Another online-uuid process holds this migration's advisory lock."""


class LockTimeoutError(OnlineUuidError):
    """Gave up waiting for a lock; `blockers` names who held it."""

    exit_code = EXIT_LOCK_TIMEOUT

    def __init__(self, message: str, blockers: list[Blocker] | None = None) -> None:
        super().__init__(message)
        self.blockers = blockers or []


class VerifyError(OnlineUuidError):
    """Shadow data does not match; `report` holds the details."""

    def __init__(self, message: str, report: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class BackfillError(OnlineUuidError):
    """The backfill stopped on a non-transient error; state is intact and it can resume."""


class TriggersChangedError(OnlineUuidError):
    """A tool trigger was disabled or altered between verify and the swap: rows may be unchecked."""
