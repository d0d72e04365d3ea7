"""The backfill's throttles engage and release; metrics; the signal queries."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from backfill_schema import (
    ALL_ZERO,
    MID,
    PARENT,
    SLOW,
    Running,
    create_migration,
    create_schema,
    problems,
    q,
    rows_done,
    scalar,
    setup_big,
)
from prometheus_client import generate_latest
from psycopg import sql

from online_uuid import state, status
from online_uuid.backfill import control, run_backfill
from online_uuid.embedded import TempCluster
from online_uuid.metrics import METRICS
from online_uuid.settings import BackfillSettings
from support.clusters import add_standby
from support.sessions import wait_for


@pytest.fixture
def big(dsn: str, conn: psycopg.Connection) -> Iterator[None]:
    setup_big(conn)
    yield


# -- (c) throttles engage and release ----------------------------------------------------------


def test_pause_and_resume_from_another_session(dsn: str, conn: psycopg.Connection, big: None) -> None:
    with Running(dsn, SLOW) as run:
        wait_for(lambda: rows_done(conn) > 0, what="first batch")
        control.pause(conn, MID)
        time.sleep(0.3)  # at most one batch in flight when the pause lands
        frozen = rows_done(conn)
        time.sleep(1.0)
        assert rows_done(conn) == frozen
        assert run.gauge("online_uuid_paused") == 1
        assert run.gauge("online_uuid_throttled", reason="paused") == 1
        assert status.status(conn, MID)["paused"] is True
        control.resume(conn, MID)
        wait_for(lambda: rows_done(conn) > frozen, what="progress after resume")
        assert run.gauge("online_uuid_paused") == 0
        control.set_throttle(conn, MID, max_rows_per_second=0)  # 0 lifts the limit: finish fast
        result = run.join()
    assert result.throttled_s.get("paused", 0) > 0.5
    assert problems(conn) == ALL_ZERO


def test_rate_limit_and_runtime_override(dsn: str, conn: psycopg.Connection, big: None) -> None:
    with Running(dsn, SLOW) as run:
        wait_for(lambda: rows_done(conn) > 0, what="first batch")
        t0, r0 = time.monotonic(), rows_done(conn)
        time.sleep(1.5)
        rate = (rows_done(conn) - r0) / (time.monotonic() - t0)
        assert rate < 2000 * 1.3, rate
        assert run.gauge("online_uuid_throttled", reason="rate_limit") == 1
        control.set_throttle(conn, MID, max_rows_per_second=300)
        time.sleep(0.5)
        t0, r0 = time.monotonic(), rows_done(conn)
        time.sleep(1.5)
        rate = (rows_done(conn) - r0) / (time.monotonic() - t0)
        assert rate < 300 * 1.5, rate
        assert status.status(conn, MID)["throttle"]["overrides"] == {"max_rows_per_second": 300}
        control.set_throttle(conn, MID, max_rows_per_second=0, max_batch_size=5000)
        run.join()
    assert problems(conn) == ALL_ZERO
    assert run.gauge("online_uuid_throttled", reason="rate_limit") == 0


def test_throttle_query_engages_and_releases(dsn: str, conn: psycopg.Connection, big: None) -> None:
    conn.execute("CREATE TABLE gate (hold int)")
    conn.execute("INSERT INTO gate VALUES (1)")
    settings = BackfillSettings(throttle_query="SELECT hold FROM public.gate", vacuum_every_pct=0)
    with Running(dsn, settings) as run:
        wait_for(
            lambda: run.gauge("online_uuid_throttled", reason="throttle_query") == 1,
            what="throttle_query reason",
        )
        frozen = rows_done(conn)
        time.sleep(1.2)
        assert rows_done(conn) == frozen == 0
        doc = status.status(conn, MID)
        assert doc["throttle"]["throttled"] and "throttle_query" in doc["throttle"]["reasons"]
        conn.execute("UPDATE gate SET hold = 0")
        result = run.join()
    assert result.throttled_s["throttle_query"] >= 1.0
    assert run.gauge("online_uuid_throttled", reason="throttle_query") == 0
    assert problems(conn) == ALL_ZERO


def test_active_sessions_throttle(dsn: str, conn: psycopg.Connection, big: None) -> None:
    sleepers = [psycopg.connect(dsn, autocommit=True) for _ in range(3)]
    threads = [threading.Thread(target=s.execute, args=("SELECT pg_sleep(2)",)) for s in sleepers]
    try:
        for t in threads:
            t.start()
        wait_for(
            lambda: (
                scalar(
                    conn,
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' "
                    "AND state = 'active'",
                )
                == 3
            ),
            what="sleepers",
        )
        with Running(dsn, BackfillSettings(max_active_sessions=2, vacuum_every_pct=0)) as run:
            wait_for(
                lambda: run.gauge("online_uuid_throttled", reason="active_sessions") == 1,
                what="active_sessions reason",
            )
            assert rows_done(conn) == 0
            result = run.join()
        assert result.throttled_s["active_sessions"] >= 1.0
    finally:
        for t in threads:
            t.join()
        for s in sleepers:
            s.close()
    assert problems(conn) == ALL_ZERO


def test_blocking_a_writer_backs_off(dsn: str, conn: psycopg.Connection, big: None) -> None:
    """A writer waiting on the batch's row locks is seen before commit; the batch shrinks."""
    keys = [
        r[0] for r in conn.execute(sql.SQL("SELECT {} FROM {}").format(q("select"), PARENT.ident)).fetchall()
    ]
    stop = threading.Event()

    def writer() -> None:
        rnd = random.Random(5)
        with psycopg.connect(dsn, autocommit=True) as w:
            while not stop.is_set():
                w.execute(
                    sql.SQL("UPDATE {} SET name = 'w' WHERE {} = %s").format(PARENT.ident, q("select")),
                    (rnd.choice(keys),),
                )

    settings = BackfillSettings(
        initial_batch_size=20_000, max_batch_size=20_000, target_batch_ms=2000, vacuum_every_pct=0
    )
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        with Running(dsn, settings) as run:
            result = run.join()
    finally:
        stop.set()
        t.join()
    assert result.throttled_s.get("blocking", 0) > 0
    assert problems(conn) == ALL_ZERO


