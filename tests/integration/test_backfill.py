"""The backfill engine against a real server: correctness, kill -9 resume, barrier, writers."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from backfill_schema import (
    ALL_ZERO,
    CHILD,
    FAST,
    LEAF,
    MID,
    PARENT,
    SLOW,
    Recorder,
    Running,
    add_fk_triggers,
    create_migration,
    create_schema,
    jobs,
    key_uuids,
    make_plan,
    problems,
    q,
    rows_done,
    scalar,
    setup_big,
)
from psycopg import sql

from online_uuid import state, status
from online_uuid.backfill import run_backfill
from online_uuid.backfill.context import RunContext
from online_uuid.backfill.progress import NullProgress
from online_uuid.metrics import Metrics
from online_uuid.model import Phase
from online_uuid.settings import BackfillSettings
from support.sessions import wait_for


@pytest.fixture
def big(dsn: str, conn: psycopg.Connection) -> Iterator[None]:
    setup_big(conn)
    yield


# -- (a) correctness on sparse keys ------------------------------------------------------------


def test_sparse_keys_fill_everything_without_empty_batches(dsn: str, conn: psycopg.Connection) -> None:
    keys = create_schema(conn, parents=20_000, children=8_000, leaves=6_000)
    create_migration(conn)
    rec = Recorder()
    size = 500
    settings = BackfillSettings(
        initial_batch_size=size, min_batch_size=size, max_batch_size=size, vacuum_every_pct=25
    )
    result = run_backfill(dsn, MID, settings, progress=rec)
    assert result.phase == Phase.BACKFILLED.value and not result.stopped
    assert problems(conn) == ALL_ZERO
    assert state.load(conn, MID).phase is Phase.BACKFILLED
    assert all(0.0 <= s.fraction <= 1.0 for s in rec.snaps)
    assert rec.snaps and all(s.fraction == 1.0 for s in rec.snaps if s.done)
    js = jobs(conn)
    key = js["key:App Data.Parent.select"]
    assert key["rows_done"] == len(keys) and key["percent"] == 100.0
    assert key["batches"] <= len(keys) // size + 2  # no flood of empty batches on the gaps
    assert js["fk:App Data.order.Parent"]["batches"] <= 8_000 // size + 2
    assert result.rows["key:App Data.Parent.select"] == len(keys)
    assert result.batches == sum(j["batches"] for j in js.values())
    # a rerun finds the phase backfilled and returns at once
    again = run_backfill(dsn, MID, settings)
    assert again.phase == "backfilled" and again.batches == 0


def test_adaptive_batches_and_status_shape(dsn: str, conn: psycopg.Connection) -> None:
    create_schema(conn, parents=30_000, children=100, leaves=0)
    create_migration(conn)
    result = run_backfill(dsn, MID, BackfillSettings(target_batch_ms=50, initial_batch_size=100))
    assert problems(conn) == ALL_ZERO
    js = jobs(conn)
    assert js["key:App Data.Parent.select"]["batch_size"] > 100  # it grew
    doc = status.status(conn, MID)
    json.dumps(doc)  # JSON-able
    assert set(doc) >= {
        "migration",
        "phase",
        "paused",
        "last_error",
        "progress",
        "jobs",
        "throttle",
        "barrier",
        "dead_tuples",
        "events",
    }
    assert doc["progress"]["percent"] == 100.0 and doc["barrier"]["passed"]
    assert doc["barrier"]["at"] is not None
    assert all(j["state"] == "done" for j in doc["jobs"])
    assert '"App Data"."Parent"' in doc["dead_tuples"]
    assert result.seconds > 0


def test_empty_tables(dsn: str, conn: psycopg.Connection) -> None:
    create_schema(conn, parents=0, children=0, leaves=0)
    create_migration(conn)
    result = run_backfill(dsn, MID, FAST)
    assert result.phase == "backfilled" and result.total_rows == 0


def test_wrong_phase_is_refused(dsn: str, conn: psycopg.Connection) -> None:
    create_schema(conn, parents=10, children=0, leaves=0)
    state.ensure_schema(conn)
    state.create(conn, MID, make_plan(), {})
    from online_uuid.errors import StateError

    with pytest.raises(StateError, match="expanding"):
        run_backfill(dsn, MID, FAST)


def test_non_transient_error_is_recorded(dsn: str, conn: psycopg.Connection) -> None:
    from online_uuid.errors import BackfillError

    create_schema(conn, parents=100, children=10, leaves=0)
    create_migration(conn)
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(CHILD.ident, q("Parent_uuid")))
    with pytest.raises(BackfillError, match="online-uuid backfill"):
        run_backfill(dsn, MID, FAST)
    m = state.load(conn, MID)
    assert m.phase is Phase.BACKFILLING and m.last_error and "Parent_uuid" in m.last_error


# -- (b) kill -9 at random moments, then resume ------------------------------------------------

CHILD_SCRIPT = """
import sys
from online_uuid.backfill import run_backfill
from online_uuid.settings import BackfillSettings
run_backfill(sys.argv[1], sys.argv[2], BackfillSettings(
    initial_batch_size=200, min_batch_size=100, max_batch_size=400, target_batch_ms=20,
    vacuum_every_pct=10, max_rows_per_second=float(sys.argv[3]) or None), take_lock=True)
