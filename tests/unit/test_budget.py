"""The latency-budget controller against a simulated server whose latency grows with the backfill's rate."""

from __future__ import annotations

import random

import pytest

from online_uuid.backfill.budget import (
    REBASELINE_AT_FLOOR_S,
    REBASELINE_EVERY_S,
    Baseline,
    LatencyBudget,
    p99,
)

FULL_SPEED = 100_000.0  # rows/s the backfill manages flat out
BASE_S = 0.001  # the canary's idle latency
STEP_S = 3.0  # simulated seconds between decisions
SAMPLES = 150  # canary samples per decision


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Server:
    """Canary latency = base x (1 + load x duty cycle) x noise; `load` is what the test induces.

    `stalls`: the share of transactions that hit a stall the backfill did not cause (a WAL flush
    behind another session's, a scheduler hiccup), `stall_x` times as slow, busy or idle alike.
    """

    def __init__(self, load: float, seed: int = 1, stalls: float = 0.0, stall_x: float = 6.0) -> None:
        self.load, self.stalls, self.stall_x = load, stalls, stall_x
        self.rng = random.Random(seed)

    def _noise(self) -> float:
        stall = self.stall_x if self.rng.random() < self.stalls else 1.0
        return stall * self.rng.lognormvariate(0, 0.08)

    def sample(self, rate: float) -> float:
        duty = min(1.0, rate / FULL_SPEED)
        return BASE_S * (1 + self.load * duty) * self._noise()

    def idle(self) -> float:
        return BASE_S * self._noise()

    def bearable(self, factor: float) -> float:
        """The rate at which the canary's typical latency sits exactly at the budget."""
        return FULL_SPEED * (factor - 1) / self.load


def baseline_of(server: Server) -> float:
    b = Baseline()
    for _ in range(300):
        b.add(server.idle())
    assert b.value is not None
    return b.value


def run(ctl: LatencyBudget, clock: FakeClock, server: Server, steps: int) -> list[float]:
    """`steps` decisions; the rate after each one."""
    base = baseline_of(server)
    rates = []
    for _ in range(steps):
        clock.now += STEP_S
        ctl.add_rows(int(min(ctl.rate, FULL_SPEED) * STEP_S))
        for _ in range(SAMPLES):
            ctl.add(server.sample(ctl.rate))
        assert ctl.update(base) is not None
        rates.append(ctl.rate)
    return rates


def controller(factor: float = 1.5, floor: float = 100.0) -> tuple[LatencyBudget, FakeClock]:
    clock = FakeClock()
    return LatencyBudget(factor, floor, initial=1000.0, clock=clock), clock


def test_p99_is_nearest_rank() -> None:
    assert p99(range(1, 101)) == 99
    assert p99([5.0]) == 5.0
    with pytest.raises(ValueError):
        p99([])


def test_baseline_needs_enough_idle_samples_and_keeps_the_recent_ones() -> None:
    b = Baseline(max_samples=200, min_samples=100)
    for _ in range(99):
        b.add(0.001)
    assert b.value is None
    b.add(0.001)
    assert b.value == 0.001
    for _ in range(200):
        b.add(0.002)  # the old idle samples age out
    assert b.value == 0.002 and len(b.samples) == 200


def test_a_stall_in_the_idle_window_does_not_become_the_baseline() -> None:
    b = Baseline()
    for i in range(300):
        b.add(0.006 if i in (50, 120, 190, 260) else 0.001)  # four stalls: the plain p99 is one of them
    assert p99(b.samples) == 0.006
    assert b.value == 0.001


def test_settles_just_under_the_budget() -> None:
    ctl, clock = controller()
    server = Server(load=3.0)  # flat out: 4 x idle; bearable: 1/6 of full speed
    rates = run(ctl, clock, server, 60)
    target = server.bearable(1.5)
    settled = rates[20:]
    assert all(0.4 * target <= r <= 1.3 * target for r in settled), (target, settled)
    # What the budget promises: the canary's p99 at the rates it settles on, within F x its idle p99.
    idle = p99([server.idle() for _ in range(5000)])
    busy = p99([server.sample(r) for r in settled for _ in range(200)])
    assert busy <= 1.5 * idle


def test_rare_stalls_do_not_drag_the_rate_down() -> None:
    """A stall in 200 transactions, whatever the backfill does: a window of 150 beats often holds two,
    so its p99 is a stall. Cutting on that alone halves the rate every few decisions."""
    ctl, clock = controller()
    server = Server(load=3.0, stalls=0.005, seed=3)
    rates = run(ctl, clock, server, 80)
    target = server.bearable(1.5)
    settled = rates[20:]
    assert sum(settled) / len(settled) >= 0.6 * target, (target, settled)
    assert max(settled) <= 1.3 * target


