"""`online-uuid start` killed with SIGKILL at every point, then rerun: the end state must be exactly
that of an uninterrupted run on an identical database (pg_dump, catalog and state compared).

How a run is stopped at a chosen point, with no hook in the tool: something holds a lock the run
needs next, the run waits (retrying), and we SIGKILL it there.

- while creating its migration: a SHARE lock on online_uuid.migrations blocks the INSERT;
- before step 1: a long transaction reading step 1's table blocks its ALTER TABLE;
- inside step k (its DDL done, not yet committed): an uncommitted row with step k's id in
  online_uuid.steps makes the run's own `mark step k done` wait;
- after the last step, before the phase moves to `expanded`: the migration row locked FOR NO KEY UPDATE.

After the kill the server ends the dead client's session (pg_terminate_backend: what it does once
it notices), the blocker lets go, and the same command runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from online_uuid import api, state
from online_uuid.phases.start import start_steps
from support.cli import kill9, run_cli, spawn_cli
from support.schema import (
    PUBLIC,
    VARIANTS,
    Names,
    create_schema,
    fk_shadow,
    fresh_database,
    insert,
    key_shadow,
)
from support.sessions import backends, end_backends, wait_for, waiting_on_lock
from support.snapshots import catalog_snapshot, phase_of, schema_dump, state_snapshot, steps_done

APP = "online-uuid/"  # application_name prefix of every online-uuid session


def _start_argv(dsn: str, n: Names, lock_timeout_ms: int = 200, source: str = "random") -> list[str]:
    tables = [a for t in n.table_args() for a in ("--table", t)]
    # Retry "forever" so that a run stopped at a lock stays there until killed.
    return [
        "start",
        "--no-backfill",
        "--dsn",
        dsn,
        *tables,
        "--lock-timeout",
        str(lock_timeout_ms),
        "--max-attempts",
        "100000",
        "--retry-for",
        "600",
        "--uuid-source",
        source,
    ]


@dataclass(frozen=True)
class Point:
    """Where to stop a run: `hold(dsn, mid)` takes the lock and returns the blocker's connection;
    `reached(conn, mid)` tells when the run waits there."""

    name: str
    hold: Callable[[str, str], psycopg.Connection]
    reached: Callable[[psycopg.Connection, str], bool]


def _hold_create(dsn: str, _mid: str) -> psycopg.Connection:
    b = psycopg.connect(dsn, application_name="blocker")
    b.execute("LOCK TABLE online_uuid.migrations IN SHARE MODE")
    return b


def _hold_table(table: sql.Identifier) -> Callable[[str, str], psycopg.Connection]:
    def hold(dsn: str, _mid: str) -> psycopg.Connection:
        b = psycopg.connect(dsn, application_name="blocker")
        b.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(table))  # a long transaction: ACCESS SHARE
        return b

    return hold


def _hold_step(step_id: str) -> Callable[[str, str], psycopg.Connection]:
    def hold(dsn: str, mid: str) -> psycopg.Connection:
        b = psycopg.connect(dsn, application_name="blocker")
        b.execute("INSERT INTO online_uuid.steps (migration_id, step_id) VALUES (%s, %s)", (mid, step_id))
        return b

    return hold


def _hold_steps_table(dsn: str, _mid: str) -> psycopg.Connection:
    """Blocks the first step's record (its DDL done): a step that locks no table, before any other."""
    b = psycopg.connect(dsn, application_name="blocker")
    b.execute("LOCK TABLE online_uuid.steps IN SHARE MODE")
    return b


def _hold_move(dsn: str, mid: str) -> psycopg.Connection:
    b = psycopg.connect(dsn, application_name="blocker")
    # (NO KEY: the FK checks of the run's own step rows take KEY SHARE on this row and must pass)
    b.execute("SELECT 1 FROM online_uuid.migrations WHERE id = %s FOR NO KEY UPDATE", (mid,))
    return b


def _waiting_after(n_steps: int, query_has: str) -> Callable[[psycopg.Connection, str], bool]:
    """The run waits in a statement containing `query_has`, with exactly `n_steps` steps done."""

    def reached(conn: psycopg.Connection, mid: str) -> bool:
        return waiting_on_lock(conn, APP, query_has) and len(steps_done(conn, mid)) == n_steps

    return reached


