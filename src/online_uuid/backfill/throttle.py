"""Pure pacing logic for the backfill (batch sizing, rate limit, throttle decisions); no I/O."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import RefusedError
from ..settings import BackfillSettings

Clock = Callable[[], float]

# Every reason the backfill can be held back for; each is a label of online_uuid_throttled.
REASONS = (
    "paused",
    "rate_limit",
    "replication_lag",
    "wal_rate",
    "blocking",
    "active_sessions",
    "throttle_query",
    "nice",
    "autovacuum",
    "latency_budget",
    "latency_baseline",
)
# Reasons that hold the next batch until the signal clears (the others only add a sleep).
HOLD_REASONS = frozenset(
    {
        "paused",
        "replication_lag",
        "wal_rate",
        "active_sessions",
        "throttle_query",
        "autovacuum",
        "latency_baseline",
    }
)
POLL_S = 1.0  # how often a held backfill looks at its signals again
BLOCKING_SLEEP_S = 0.5  # minimum pause after a batch that made another session wait
NOT_RUNTIME = frozenset({"workers"})  # fields a running backfill cannot change


@dataclass
class BatchSizer:
    """Adapts the rows per batch toward a target batch duration.

    Down fast (proportionally to the overshoot), up slowly (at most `max_growth` per batch), always
    within [min_size, max_size]. A small dead band keeps it from oscillating around the target.
    """

    target_s: float
    min_size: int
    max_size: int
    size: int
    max_growth: float = 1.5
    dead_band: float = 0.2

    def __post_init__(self) -> None:
        self.size = self._bound(self.size)

    def _bound(self, size: float) -> int:
        return max(self.min_size, min(self.max_size, int(size)))

    def observe(self, elapsed_s: float, full: bool = True) -> int:
        """Feed one batch's wall time; `full=False` (a short last batch) never grows the size."""
        elapsed_s = max(elapsed_s, 1e-4)
        ratio = self.target_s / elapsed_s
        if ratio < 1 - self.dead_band:
            self.size = self._bound(self.size * ratio)
        elif ratio > 1 + self.dead_band and full:
            self.size = self._bound(self.size * min(self.max_growth, ratio))
        return self.size

    def shrink(self, factor: float = 0.5) -> int:
        """After a lock conflict or a cancelled statement: back off at once."""
        self.size = self._bound(self.size * factor)
        return self.size

    def retune(self, target_s: float, min_size: int, max_size: int) -> None:
        """Apply runtime overrides of the target and bounds."""
        self.target_s, self.min_size, self.max_size = target_s, min_size, max_size
        self.size = self._bound(self.size)


@dataclass
class RatePacer:
    """Keeps the average rows/s at or below a limit; shared by all workers (thread-safe).

    Virtual-time scheduling: each batch books `rows / rate` seconds after the previous booking;
    the caller sleeps until its booking. Idle time earns at most `burst_s` of credit.
    """

    clock: Clock = time.monotonic
    burst_s: float = 0.25
    _next: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def book(self, rows: int, rate: float | None) -> float:
        """Seconds to sleep after a batch of `rows`; 0 when there is no limit."""
        with self._lock:
            now = self.clock()
            if not rate or rate <= 0:
                self._next = None
                return 0.0
            start = now if self._next is None else max(self._next, now - self.burst_s)
            self._next = start + rows / rate
            return max(0.0, self._next - now)


@dataclass
class RateMeter:
    """Recent rate (rows/s) as an exponentially weighted average over about `window_s`."""

    clock: Clock = time.monotonic
    window_s: float = 30.0
    rate: float | None = None
    _last: float | None = None

    def add(self, rows: int) -> float | None:
        now = self.clock()
        if self._last is None:
            self._last = now
            return self.rate
        dt = now - self._last
        if dt <= 0:
            return self.rate
        self._last = now
        sample = rows / dt
        weight = min(1.0, dt / self.window_s)
        self.rate = sample if self.rate is None else self.rate + weight * (sample - self.rate)
        return self.rate


@dataclass
class Signals:
    """What the server says right now; None means not measured (or not configured)."""

    replication_lag_s: dict[str, float] = field(default_factory=dict)
    wal_rate_bytes: float | None = None
    active_sessions: int | None = None
    throttle_query_value: float | None = None
    autovacuum: str | None = None  # what runs on the table, e.g. "VACUUM (to prevent wraparound)"
    blocked_sessions: int = 0  # sessions the last batch made wait
    paused: bool = False
    pacing_sleep_s: float = 0.0  # from the RatePacer
    last_batch_s: float = 0.0
    long_transactions: list[dict[str, Any]] = field(default_factory=list)
    latency_baseline: bool = False  # held while the canary's idle baseline is measured
    latency_bound: bool = False  # the pacing sleep comes from the latency budget's rate
    latency_budget: dict[str, Any] | None = None  # its state, for `status`