@pytest.mark.slow
def test_replication_lag_with_a_real_standby(
    pg_server: Any, dsn: str, conn: psycopg.Connection, big: None
) -> None:
    if not isinstance(pg_server, TempCluster) or pg_server.bin_dir is None:
        pytest.skip("the test server cannot add a standby (external server or container)")
    standby = add_standby(pg_server)
    try:
        dbname = conn.info.dbname
        replica = standby.dsn_for(dbname)
        wait_for(lambda: _standby_has(replica), timeout=60, what="standby to see the database")
        standby.pause_replay()
        settings = BackfillSettings(
            replica_dsns=(replica,),
            max_replication_lag_s=1.0,
            initial_batch_size=500,
            max_batch_size=500,
            vacuum_every_pct=0,
            max_rows_per_second=4000,
        )
        with Running(dsn, settings) as run:
            wait_for(
                lambda: run.gauge("online_uuid_throttled", reason="replication_lag") == 1,
                timeout=30,
                what="replication_lag reason",
            )
            frozen = rows_done(conn)
            time.sleep(1.5)
            assert rows_done(conn) == frozen
            standby.resume_replay()
            result = run.join()
        assert result.throttled_s["replication_lag"] > 1.0
        assert run.gauge("online_uuid_throttled", reason="replication_lag") == 0
        lag = [
            s
            for m in run.metrics.registry.collect()
            for s in m.samples
            if s.name == "online_uuid_replication_lag_seconds"
        ]
        assert lag
    finally:
        standby.stop()
    assert problems(conn) == ALL_ZERO


def _standby_has(replica: str) -> bool:
    try:
        with psycopg.connect(replica, connect_timeout=2) as c:
            return bool(scalar(c, "SELECT to_regclass('online_uuid.backfill') IS NOT NULL"))
    except psycopg.OperationalError:
        return False


# -- (d) metrics -------------------------------------------------------------------------------


