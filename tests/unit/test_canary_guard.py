"""The latency guard between the canary's beats, the budget and the workers (no server, fake clock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from online_uuid.backfill import canary
from online_uuid.backfill.canary import LatencyGuard
from online_uuid.backfill.throttle import Signals, decide
from online_uuid.metrics import Metrics
from online_uuid.settings import BackfillSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def guard(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[LatencyGuard]:
    g = LatencyGuard("m1", "dbname=none", Metrics("m1"), clock=clock)
    monkeypatch.setattr(g, "_ensure_thread", lambda: None)  # beats are fed by hand
    yield g
    g.close()


def gauge(g: LatencyGuard, name: str) -> float:
    return g.metrics.registry.get_sample_value(name) or 0.0


def test_without_a_budget_the_settings_pass_unchanged(guard: LatencyGuard) -> None:
    eff = BackfillSettings(max_rows_per_second=700)
    assert guard.apply(eff) is eff
    sig = Signals()
    guard.annotate(sig)
    assert sig.latency_budget is None and not sig.latency_baseline
    assert gauge(guard, "online_uuid_latency_budget") == 0


def test_holds_for_the_baseline_first_then_paces_at_the_budgets_rate(
    guard: LatencyGuard, clock: FakeClock
) -> None:
    eff = guard.apply(BackfillSettings(max_latency_impact=1.5))
    assert eff.max_rows_per_second == canary.INITIAL_RATE and guard.measuring
    sig = Signals()
    guard.annotate(sig)
    dec = decide(sig, eff)
    assert dec.hold and dec.reasons == ["latency_baseline"]
    for _ in range(canary.BASELINE_SAMPLES):
        clock.now += canary.INTERVAL_S
        guard._sample(0.002, idle=True)
    assert not guard.measuring
    assert gauge(guard, "online_uuid_canary_baseline_seconds") == 0.002
    sig = Signals(pacing_sleep_s=0.3)
    guard.annotate(sig)
    assert decide(sig, guard.apply(BackfillSettings(max_latency_impact=1.5))).reasons == ["latency_budget"]
    assert sig.latency_budget is not None and sig.latency_budget["baseline_p99_ms"] == 2.0


def test_busy_beats_over_budget_cut_the_rate_and_show_everywhere(
    guard: LatencyGuard, clock: FakeClock
) -> None:
    guard.apply(BackfillSettings(max_latency_impact=2.0))
    for _ in range(canary.BASELINE_SAMPLES):
        guard._sample(0.001, idle=True)
    with guard.busy():
        for _ in range(canary.DECISION_SAMPLES):
            clock.now += canary.INTERVAL_S
            guard._sample(0.010, idle=False)  # 10 x idle
    assert guard.budget is not None and guard.budget.rate < canary.INITIAL_RATE
    assert gauge(guard, "online_uuid_latency_impact_ratio") == pytest.approx(10.0)
    assert gauge(guard, "online_uuid_canary_p99_seconds") == pytest.approx(0.010)
    assert gauge(guard, "online_uuid_allowed_rows_per_second") == guard.budget.rate
    sig = Signals()
    guard.annotate(sig)
    assert sig.latency_budget is not None
    assert sig.latency_budget["ratio"] == pytest.approx(10.0) and sig.latency_budget["factor"] == 2.0


def test_the_users_lower_rate_limit_is_not_the_budgets(guard: LatencyGuard) -> None:
    eff = guard.apply(BackfillSettings(max_latency_impact=1.5, max_rows_per_second=300))
    assert eff.max_rows_per_second == 300
    sig = Signals(pacing_sleep_s=0.5)
    guard.annotate(sig)
    assert "rate_limit" in decide(sig, eff).reasons


def test_a_beat_right_after_a_batch_is_not_idle(guard: LatencyGuard, clock: FakeClock) -> None:
    guard.apply(BackfillSettings(max_latency_impact=1.5))
    with guard.busy():
        assert not guard._idle_since(clock.now - 5)  # a batch is running
    clock.now += canary.SETTLE_S / 2
    assert not guard._idle_since(clock.now)  # due half a second after the batch ended
    clock.now += canary.SETTLE_S
    assert not guard._idle_since(clock.now - canary.SETTLE_S)  # it began too soon after the batch
    assert guard._idle_since(clock.now)


def test_turning_the_budget_off_at_runtime(guard: LatencyGuard) -> None:
    guard.apply(BackfillSettings(max_latency_impact=1.5))
    assert gauge(guard, "online_uuid_latency_budget") == 1.5
    eff = guard.apply(BackfillSettings(max_latency_impact=0))
    assert eff.max_rows_per_second is None and guard.budget is None and not guard.measuring
    assert gauge(guard, "online_uuid_latency_budget") == 0