@dataclass
class Decision:
    """`hold`: don't start a batch, sleep and look again; else sleep `sleep_s` then go on."""

    throttled: bool
    reasons: list[str]
    sleep_s: float
    hold: bool
    details: dict[str, Any] = field(default_factory=dict)


def _signal_reasons(sig: Signals, lim: BackfillSettings) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if sig.paused:
        found["paused"] = True
    lagging = {r: lag for r, lag in sig.replication_lag_s.items() if lag > lim.max_replication_lag_s}
    if lagging:
        found["replication_lag"] = lagging
    if lim.max_wal_rate_bytes and (sig.wal_rate_bytes or 0) > lim.max_wal_rate_bytes:
        found["wal_rate"] = sig.wal_rate_bytes
    if lim.max_active_sessions is not None and (sig.active_sessions or 0) > lim.max_active_sessions:
        found["active_sessions"] = sig.active_sessions
    if (sig.throttle_query_value or 0) > 0:
        found["throttle_query"] = sig.throttle_query_value
    if sig.autovacuum:
        found["autovacuum"] = sig.autovacuum
    if sig.blocked_sessions > 0:
        found["blocking"] = sig.blocked_sessions
    if sig.latency_baseline:
        found["latency_baseline"] = True
    return found


def decide(sig: Signals, lim: BackfillSettings) -> Decision:
    """Combine the signals with the effective limits into one decision with its reasons."""
    found = _signal_reasons(sig, lim)
    if sig.pacing_sleep_s > 0.001:
        found["latency_budget" if sig.latency_bound else "rate_limit"] = round(sig.pacing_sleep_s, 3)
    nice_s = lim.nice_ratio * sig.last_batch_s
    if nice_s > 0:
        found["nice"] = round(nice_s, 3)
    hold = any(r in HOLD_REASONS for r in found)
    sleep_s = max(sig.pacing_sleep_s, nice_s)
    if "blocking" in found:
        sleep_s = max(sleep_s, BLOCKING_SLEEP_S, sig.last_batch_s)
    if hold:
        sleep_s = max(sleep_s, POLL_S)
    reasons = [r for r in REASONS if r in found]
    return Decision(bool(reasons), reasons, sleep_s, hold, found)


def apply_overrides(base: BackfillSettings, overrides: Mapping[str, Any]) -> BackfillSettings:
    """Effective settings: the run's settings with runtime `throttle` overrides applied."""
    if not overrides:
        return base
    values = {k: v for k, v in overrides.items() if k not in NOT_RUNTIME and v is not None}
    if "replica_dsns" in values:
        values["replica_dsns"] = tuple(values["replica_dsns"])
    return dataclasses.replace(base, **values)


def validate_overrides(overrides: Mapping[str, Any]) -> None:
    """Refuse names that are not BackfillSettings fields, runtime-fixed ones and bad values."""
    names = {f.name for f in dataclasses.fields(BackfillSettings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise RefusedError(
            f"unknown throttle setting(s) {', '.join(unknown)}; choose from {', '.join(sorted(names))}"
        )
    fixed = sorted(set(overrides) & NOT_RUNTIME)
    if fixed:
        raise RefusedError(f"{', '.join(fixed)} cannot change while running; restart the backfill")
    for name, value in overrides.items():
        _check_type(name, value)
    apply_overrides(BackfillSettings(), overrides)


def _check_type(name: str, value: Any) -> None:
    kind = str(next(f.type for f in dataclasses.fields(BackfillSettings) if f.name == name))
    if value is None:
        return
    ok = {
        "int": isinstance(value, int),
        "float": isinstance(value, (int, float)),
        "str": isinstance(value, str),
        "tuple": isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
    }
    base = next((k for k in ("tuple", "float", "int", "str") if kind.startswith(k)), "")
    if isinstance(value, bool) or not ok.get(base, True):
        raise RefusedError(f"throttle setting {name} must be {kind}, not {value!r}")


def batch_cap(lim: BackfillSettings) -> int:
    """Largest batch allowed: with a rows/s limit, never more than about a second's worth."""
    if lim.max_rows_per_second and lim.max_rows_per_second > 0:
        return max(lim.min_batch_size, min(lim.max_batch_size, int(lim.max_rows_per_second)))
    return lim.max_batch_size


def key_fraction(min_key: int | None, max_key: int | None, next_key: int | None) -> float:
    """Share of the key range walked, in [0, 1] even on sparse keys."""
    if min_key is None or max_key is None or next_key is None:
        return 0.0
    span = max_key - min_key + 1
    if span <= 0:
        return 1.0
    return min(1.0, max(0.0, (next_key - min_key) / span))


def eta_seconds(rows_remaining: float, rate: float | None) -> float | None:
    if rows_remaining <= 0:
        return 0.0
    if not rate or rate <= 0:
        return None
    return rows_remaining / rate
