"""Latency budget: steers the backfill's rate so a canary's p99 stays within F x its idle baseline.

Pure logic with an injectable clock; `canary.py` feeds it latency samples and applies its rate.

The controller is AIMD with three refinements:

- every decision uses only samples taken since the previous decision, so a cut is never
  repeated on evidence that predates it (the usual cause of a rate collapsing to the floor);
- it steers on the 97th percentile of the beats, the window's and the idle baseline's alike,
  not on their 99th. A p99 of a window of 150 beats is its second slowest beat, so two stalls the
  backfill did not cause (a WAL flush queued behind another session's, a scheduler hiccup) read
  as a breach and cut the rate, and two in the idle window set a budget the backfill never
  reaches; the p97 is the 5th slowest. Both sides must be the same quantile: a window's plain p99
  against a lower bound of the idle one read over budget at no load and kept a real backfill at
  0.01 x the one-shot speed. Latency that grows with the backfill's load moves p97 and p99 alike,
  and the unit tests check the p99 that results;
- the cut is proportional to the overshoot (latency overhead grows with the share of time the
  backfill runs, so halving the overshoot roughly halves the rate), bounded to [0.5, 0.85];
- it starts slow (doubling from a low rate, like TCP's slow start) and, after a cut, grows by a
  fixed share of the rate it last had to leave; while the canary is far under budget (the load
  went away) it doubles again up to half the best rate it has held within budget, then grows
  by a quarter per step.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Clock = Callable[[], float]

REBASELINE_EVERY_S = 300.0  # the idle baseline is measured again this often...
REBASELINE_AT_FLOOR_S = 15.0  # ...or after this long near the floor (over budget at no load: stale?)
NEAR_FLOOR = 5.0  # "near the floor": under this many times the floor rate


TAIL = 0.97  # the quantile both sides are compared at; see the module's docstring


def quantile(values: Iterable[float], q: float) -> float:
    """Nearest-rank q-quantile of a non-empty collection."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("quantile of no samples")
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def p99(values: Iterable[float]) -> float:
    """Nearest-rank 99th percentile of a non-empty collection."""
    return quantile(values, 0.99)


def tail(values: Iterable[float]) -> float:
    """The latency the controller steers on: the TAIL quantile (of 150 beats, the 5th slowest)."""
    return quantile(values, TAIL)


@dataclass
class Baseline:
    """The canary's idle tail latency (`tail`), pooled over the most recent idle samples."""

    max_samples: int = 600
    min_samples: int = 100
    samples: deque[float] = field(default_factory=deque)
    fresh: int = 0  # idle samples since the last `begin()`

    def begin(self) -> None:
        """A new idle window starts (a baseline hold, a pause)."""
        self.fresh = 0

    def add(self, latency_s: float) -> None:
        self.samples.append(latency_s)
        self.fresh += 1
        while len(self.samples) > self.max_samples:
            self.samples.popleft()

    @property
    def value(self) -> float | None:
        return tail(self.samples) if len(self.samples) >= self.min_samples else None


@dataclass
class Step:
    """One decision: what the canary showed and the rate chosen."""

    p99_s: float
    ratio: float
    rate: float
    action: str  # "decrease", "slow_start", "increase", "hold"


