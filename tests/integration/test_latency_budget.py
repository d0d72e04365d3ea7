"""--max-latency-impact: a real backfill steers its rate by its canary's latency."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
import pytest
from backfill_schema import (
    ALL_ZERO,
    MID,
    SLOW,
    Running,
    create_migration,
    create_schema,
    problems,
    rows_done,
)
from psycopg import sql
from typer.testing import CliRunner

from online_uuid import state, status
from online_uuid.backfill import canary, control
from online_uuid.cli import app
from online_uuid.errors import RefusedError
from online_uuid.settings import BackfillSettings
from support.sessions import wait_for

CEILING = 5000.0  # the user's --max-rows-per-second: the budget never allows more
FACTOR = 3.0


@pytest.fixture(autouse=True)
def quick_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decide on ~1 s of beats instead of 3 s, and measure the baseline on 2 s: a test of seconds."""
    monkeypatch.setattr(canary, "DECISION_SAMPLES", 50)
    monkeypatch.setattr(canary, "DECISION_MIN_S", 1.0)
    monkeypatch.setattr(canary, "BASELINE_SAMPLES", 100)


@contextmanager
def canary_held(dsn: str, hold_s: float = 0.1, gap_s: float = 0.02) -> Iterator[None]:
    """Induced load on what the canary touches: its table locked `hold_s` out of every `hold_s + gap_s`."""
    stop = threading.Event()

    def hammer() -> None:
        with psycopg.connect(dsn, application_name="test/canary-holder") as c:
            while not stop.is_set():
                with c.transaction():
                    c.execute(
                        sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                            sql.Identifier("online_uuid", "canary")
                        )
                    )
                    time.sleep(hold_s)
                time.sleep(gap_s)

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def beats_processes() -> list[int]:
    """This process's children that run the canary's beats (Linux /proc)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with suppress(OSError):
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and b"online_uuid.backfill.beats" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def test_budget_slows_down_under_load_then_recovers(dsn: str, conn: psycopg.Connection) -> None:
    create_schema(conn, parents=100_000, children=500, leaves=500)
    create_migration(conn)
    settings = BackfillSettings(
        max_latency_impact=FACTOR, max_rows_per_second=CEILING, max_batch_size=1000, vacuum_every_pct=0
    )
    with Running(dsn, settings) as run:

        def allowed() -> float:
            return run.gauge("online_uuid_allowed_rows_per_second")

        wait_for(lambda: allowed() >= CEILING, timeout=60, what="the budget to grow to the ceiling")
        before = status.status(conn, MID)["throttle"]["latency_budget"]
        assert before["factor"] == FACTOR and before["baseline_p99_ms"] > 0
        with canary_held(dsn):
            wait_for(lambda: allowed() <= CEILING / 4, timeout=40, what="the budget to cut the rate")
            assert run.gauge("online_uuid_latency_impact_ratio") > FACTOR
            rows_loaded = rows_done(conn)
            time.sleep(1.5)
            assert rows_done(conn) > rows_loaded  # slowed, never stopped: the floor holds
            loaded = allowed()
            assert loaded >= settings.min_batch_size
        wait_for(lambda: allowed() >= CEILING / 2, timeout=60, what="the rate to recover")
        assert run.gauge("online_uuid_latency_impact_ratio") <= FACTOR
        control.set_throttle(conn, MID, max_latency_impact=0, max_rows_per_second=0)  # finish fast
        result = run.join()
    assert loaded <= CEILING / 4
    assert result.throttled_s.get("latency_budget", 0) > 0
    assert result.throttled_s.get("latency_baseline", 0) > 0  # held before the first batch
    assert problems(conn) == ALL_ZERO
    assert run.gauge("online_uuid_latency_budget") == 0  # turned off at runtime


def test_budget_set_at_runtime_measures_a_baseline_and_shows_in_status(
    dsn: str, conn: psycopg.Connection
) -> None:
    create_schema(conn, parents=40_000, children=500, leaves=500)
    create_migration(conn)
    with Running(dsn, SLOW) as run:
        wait_for(lambda: rows_done(conn) > 0, what="first batch")
        assert run.gauge("online_uuid_latency_budget") == 0
        cli = CliRunner().invoke(app, ["throttle", "--dsn", dsn, "--max-latency-impact", "1.5"])
        assert cli.exit_code == 0, cli.output
        wait_for(
            lambda: (
                (status.status(conn, MID)["throttle"]["latency_budget"] or {}).get("baseline_p99_ms")
                is not None
            ),
            timeout=30,
            what="the idle baseline in status",
        )
        budget = status.status(conn, MID)["throttle"]["latency_budget"]
        assert budget["factor"] == 1.5 and budget["allowed_rows_per_s"] >= SLOW.min_batch_size
        assert run.gauge("online_uuid_latency_budget") == 1.5
        text = CliRunner().invoke(app, ["status", "--dsn", dsn]).stdout
        assert "latency budget: F 1.5, canary p99" in text and "rows/s" in text
        assert run.gauge("online_uuid_canary_baseline_seconds") > 0
        beats = conn.execute(
            "SELECT beats FROM online_uuid.canary WHERE migration_id = %s", (MID,)
        ).fetchone()
        assert beats is not None and beats[0] >= canary.BASELINE_SAMPLES
        canaries = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (f"online-uuid/{MID}/canary",),
        ).fetchone()
        assert canaries == (1,)
        # The beats run in a process of their own: the workers' Python time must not be in them.
        assert len(beats_processes()) == 1
    assert state.load(conn, MID).throttle == {"max_latency_impact": 1.5}
    left = conn.execute("SELECT count(*) FROM online_uuid.canary").fetchone()
    assert left == (0,)  # the run ended: its heartbeat row is gone
    assert beats_processes() == []


@pytest.mark.parametrize("factor", [1.0, 0.5, -2.0])
def test_a_factor_of_at_most_one_is_refused(dsn: str, conn: psycopg.Connection, factor: float) -> None:
    create_schema(conn, parents=100, children=10, leaves=10)
    create_migration(conn)
    with pytest.raises(RefusedError, match="max-latency-impact"):
        control.set_throttle(conn, MID, max_latency_impact=factor)
    assert state.load(conn, MID).throttle == {}
    with pytest.raises(RefusedError, match="max-latency-impact"):
        BackfillSettings(max_latency_impact=factor)