"""


def _spawn(dsn: str, log: Path, rate: float = 0.0) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD_SCRIPT, dsn, MID, str(rate)], stdout=subprocess.DEVNULL, stderr=err
        )


# The rate keeps the killed runs from finishing early on a fast machine: at most ~2/3 of the rows
# fit in the kill rounds' expected running time (sleeps of 0.3-2.5 s each).
@pytest.mark.parametrize(
    ("rounds", "parents", "rate"),
    [(6, 60_000, 8_000), pytest.param(25, 200_000, 5_000, marks=pytest.mark.slow)],
    ids=["quick", "many-kills"],
)
def test_kill_9_at_random_moments_then_resume(
    dsn: str, conn: psycopg.Connection, tmp_path: Path, rounds: int, parents: int, rate: float
) -> None:
    log = tmp_path / "child.log"
    keys = create_schema(conn, parents=parents, children=20_000, leaves=20_000)
    create_migration(conn)
    rnd = random.Random(42 + rounds)
    seen: dict[int, str] = {}
    kills = 0
    for _ in range(rounds):
        proc = _spawn(dsn, log, rate)
        time.sleep(rnd.uniform(0.3, 2.5))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        now = key_uuids(conn)
        assert all(now[k] == v for k, v in seen.items()), "a key UUID changed after being set"
        seen = now
    assert kills >= rounds // 2
    proc = _spawn(dsn, log)
    proc.wait(timeout=240)
    assert proc.returncode == 0, log.read_text()[-3000:]
    final = key_uuids(conn)
    assert all(final[k] == v for k, v in seen.items())
    assert problems(conn) == ALL_ZERO
    js = jobs(conn)
    # each row counted exactly once across all the killed runs: nothing skipped, nothing twice
    assert js["key:App Data.Parent.select"]["rows_done"] == len(keys)
    assert js["fk:App Data.order.Parent"]["rows_done"] == scalar(
        conn, sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL").format(CHILD.ident, q("Parent"))
    )
    assert state.load(conn, MID).phase is Phase.BACKFILLED


# -- (e) a concurrent writer -------------------------------------------------------------------


def _writer(dsn: str, stop: threading.Event, counts: dict[str, int]) -> None:
    rnd = random.Random(3)
    with psycopg.connect(dsn, autocommit=True) as w:
        ids = [
            r[0] for r in w.execute(sql.SQL("SELECT {} FROM {}").format(q("select"), PARENT.ident)).fetchall()
        ]
        next_id, child_id = 9 * 10**17, 2_000_000_000
        while not stop.is_set():
            with w.transaction():
                next_id += 1
                w.execute(
                    sql.SQL("INSERT INTO {} ({}, {}) VALUES (%s, %s)").format(
                        PARENT.ident, q("select"), q("Parent Id")
                    ),
                    (next_id, rnd.choice(ids)),
                )
                ids.append(next_id)
                child_id += 1
                w.execute(
                    sql.SQL("INSERT INTO {} (id, {}) VALUES (%s, %s)").format(CHILD.ident, q("Parent")),
                    (child_id, rnd.choice(ids)),
                )
                w.execute(sql.SQL("INSERT INTO {} (pid) VALUES (%s)").format(LEAF.ident), (rnd.choice(ids),))
                w.execute(
                    sql.SQL("UPDATE {} SET {} = %s WHERE id = (SELECT min(id) FROM {})").format(
                        CHILD.ident, q("Parent"), CHILD.ident
                    ),
                    (rnd.choice(ids),),
                )
            counts["tx"] += 1


@pytest.mark.parametrize(
    ("parents", "workers"),
    [(30_000, 1), pytest.param(400_000, 3, marks=pytest.mark.slow)],
    ids=["quick", "big-parallel"],
)
def test_concurrent_writer_every_row_right(
    dsn: str, conn: psycopg.Connection, parents: int, workers: int
) -> None:
    create_schema(conn, parents=parents, children=parents // 3, leaves=parents // 3)
    add_fk_triggers(conn)
    create_migration(conn)
    stop, counts = threading.Event(), {"tx": 0}
    t = threading.Thread(target=_writer, args=(dsn, stop, counts), daemon=True)
    t.start()
    try:
        wait_for(lambda: counts["tx"] > 5, what="writer")
        settings = BackfillSettings(
            initial_batch_size=300, max_batch_size=1000, vacuum_every_pct=20, workers=workers
        )
        result = run_backfill(dsn, MID, settings)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    assert result.phase == "backfilled"
    assert counts["tx"] > 20
    assert problems(conn) == ALL_ZERO


def test_barrier_waits_for_older_transactions(dsn: str, conn: psycopg.Connection) -> None:
    """A transaction open across the key backfill holds the FK pass back until it ends."""
    create_schema(conn, parents=2_000, children=200, leaves=0)
    create_migration(conn)
    other = psycopg.connect(dsn)
    other.execute("SELECT 1")  # an open transaction, begun before the barrier
    with Running(dsn, FAST) as run:
        wait_for(
            lambda: status.status(conn, MID)["barrier"]["waiting_on"] != [],
            timeout=20,
            what="barrier to report its waiters",
        )
        doc = status.status(conn, MID)
        assert doc["barrier"]["at"] and not doc["barrier"]["passed"]
        assert doc["barrier"]["waiting_on"][0]["pid"] == str(other.info.backend_pid)
        assert jobs(conn)["fk:App Data.order.Parent"]["state"] == "pending"
        other.rollback()
        run.join()
    other.close()
    assert problems(conn) == ALL_ZERO


def test_barrier_timeout_then_resume(dsn: str, conn: psycopg.Connection) -> None:
    from online_uuid.errors import BackfillError

    create_schema(conn, parents=500, children=50, leaves=0)
    create_migration(conn)
    other = psycopg.connect(dsn)
    other.execute("SELECT 1")
    try:
        with pytest.raises(BackfillError, match="online-uuid backfill"):
            run_backfill(dsn, MID, BackfillSettings(barrier_timeout_s=1, vacuum_every_pct=0))
        assert state.load(conn, MID).phase is Phase.BACKFILLING
    finally:
        other.close()
    result = run_backfill(dsn, MID, FAST)
    assert result.phase == "backfilled" and problems(conn) == ALL_ZERO


def test_stop_event_returns_cleanly_and_resumes(dsn: str, conn: psycopg.Connection, big: None) -> None:
    with Running(dsn, SLOW) as run:
        wait_for(lambda: rows_done(conn) > 0, what="first batch")
        run.stop.set()
        result = run.join()
    assert result.stopped and result.phase == "backfilling"
    assert state.load(conn, MID).phase is Phase.BACKFILLING
    done = run_backfill(dsn, MID, FAST)
    assert done.phase == "backfilled" and problems(conn) == ALL_ZERO


def test_parallel_workers(dsn: str, conn: psycopg.Connection) -> None:
    create_schema(conn, parents=10_000, children=5_000, leaves=5_000)
    create_migration(conn)
    result = run_backfill(dsn, MID, BackfillSettings(workers=3, vacuum_every_pct=0))
    assert result.phase == "backfilled" and problems(conn) == ALL_ZERO


def test_backfill_sessions_stay_on_one_core(dsn: str, conn: psycopg.Connection) -> None:
    """Parallel workers (scans, index vacuum) would take the application's cores."""
    ctx = RunContext(dsn, MID, FAST, make_plan(), Metrics(MID), NullProgress(), threading.Event())
    try:
        with ctx.connect() as session:
            shown = session.execute(
                "SELECT current_setting('max_parallel_workers_per_gather'), "
                "current_setting('max_parallel_maintenance_workers'), current_setting('application_name')"
            ).fetchone()
    finally:
        ctx.close()
    assert shown == ("0", "0", f"online-uuid/{MID}/backfill")
    # the server default is untouched
    assert scalar(conn, "SELECT current_setting('max_parallel_maintenance_workers')") != "0"