class LatencyBudget:
    """Allowed rows/s such that the canary's p99 stays within `factor` x `baseline`.

    Feed it running samples with `add`, rows written with `add_rows`, and call `update` with the
    current baseline; it decides once at least `min_samples` samples and `min_interval_s` have
    passed since its last decision.
    """

    def __init__(
        self,
        factor: float,
        floor: float,
        initial: float,
        *,
        ceiling: float | None = None,
        min_samples: int = 150,
        min_interval_s: float = 2.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.factor, self.floor, self.ceiling = factor, floor, ceiling
        self.min_samples, self.min_interval_s, self.clock = min_samples, min_interval_s, clock
        self.rate = self._bound(initial)
        self.slow_start = True
        self.left_rate = self.rate  # the rate of the last cut: additive steps are a share of it
        self.good_rate = self.rate  # the highest rate seen within budget: recovery doubles up to half of it
        self.last: Step | None = None
        self.floor_since: float | None = None
        self._window: list[float] = []
        self._rows = 0
        self._since = clock()

    def _bound(self, rate: float) -> float:
        top = self.ceiling if self.ceiling and self.ceiling > 0 else float("inf")
        return max(self.floor, min(top, rate))

    def retune(self, factor: float, floor: float, ceiling: float | None) -> None:
        """Runtime changes of F, the floor or the user's own --max-rows-per-second."""
        self.factor, self.floor, self.ceiling = factor, floor, ceiling
        self.rate = self._bound(self.rate)

    def add(self, latency_s: float) -> None:
        """A canary sample taken while the backfill was running."""
        self._window.append(latency_s)

    def add_rows(self, rows: int) -> None:
        self._rows += rows

    def restart_window(self) -> None:
        """Forget samples and rows so far (after an idle hold: they describe no steady rate)."""
        self._window, self._rows, self._since = [], 0, self.clock()

    def current_p99(self) -> float | None:
        return p99(self._window) if self._window else None

    def due(self) -> bool:
        # Slow start only confirms that the canary is far from its budget: a third of the evidence.
        share = 3 if self.slow_start else 1
        enough = len(self._window) >= self.min_samples // share
        return enough and self.clock() - self._since >= self.min_interval_s / share

    def update(self, baseline_s: float | None) -> Step | None:
        """Decide on the samples since the last decision, if there are enough; the new Step."""
        if baseline_s is None or baseline_s <= 0 or not self.due():
            return None
        now = self.clock()
        achieved = self._rows / max(now - self._since, 1e-6)
        seen = tail(self._window)  # the baseline's estimator: the two compare like for like
        ratio = seen / baseline_s
        action = self._decide(ratio, achieved)
        self.restart_window()
        near = self.rate < NEAR_FLOOR * self.floor
        self.floor_since = (self.floor_since or now) if near else None
        self.last = Step(seen, ratio, self.rate, action)
        return self.last

    def _decide(self, ratio: float, achieved: float) -> str:
        f = self.factor
        if ratio > f:
            cut = min(0.85, max(0.5, 0.9 * (f - 1) / max(ratio - 1, 1e-9)))
            self.left_rate, self.slow_start = self.rate, False
            self.rate = self._bound(self.rate * cut)
            return "decrease"
        if ratio > 1 + 0.8 * (f - 1):  # close to the budget: stay, and leave slow start
            self.slow_start = False
            return "hold"
        self.good_rate = max(self.good_rate, self.rate)
        if self.slow_start or (ratio < 1 + 0.5 * (f - 1) and self.rate < self.good_rate / 2):
            grown = self.rate * 2.0
        elif ratio < 1 + 0.5 * (f - 1):  # far under budget: the load went away, recover fast
            grown = max(self.rate * 1.25, self.rate + 0.1 * self.left_rate)
        else:
            grown = self.rate + 0.1 * self.left_rate
        # Never run far ahead of what the backfill really managed (it may be slower than allowed).
        grown = min(grown, max(self.rate, 2.0 * achieved))
        self.rate = self._bound(grown)
        return "slow_start" if self.slow_start else "increase"

    def wants_baseline(self, last_baseline_at: float | None) -> bool:
        """True when the idle baseline should be measured (again) before going on.

        Near the floor the backfill barely loads the server: a canary still over budget there
        most likely means the application's own load moved, so the baseline is measured again.
        """
        now = self.clock()
        if last_baseline_at is None or now - last_baseline_at >= REBASELINE_EVERY_S:
            return True
        stuck = self.floor_since is not None and now - self.floor_since >= REBASELINE_AT_FLOOR_S
        return stuck and now - last_baseline_at >= REBASELINE_AT_FLOOR_S