@pytest.mark.parametrize("factor", [1.2, 1.5, 2.0])
def test_the_window_and_the_baseline_are_estimated_alike(factor: float) -> None:
    """One beat in fifty twice as slow, busy or idle. The plain p99 of a window of 150 beats is then
    a slow beat, while a lower bound of the idle p99 is not: compared with each other, the window
    reads over budget at no load, and the rate sinks to the floor (seen on a real server at F = 1.5:
    0.01 x the one-shot speed)."""
    ctl, clock = controller(factor=factor)
    server = Server(load=3.0, stalls=0.02, stall_x=2.0, seed=2)
    rates = run(ctl, clock, server, 80)
    settled = rates[30:]
    assert sum(settled) / len(settled) >= 0.4 * server.bearable(factor), settled


def test_slows_down_when_latency_rises_and_recovers_when_it_falls() -> None:
    ctl, clock = controller()
    server = Server(load=3.0)
    calm = run(ctl, clock, server, 30)[-10:]
    server.load = 20.0  # the application got busy: the same rate now costs it much more
    loaded = run(ctl, clock, server, 15)
    assert loaded[-1] <= 1.3 * server.bearable(1.5) < 0.3 * min(calm)
    assert max(loaded[5:]) <= 1.5 * server.bearable(1.5)  # a few steps, not a slow drift
    server.load = 3.0
    recovered = run(ctl, clock, server, 25)
    assert recovered[-1] >= 0.6 * server.bearable(1.5)
    assert recovered[-1] >= 0.5 * sum(calm) / len(calm)


def test_never_below_the_floor() -> None:
    ctl, clock = controller(floor=250.0)
    server = Server(load=5000.0)  # even the floor breaks the budget
    rates = run(ctl, clock, server, 30)
    assert min(rates) == 250.0 == rates[-1]


def test_no_oscillation_blow_up() -> None:
    ctl, clock = controller(factor=1.2)
    server = Server(load=4.0, seed=9)
    rates = run(ctl, clock, server, 200)
    target = server.bearable(1.2)
    early, late = rates[40:120], rates[120:]
    assert all(0.25 * target <= r <= 1.5 * target for r in rates[40:]), target
    assert max(late) - min(late) <= 1.5 * (max(early) - min(early)) + 0.05 * target
    assert ctl.rate > ctl.floor


def test_respects_the_users_ceiling_and_what_the_backfill_achieves() -> None:
    ctl, clock = controller()
    ctl.retune(1.5, 100.0, 5_000.0)
    server = Server(load=0.01)  # no measurable impact at any rate
    assert max(run(ctl, clock, server, 20)) == 5_000.0
    ctl.retune(1.5, 100.0, None)
    for _ in range(20):  # the backfill manages only 3000 rows/s whatever it is allowed
        clock.now += STEP_S
        ctl.add_rows(int(3000 * STEP_S))
        for _ in range(SAMPLES):
            ctl.add(server.idle())
        ctl.update(BASE_S * 1.2)
    assert ctl.rate <= 2 * 3000 + 1


def test_decides_only_on_enough_fresh_samples() -> None:
    ctl, clock = controller()
    for _ in range(SAMPLES // 3):
        ctl.add(0.001)
    clock.now += STEP_S
    step = ctl.update(0.001)  # slow start: a third of the samples will do
    assert step is not None and step.action == "slow_start"
    for _ in range(SAMPLES // 3):
        ctl.add(0.00145)
    clock.now += STEP_S
    assert ctl.update(0.001) is not None and not ctl.slow_start  # close to the budget: slow start ends
    for _ in range(SAMPLES - 1):
        ctl.add(0.01)
    clock.now += STEP_S
    assert ctl.update(0.001) is None  # one sample short
    ctl.add(0.01)
    step = ctl.update(0.001)
    assert step is not None and step.action == "decrease" and step.ratio == pytest.approx(10.0)
    assert ctl.update(0.001) is None  # the next decision waits for new samples
    assert ctl.rate == 500.0  # a tenfold overshoot halves the rate, no more


def test_asks_for_a_baseline_at_start_periodically_and_when_stuck_at_the_floor() -> None:
    ctl, clock = controller(floor=1000.0)
    assert ctl.wants_baseline(None)
    measured = clock.now
    assert not ctl.wants_baseline(measured)
    for _ in range(SAMPLES):
        ctl.add(1.0)
    clock.now += STEP_S
    ctl.update(0.001)  # at the floor from now on
    assert not ctl.wants_baseline(measured)
    clock.now = measured + REBASELINE_AT_FLOOR_S + STEP_S + 1
    for _ in range(SAMPLES):
        ctl.add(1.0)
    ctl.update(0.001)
    assert ctl.wants_baseline(measured)
    ctl2, clock2 = controller()
    assert ctl2.wants_baseline(clock2.now - REBASELINE_EVERY_S)