def test_metrics_carry_every_name(dsn: str, conn: psycopg.Connection) -> None:
    create_schema(conn, parents=20_000, children=2_000, leaves=2_000)
    create_migration(conn)
    settings = BackfillSettings(
        initial_batch_size=500,
        max_batch_size=500,
        vacuum_every_pct=50,
        max_rows_per_second=20_000,
        replica_dsns=(dsn,),
    )  # lag 0
    with Running(dsn, settings) as run:
        wait_for(lambda: rows_done(conn) > 2000, what="a few batches")
        during = generate_latest(run.metrics.registry).decode()
        run.join()
    after = generate_latest(run.metrics.registry).decode()
    for name in METRICS:
        assert f"# TYPE {name.removesuffix('_total')} " in after or f"# TYPE {name} " in after, name
    sampled = {
        line.split("{")[0].split(" ")[0] for line in during.splitlines() if line and not line.startswith("#")
    }
    backfill_names = set(METRICS) - {
        "online_uuid_cutover_lock_held_seconds",
        "online_uuid_cutover_attempts_total",
    }
    for name in backfill_names:
        kind = METRICS[name][0]
        wanted = f"{name}_count" if kind == "histogram" else name
        assert wanted in sampled, f"{name} has no sample during the backfill"
    assert 'online_uuid_phase{phase="backfilling"} 1.0' in during
    assert 'online_uuid_phase{phase="backfilled"} 1.0' in after


def test_signals_on_an_idle_database_never_throttle(dsn: str, conn: psycopg.Connection) -> None:
    """Every read_* query runs, and with default limits nothing holds the backfill back."""
    from online_uuid import catalog
    from online_uuid.backfill import signals
    from online_uuid.backfill.throttle import decide

    create_schema(conn, parents=100, children=10, leaves=10)
    oid = catalog.read_table_ref(conn, PARENT)
    assert oid is not None
    assert signals.read_standby_lags(conn) == {}
    assert signals.read_replica_lag(conn) == 0.0  # a primary: nothing to replay
    assert signals.read_wal_lsn(conn) > 0
    assert signals.read_active_sessions(conn) == 0
    assert signals.read_autovacuum(conn, oid) is None
    assert signals.read_long_transactions(conn, 300) == []
    assert signals.read_dead_tuples(conn, oid) >= 0
    assert signals.read_barrier_waiters(conn, datetime.now(UTC)) == []
    assert signals.read_throttle_query(conn, "SELECT 0") == 0.0
    reader = signals.SignalReader(lambda d: psycopg.connect(d or dsn, autocommit=True))
    try:
        for _ in range(2):
            sig = reader.read(BackfillSettings(), oid)
            assert not decide(sig, BackfillSettings()).throttled
            time.sleep(1.05)
        assert sig.wal_rate_bytes is not None
    finally:
        reader.close()


def test_bad_throttle_query_stops_with_a_clear_error(dsn: str, conn: psycopg.Connection) -> None:
    from online_uuid.errors import BackfillError

    create_schema(conn, parents=100, children=10, leaves=10)
    create_migration(conn)
    with pytest.raises(BackfillError, match="throttle-query failed"):
        run_backfill(dsn, MID, BackfillSettings(throttle_query="SELECT nope FROM nowhere"))
    assert "throttle-query" in (state.load(conn, MID).last_error or "")


# -- --throttle-query runs exactly one read-only statement -------------------------------------

SMUGGLED = "SELECT 0; COMMIT; CREATE TABLE public.smuggled (x int)"


def _smuggled(conn: psycopg.Connection) -> bool:
    return bool(scalar(conn, "SELECT to_regclass('public.smuggled') IS NOT NULL"))


def test_throttle_query_with_several_statements_is_refused_and_never_run(
    dsn: str, conn: psycopg.Connection
) -> None:
    from online_uuid import api
    from online_uuid.backfill import signals
    from online_uuid.errors import BackfillError, RefusedError
    from support.cli import invoke_cli

    create_schema(conn, parents=100, children=10, leaves=10)
    create_migration(conn)
    before = state.load(conn, MID)
    with pytest.raises(RefusedError, match=r"--throttle-query .* is refused"):
        api.backfill(dsn, MID, settings=BackfillSettings(throttle_query=SMUGGLED))
    for bad in (SMUGGLED, "COMMIT", "CREATE TABLE public.smuggled (x int)"):
        res = invoke_cli("throttle", "--dsn", dsn, "--throttle-query", bad)
        assert res.returncode == 2, res.stderr
        assert "throttle-query" in res.stderr
    after = state.load(conn, MID)
    assert (after.phase, after.throttle) == (before.phase, before.throttle)
    assert rows_done(conn) == 0
    # Even if one reached a running backfill (an old override), it never runs a second statement.
    with pytest.raises(BackfillError, match="throttle-query failed"):
        signals.read_throttle_query(conn, SMUGGLED)
    assert not _smuggled(conn)
    # One read-only SELECT is accepted.
    assert invoke_cli("throttle", "--dsn", dsn, "--throttle-query", "SELECT 0").returncode == 0
