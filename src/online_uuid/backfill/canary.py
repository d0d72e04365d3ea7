"""The latency guard: the canary's latencies turned into a rate limit for the workers.

With `--max-latency-impact F`, a process of its own (`beats.py`) runs, every `INTERVAL_S`, a read
of the migration's row and a committed write of its heartbeat row in the state schema, and reports
each beat's latency, counted from its scheduled start. Beats taken while no batch ran (for
`SETTLE_S`) teach the idle baseline; the others feed the `LatencyBudget`, whose rate the workers
then pace to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from ..metrics import Metrics
from ..settings import BackfillSettings
from .beats import INTERVAL_S
from .budget import Baseline, LatencyBudget, Step
from .throttle import Clock, Signals

log = structlog.get_logger("online_uuid.canary")

SETTLE_S = 1.0  # a beat counts as idle once no batch has run for this long
BASELINE_SAMPLES = 200  # idle beats each baseline measurement takes (4 s at 50 Hz)
INITIAL_RATE = 1000.0  # rows/s the budget starts from (it doubles while under budget)
DECISION_SAMPLES = 150  # the budget decides on at least this many fresh beats...
DECISION_MIN_S = 2.0  # ...and at least this often
RESTART_S = 1.0  # a beats process that ended unasked is started again after this long...
MAX_RESTART_S = 30.0  # ...or, if it keeps failing to start, at most this long
__all__ = ["INTERVAL_S", "LatencyGuard"]


class LatencyGuard:
    """Runs the canary while a latency budget is set and turns its samples into a rate limit."""

    def __init__(
        self,
        mid: str,
        dsn: str,
        metrics: Metrics,
        clock: Clock = time.monotonic,
    ) -> None:
        self.mid, self._dsn, self.metrics, self.clock = mid, dsn, metrics, clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self.baseline = Baseline()
        self.budget: LatencyBudget | None = None
        self.measuring = False  # holding the backfill to measure the idle baseline
        self.baseline_at: float | None = None
        self._inflight = 0
        self._last_busy = float("-inf")
        self._warned = float("-inf")

    # -- hooks for the workers ---------------------------------------------------------------

    def apply(self, eff: BackfillSettings) -> BackfillSettings:
        """The settings a batch runs with: the budget's rate as --max-rows-per-second when lower."""
        factor = eff.max_latency_impact or 0.0
        with self._lock:
            if factor <= 0:
                self.budget, self.measuring = None, False
                self.metrics.latency_budget.set(0)
                return eff
            floor = float(eff.min_batch_size)
            if self.budget is None:
                self.budget = LatencyBudget(
                    factor,
                    floor,
                    max(INITIAL_RATE, floor),
                    ceiling=eff.max_rows_per_second,
                    min_samples=DECISION_SAMPLES,
                    min_interval_s=DECISION_MIN_S,
                    clock=self.clock,
                )
            self.budget.retune(factor, floor, eff.max_rows_per_second)
            self.metrics.latency_budget.set(factor)
            if not self.measuring and self.budget.wants_baseline(self.baseline_at):
                self.measuring = True
                self.baseline.begin()
            rate = self.budget.rate
        self._ensure_thread()
        return dataclasses.replace(eff, max_rows_per_second=rate)

    def annotate(self, sig: Signals) -> None:
        """Mark the signals: a baseline hold, pacing by the budget, and the report for `status`."""
        with self._lock:
            if self.budget is None:
                return
            ceiling = self.budget.ceiling
            sig.latency_baseline = self.measuring
            sig.latency_bound = not ceiling or self.budget.rate < ceiling
            sig.latency_budget = self._report()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Around a batch or a VACUUM: canary beats meanwhile are not idle ones."""
        with self._lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                self._last_busy = self.clock()

    def add_rows(self, rows: int) -> None:
        with self._lock:
            if self.budget is not None:
                self.budget.add_rows(rows)

    # -- the canary thread ---------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="online-uuid-canary", daemon=True)
            self._thread.start()

    def _active(self) -> bool:
        with self._lock:
            return self.budget is not None

    def _loop(self) -> None:
        """Run the beats process while a budget is set, and feed its beats to `_sample`."""
        failures = 0
        while not self._stop.is_set():
            if not self._active():  # the budget was turned off at runtime: no process, no beats
                self._stop.wait(0.2)
                continue
            proc = self._proc = self._spawn()
            lines = 0
            try:
                assert proc.stdout is not None
                for line in proc.stdout:  # ends when the process does
                    lines += 1
                    self._on_line(line)
                    if self._stop.is_set() or not self._active():
                        break
            finally:
                self._end(proc)
            # A process that ended unasked is started again; one that could not even start (its
            # traceback went to stderr) ever less often, up to every half minute.
            failures = 0 if lines else failures + 1
            if not self._stop.is_set():
                self._stop.wait(min(MAX_RESTART_S, RESTART_S * 2**failures))

    def _spawn(self) -> subprocess.Popen[str]:
        """The beats' `main()` in a new interpreter that finds this very package; the DSN goes by stdin.

        `-c` and an import, not `-m`: the package imports the module first, and runpy warns then.
        """
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-c", "from online_uuid.backfill.beats import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": path},
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"dsn": self._dsn, "mid": self.mid}) + "\n")
        proc.stdin.flush()
        return proc

    @staticmethod
    def _end(proc: subprocess.Popen[str]) -> None:
        """Close its stdin (it stops beating and removes its heartbeat row), then wait for it."""
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def _on_line(self, line: str) -> None:
        try:
            doc = json.loads(line)
        except ValueError:
            return
        if "error" in doc:
            self._warn(str(doc["error"]))
        elif "due" in doc:
            self._sample(float(doc["s"]), self._idle_since(float(doc["due"])))

    def _warn(self, error: str) -> None:
        now = self.clock()
        if now - self._warned >= 60:
            self._warned = now
            log.warning("canary transaction failed; retrying", error=error)

    def _idle_since(self, due: float) -> bool:
        """A beat that began at `due` and has ended was idle: no batch from SETTLE_S before it on."""
        with self._lock:
            return self._inflight == 0 and due - self._last_busy >= SETTLE_S

    def _sample(self, latency_s: float, idle: bool) -> None:
        with self._lock:
            budget = self.budget
            if budget is None:
                return
            if idle:
                self.baseline.add(latency_s)
                if self.measuring and self.baseline.fresh >= BASELINE_SAMPLES:
                    self._baseline_done(budget)
                return
            budget.add(latency_s)
            step = budget.update(self.baseline.value)
        if step is not None:
            self._publish(step)

    def _baseline_done(self, budget: LatencyBudget) -> None:
        self.measuring = False
        self.baseline_at = self.clock()
        budget.restart_window()
        value = self.baseline.value
        if value is not None:
            self.metrics.canary_baseline.set(value)
            log.info("canary idle baseline measured", p99_ms=round(1000 * value, 3))

    def _publish(self, step: Step) -> None:
        m = self.metrics
        m.canary_p99.set(step.p99_s)
        m.latency_impact_ratio.set(step.ratio)
        m.allowed_rate.set(step.rate)
        log.debug(
            "latency budget step", ratio=round(step.ratio, 2), rate=round(step.rate), action=step.action
        )

    def _report(self) -> dict[str, Any]:
        """The budget's state for `status` (call with the lock held)."""
        assert self.budget is not None
        base, last = self.baseline.value, self.budget.last
        return {
            "factor": self.budget.factor,
            "baseline_p99_ms": None if base is None else round(1000 * base, 3),
            "canary_p99_ms": None if last is None else round(1000 * last.p99_s, 3),
            "ratio": None if last is None else round(last.ratio, 3),
            "allowed_rows_per_s": round(self.budget.rate, 1),
            "measuring_baseline": self.measuring,
        }

    def close(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):  # the beats stop, so the reader sees their output end
                proc.stdin.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
