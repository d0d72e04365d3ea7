"""Pure pacing logic: batch sizing, rate pacing, throttle decisions, overrides, progress math."""

from __future__ import annotations

import itertools

import pytest

from online_uuid.backfill.throttle import (
    POLL_S,
    BatchSizer,
    RateMeter,
    RatePacer,
    Signals,
    apply_overrides,
    batch_cap,
    decide,
    eta_seconds,
    key_fraction,
    validate_overrides,
)
from online_uuid.errors import RefusedError
from online_uuid.settings import BackfillSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


def simulate(sizer: BatchSizer, ms_per_row: float, batches: int) -> list[int]:
    """A server where a batch costs a fixed time per row."""
    sizes = []
    for _ in range(batches):
        sizes.append(sizer.size)
        sizer.observe(sizer.size * ms_per_row / 1000)
    return sizes


def test_sizer_converges_to_target() -> None:
    sizer = BatchSizer(target_s=0.2, min_size=100, max_size=50_000, size=1000)
    sizes = simulate(sizer, ms_per_row=0.01, batches=30)  # ideal: 20_000 rows per batch
    assert 16_000 <= sizes[-1] <= 24_000
    assert sizes[-1] == sizes[-2]  # settled inside the dead band


def test_sizer_grows_at_most_half_per_batch() -> None:
    sizer = BatchSizer(target_s=0.2, min_size=100, max_size=50_000, size=1000)
    sizes = simulate(sizer, ms_per_row=0.0001, batches=8)
    for a, b in itertools.pairwise(sizes):
        assert b <= a * 1.5 + 1


def test_sizer_scales_down_fast() -> None:
    sizer = BatchSizer(target_s=0.2, min_size=100, max_size=50_000, size=20_000)
    sizer.observe(2.0)  # 10x too slow: one step brings it to target
    assert sizer.size == 2000


def test_sizer_bounds_hold() -> None:
    sizer = BatchSizer(target_s=0.2, min_size=100, max_size=5000, size=1_000_000)
    assert sizer.size == 5000
    sizer.observe(1000.0)
    assert sizer.size == 100
    for _ in range(50):
        sizer.observe(0.0)
    assert sizer.size == 5000
    sizer.shrink(0.0)
    assert sizer.size == 100


def test_sizer_short_last_batch_does_not_grow() -> None:
    sizer = BatchSizer(target_s=0.2, min_size=100, max_size=50_000, size=1000)
    sizer.observe(0.001, full=False)
    assert sizer.size == 1000


def test_sizer_retune_applies_new_bounds() -> None:
    sizer = BatchSizer(target_s=0.2, min_size=100, max_size=50_000, size=10_000)
    sizer.retune(0.1, 100, 2000)
    assert sizer.size == 2000 and sizer.target_s == 0.1


def test_pacer_holds_rate() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock=clock, burst_s=0.0)
    slept = 0.0
    for _ in range(10):
        s = pacer.book(500, rate=1000)
        clock.advance(s)
        slept += s
    assert slept == pytest.approx(5.0)  # 5000 rows at 1000/s


def test_pacer_no_limit_and_reset() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock=clock)
    assert pacer.book(10_000, rate=None) == 0.0
    assert pacer.book(10_000, rate=0) == 0.0


def test_pacer_idle_time_earns_limited_burst() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock=clock, burst_s=1.0)
    pacer.book(100, rate=100)
    clock.advance(3600)
    assert pacer.book(100, rate=100) == 0.0  # one second of credit covers it
    assert pacer.book(100, rate=100) == pytest.approx(1.0)


def test_pacer_first_batch_gets_no_credit() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock=clock)
    assert pacer.book(100, rate=100) == pytest.approx(1.0)


def test_rate_meter() -> None:
    clock = FakeClock()
    meter = RateMeter(clock=clock, window_s=10)
    meter.add(0)
    for _ in range(50):
        clock.advance(1)
        meter.add(1000)
    assert meter.rate == pytest.approx(1000)


