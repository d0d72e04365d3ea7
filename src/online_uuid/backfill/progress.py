"""Backfill progress for humans: rich bars on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

log = structlog.get_logger("online_uuid.progress")

LOG_EVERY_S = 5.0


@dataclass
class JobProgress:
    """A snapshot of one job: fraction in [0, 1], rows, recent rate and ETA."""

    job_id: str
    label: str
    fraction: float = 0.0
    rows_done: int = 0
    rows_remaining: int = 0
    rate: float | None = None
    eta_s: float | None = None
    done: bool = False


class Progress(Protocol):
    """What the backfill reports to; implementations must be thread-safe."""

    def job(self, snap: JobProgress) -> None: ...

    def note(self, message: str, **fields: Any) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    def job(self, snap: JobProgress) -> None:
        pass

    def note(self, message: str, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _fmt_eta(eta: float | None) -> str:
    if eta is None:
        return "--:--"
    eta = int(eta)
    return f"{eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}"


class LogProgress:
    """Structured log lines: one per job every LOG_EVERY_S, and one when a job ends."""

    def __init__(self, every_s: float = LOG_EVERY_S, clock: Any = time.monotonic) -> None:
        self._every = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def job(self, snap: JobProgress) -> None:
        with self._lock:
            now = self._clock()
            if not snap.done and now - self._last.get(snap.job_id, float("-inf")) < self._every:
                return
            self._last[snap.job_id] = now
        log.info(
            "backfill finished" if snap.done else "backfill progress",
            job=snap.label,
            percent=round(100 * min(1.0, snap.fraction), 1),
            rows_done=snap.rows_done,
            rows_remaining=snap.rows_remaining,
            rows_per_s=round(snap.rate or 0.0, 1),
            eta=_fmt_eta(snap.eta_s),
        )

    def note(self, message: str, **fields: Any) -> None:
        log.info(message, **fields)

    def close(self) -> None:
        pass


class RichProgress:
    """One rich bar per job (percent from key position, never above 100%), rows/s and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[rows]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._bars.start()

    def job(self, snap: JobProgress) -> None:
        with self._lock:
            task = self._tasks.get(snap.job_id)
            if task is None:
                task = self._bars.add_task(snap.label, total=1000, rows="", rate="", eta="")
                self._tasks[snap.job_id] = task
            done = 1000 if snap.done else int(1000 * min(1.0, max(0.0, snap.fraction)))
            self._bars.update(
                task,
                completed=done,
                rows=f"{snap.rows_done:,} rows",
                rate=f"{snap.rate or 0:,.0f} rows/s",
                eta=_fmt_eta(0 if snap.done else snap.eta_s),
            )

    def note(self, message: str, **fields: Any) -> None:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        with self._lock:
            self._bars.console.log(f"{message} {extra}".rstrip())

    def close(self) -> None:
        with self._lock:
            self._bars.stop()


def make_progress(interactive: bool | None = None) -> Progress:
    """Rich bars when stderr is a terminal (or `interactive`), else log lines."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    return RichProgress() if interactive else LogProgress()