def crash_points(dsn: str, n: Names, source: str = "random") -> tuple[str, list[Point]]:
    """(migration id, every point a run can be killed at), in the order a run passes them.

    Derived mode starts with a step that locks no table (the derive functions): it is killed inside.
    """
    plan = api.plan(dsn, n.table_args(), uuid_source=source)
    steps = start_steps(plan)
    mid = plan.keys[0].table.name  # the default migration name
    first = next(i for i, st in enumerate(steps) if st.tables)
    # (waiting to record step i+1 done means its DDL ran, in the transaction the kill will abort)
    inside = [
        Point(
            f"inside {st.id}",
            _hold_steps_table if i < first else _hold_step(st.id),
            _waiting_after(i, '"online_uuid"."steps"'),
        )
        for i, st in enumerate(steps)
    ]
    points = [
        Point(
            "creating the migration",
            _hold_create,
            lambda c, _m: waiting_on_lock(c, APP, 'INSERT INTO "online_uuid"."migrations"'),
        ),
        *inside[:first],
        Point(
            f"before {steps[first].id}",
            _hold_table(steps[first].tables[0].ident),
            _waiting_after(first, "ALTER TABLE"),
        ),
        *inside[first + 1 :],
    ]
    points.append(
        Point(
            "before the move to expanded",
            _hold_move,
            _waiting_after(len(steps), 'UPDATE "online_uuid"."migrations" SET phase'),
        )
    )
    return mid, points


def kill_at(
    dsn: str, conn: psycopg.Connection, n: Names, mid: str, point: Point, source: str = "random"
) -> None:
    """Run start, let it reach `point`, SIGKILL it, and clean up as the server would."""
    blocker = point.hold(dsn, mid)
    try:
        proc = spawn_cli(*_start_argv(dsn, n, source=source))
        try:
            wait_for(
                lambda: point.reached(conn, mid) or proc.poll() is not None,
                timeout=60,
                what=f"start to reach: {point.name}",
            )
            assert proc.poll() is None, f"start ended before {point.name}: {proc.communicate()}"
        finally:
            kill9(proc)
        end_backends(conn, APP)
    finally:
        blocker.rollback()
        blocker.close()


def end_state(conn: psycopg.Connection, pg_bin: Path, dsn: str) -> dict[str, Any]:
    """Derived mode's secret differs from run to run: it is masked in the dump and the catalog."""
    secrets = [bytes(r[0]).hex() for r in conn.execute("SELECT secret FROM online_uuid.secrets").fetchall()]

    def mask(text: str) -> str:
        for s in secrets:
            text = text.replace(s, "SECRET")
        return text

    catalog = {
        k: [tuple(mask(v) if isinstance(v, str) else v for v in row) for row in rows]
        for k, rows in catalog_snapshot(conn).items()
    }
    return {"dump": mask(schema_dump(pg_bin, dsn)), "catalog": catalog, "state": state_snapshot(conn)}


@contextmanager
def reference(pg_server: Any, n: Names, pg_bin: Path, source: str = "random") -> Iterator[dict[str, Any]]:
    """The end state of one uninterrupted run on an identical database."""
    with (
        fresh_database(pg_server.dsn, pg_server.dsn_for) as ref_dsn,
        psycopg.connect(ref_dsn, autocommit=True) as ref,
    ):
        create_schema(ref, n)
        done = run_cli(*_start_argv(ref_dsn, n, source=source))
        assert done.returncode == 0, done.stderr
        yield end_state(ref, pg_bin, ref_dsn)