def test_idle_database_with_defaults_is_never_throttled() -> None:
    sig = Signals(
        replication_lag_s={},
        wal_rate_bytes=5e7,
        active_sessions=500,
        throttle_query_value=None,
        last_batch_s=0.2,
    )
    dec = decide(sig, BackfillSettings())
    assert not dec.throttled and dec.sleep_s == 0 and not dec.hold and dec.reasons == []


@pytest.mark.parametrize(
    ("sig", "limits", "reason"),
    [
        (Signals(replication_lag_s={"standby:a": 12.0}), {}, "replication_lag"),
        (Signals(wal_rate_bytes=2e6), {"max_wal_rate_bytes": 1e6}, "wal_rate"),
        (Signals(active_sessions=11), {"max_active_sessions": 10}, "active_sessions"),
        (Signals(throttle_query_value=1), {}, "throttle_query"),
        (Signals(autovacuum="autovacuum (to prevent wraparound): scanning heap"), {}, "autovacuum"),
        (Signals(paused=True), {}, "paused"),
    ],
)
def test_hold_reasons(sig: Signals, limits: dict[str, object], reason: str) -> None:
    dec = decide(sig, BackfillSettings(**limits))  # type: ignore[arg-type]
    assert dec.throttled and dec.hold and dec.reasons == [reason]
    assert dec.sleep_s >= POLL_S
    assert reason in dec.details


def test_limits_not_exceeded_do_not_throttle() -> None:
    sig = Signals(
        replication_lag_s={"r": 9.9}, wal_rate_bytes=1e6, active_sessions=10, throttle_query_value=0
    )
    lim = BackfillSettings(max_wal_rate_bytes=1e6, max_active_sessions=10)
    assert not decide(sig, lim).throttled


def test_sleep_reasons_do_not_hold() -> None:
    dec = decide(Signals(pacing_sleep_s=0.5, last_batch_s=0.2), BackfillSettings(nice_ratio=1.0))
    assert dec.reasons == ["rate_limit", "nice"] and not dec.hold
    assert dec.sleep_s == pytest.approx(0.5)


def test_blocking_sleeps_at_least_the_batch() -> None:
    dec = decide(Signals(blocked_sessions=2, last_batch_s=0.8), BackfillSettings())
    assert dec.reasons == ["blocking"] and not dec.hold and dec.sleep_s == pytest.approx(0.8)


def test_several_reasons_are_all_reported() -> None:
    sig = Signals(replication_lag_s={"r": 30}, throttle_query_value=3, paused=True)
    dec = decide(sig, BackfillSettings())
    assert dec.reasons == ["paused", "replication_lag", "throttle_query"]


def test_overrides_apply_and_validate() -> None:
    base = BackfillSettings()
    eff = apply_overrides(base, {"max_rows_per_second": 500, "replica_dsns": ["host=x"]})
    assert eff.max_rows_per_second == 500 and eff.replica_dsns == ("host=x",)
    assert apply_overrides(base, {}) is base
    validate_overrides({"max_rows_per_second": 500, "nice_ratio": None})
    with pytest.raises(RefusedError, match="unknown throttle setting"):
        validate_overrides({"max_rows_per_sec": 1})
    with pytest.raises(RefusedError, match="restart"):
        validate_overrides({"workers": 4})
    with pytest.raises(RefusedError, match="must be"):
        validate_overrides({"max_rows_per_second": "fast"})
    with pytest.raises(RefusedError):
        validate_overrides({"nice_ratio": -1})


def test_batch_cap_follows_rate_limit() -> None:
    assert batch_cap(BackfillSettings()) == 50_000
    assert batch_cap(BackfillSettings(max_rows_per_second=500)) == 500
    assert batch_cap(BackfillSettings(max_rows_per_second=5)) == 100


def test_key_fraction_is_clamped() -> None:
    assert key_fraction(1, 100, 1) == 0.0
    assert key_fraction(1, 100, 51) == pytest.approx(0.5)
    assert key_fraction(1, 100, 101) == 1.0
    assert key_fraction(1, 100, 10**12) == 1.0
    assert key_fraction(None, None, None) == 0.0
    assert key_fraction(5, 5, 6) == 1.0


def test_eta() -> None:
    assert eta_seconds(0, None) == 0.0
    assert eta_seconds(100, None) is None
    assert eta_seconds(100, 50) == 2.0