def assert_same_end(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["state"] == want["state"]
    assert got["catalog"] == want["catalog"]
    assert got["dump"] == want["dump"]


def assert_dual_writes(conn: psycopg.Connection, n: Names) -> None:
    """The rerun's triggers work: a new parent and its children get the right UUIDs."""
    p = insert(conn, n.parent)
    kids = {t: insert(conn, t, fk=p) for t in (n.child, n.dchild)}
    pu = key_shadow(conn, n.parent, p)
    assert pu is not None
    assert all(fk_shadow(conn, t, k) == pu for t, k in kids.items())
    top = insert(conn, n.node)
    leaf = insert(conn, n.node, fk=top)
    assert fk_shadow(conn, n.node, leaf) == key_shadow(conn, n.node, top) is not None


# The quoted variant by default (every name needs quoting, and it passes the same points);
# `public` too with -m slow, besides each point on its own below.
@pytest.mark.parametrize("source", ["derived", "random"])
@pytest.mark.parametrize("variant", [pytest.param("public", marks=pytest.mark.slow), "quoted"])
def test_killed_at_every_point_then_rerun_ends_like_an_uninterrupted_run(
    dsn: str, conn: psycopg.Connection, pg_server: Any, pg_bin: Path, variant: str, source: str
) -> None:
    """One database, one run killed at each point in turn (each rerun resumes, then is killed at the next)."""
    n = VARIANTS[variant]
    create_schema(conn, n)
    mid, points = crash_points(dsn, n, source)
    state.ensure_schema(conn)  # (a first run killed right after creating the state schema)
    seen: list[list[str]] = []
    for point in points:
        kill_at(dsn, conn, n, mid, point, source)
        seen.append(steps_done(conn, mid) if phase_of(conn, mid) else [])
        assert phase_of(conn, mid) in (None, "expanding"), point.name
    # Each kill left exactly the steps before it done, no more and no fewer.
    assert [len(s) for s in seen] == [0, 0, *range(1, len(points) - 1)]
    done = run_cli(*_start_argv(dsn, n, source=source))
    assert done.returncode == 0, done.stderr
    with reference(pg_server, n, pg_bin, source) as want:
        assert_same_end(end_state(conn, pg_bin, dsn), want)
    assert phase_of(conn, mid) == "expanded"
    assert_dual_writes(conn, n)


def _point_ids() -> list[str]:
    return ["create", "step1", "step2", "step3", "step4", "step5", "step6", "step7", "move"]


@pytest.mark.slow
@pytest.mark.parametrize("at", range(len(_point_ids())), ids=_point_ids())
def test_killed_once_then_rerun_ends_like_an_uninterrupted_run(
    dsn: str, conn: psycopg.Connection, pg_server: Any, pg_bin: Path, at: int
) -> None:
    """Each point on its own: a single kill there, a single rerun."""
    n = PUBLIC
    create_schema(conn, n)
    mid, points = crash_points(dsn, n)
    assert len(points) == len(_point_ids())
    state.ensure_schema(conn)
    if at >= 2:  # the migration must exist for the later points: a run killed before step 1 made it
        kill_at(dsn, conn, n, mid, points[1])
    kill_at(dsn, conn, n, mid, points[at])
    done = run_cli(*_start_argv(dsn, n))
    assert done.returncode == 0, done.stderr
    with reference(pg_server, n, pg_bin) as want:
        assert_same_end(end_state(conn, pg_bin, dsn), want)
    assert_dual_writes(conn, n)


def test_rerun_right_after_a_kill_waits_for_the_dead_runs_session(
    dsn: str, conn: psycopg.Connection, pg_server: Any, pg_bin: Path
) -> None:
    """No cleanup by hand: the killed run's session lingers until its lock wait ends, the rerun waits."""
    n = PUBLIC
    create_schema(conn, n)
    mid, points = crash_points(dsn, n)
    blocker = points[1].hold(dsn, mid)  # a long transaction on step 1's table
    try:
        proc = spawn_cli(*_start_argv(dsn, n, lock_timeout_ms=3000))
        try:
            wait_for(lambda: points[1].reached(conn, mid), timeout=60, what="start to wait for step 1")
        finally:
            kill9(proc)
        assert backends(conn, APP), "the killed run's session should still be there"
    finally:
        blocker.rollback()
        blocker.close()
    done = run_cli(*_start_argv(dsn, n))
    assert done.returncode == 0, done.stderr
    with reference(pg_server, n, pg_bin) as want:
        assert_same_end(end_state(conn, pg_bin, dsn), want)
