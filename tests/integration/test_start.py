"""`start` (expand) on a real server with the application writing: shadow columns, dual-write
triggers, state in the database, lock etiquette, and rollback before cutover.

Each test runs twice: on `public` with plain names and on schema "App Data" whose tables and
columns all need quoting ("Order", "AuditLog", "user", "group"; "ID", "invited By", "order").

The dual-write cases share one database per variant, expanded by `start` while a writer thread
(the application: it never names a shadow column) kept writing, and still writing. Each case
writes its own rows and checks them, then checks every row the application wrote meanwhile.
Rows from before `start` keep NULL shadows until the backfill (not run there).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from online_uuid import api, state
from online_uuid.settings import StartSettings
from support.cli import error_lines, invoke_cli, kill9, run_cli, spawn_cli
from support.schema import (
    PUBLIC,
    VARIANTS,
    Names,
    Table,
    create_schema,
    dual_write_problems,
    fresh_database,
    insert,
    key_shadow,
    next_key,
    shadows,
)
from support.schema import fk_shadow as read_fk_shadow
from support.sessions import backends, wait_for, waiting_on_lock
from support.snapshots import catalog_snapshot, phase_of, schema_dump, state_snapshot, steps_done
from support.workload import Touched, Writer, app_workload, touched_since
from support.workload import writing as app_writing

# This module tests the lookup dual-write (random mode) in depth; tests/integration/test_derived.py
# does the same for derived UUIDs, and the rollback test below runs in both modes.
NO_BACKFILL = StartSettings(backfill=False, uuid_source="random")


@pytest.fixture(params=["public", "quoted"])
def names(request: pytest.FixtureRequest) -> Names:
    return VARIANTS[request.param]


@dataclass
class Live:
    """A migration expanded while the application kept writing, and still writing.

    One per variant, shared by the module's dual-write tests (each writes and checks its own rows,
    and checks every row the application wrote while it ran).
    """

    dsn: str
    conn: psycopg.Connection
    n: Names
    mid: str
    writer: Writer
    started_at: float  # monotonic time start returned
    touched: Touched = field(default_factory=list)
    since: float = 0.0  # monotonic time the current test began

    def check(self) -> None:
        """The application met no error, kept writing, and every row it wrote meanwhile is right."""
        wait_for(
            lambda: self.writer.calls_since(self.since) > 3 or self.writer.errors,
            what="the application to write during the test",
        )
        assert self.writer.errors == [], self.writer.errors[:5]
        written, inserted = touched_since(self.touched, self.since)
        assert sum(map(len, inserted.values())) > 0
        assert dual_write_problems(self.conn, self.n, written, inserted) == []


@pytest.fixture(scope="module", params=["public", "quoted"])
def shared_live(pg_server: Any, request: pytest.FixtureRequest) -> Iterator[Live]:
    n = VARIANTS[request.param]
    with (
        fresh_database(pg_server.dsn, pg_server.dsn_for) as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        create_schema(conn, n)
        touched: Touched = []
        writer = Writer(dsn, app_workload(n, touched), name="application").start()
        try:
            wait_for(lambda: writer.calls > 5, what="the writer to get going")
            mid = api.start(dsn, n.table_args(), settings=NO_BACKFILL)  # while the application writes
            yield Live(dsn, conn, n, mid, writer, time.monotonic(), touched)
        finally:
            writer.stop()


@pytest.fixture
def live(shared_live: Live) -> Live:
    shared_live.since = time.monotonic()
    return shared_live


def _u(value: Any) -> uuid.UUID:
    assert isinstance(value, uuid.UUID), f"expected a UUID, got {value!r}"
    return value


# --- what start builds ------------------------------------------------------------------------


def _columns(conn: psycopg.Connection, t: Table) -> dict[str, tuple[str, bool, str | None]]:
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(d.adbin, d.adrelid)
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped""",
        (t.ident.as_string(conn),),
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _data(conn: psycopg.Connection, t: Table) -> list[tuple[Any, ...]]:
    cols = [t.i(t.pk), *([t.i(t.fk)] if t.fk else []), sql.Identifier("note")]
    q = sql.SQL("SELECT {} FROM {} ORDER BY 1").format(sql.SQL(", ").join(cols), t.ident)
    return [tuple(r) for r in conn.execute(q).fetchall()]


def _app(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Catalog rows of the application's schemas (the state schema left out)."""
    return [r for r in rows if r[0] != "online_uuid"]


def test_start_adds_nullable_uuid_shadows_and_triggers_and_touches_no_data(
    dsn: str, conn: psycopg.Connection, names: Names
) -> None:
    create_schema(conn, names)
    before = catalog_snapshot(conn)
    data = {t.name: _data(conn, t) for t in names.tables()}

    mid = api.start(dsn, names.table_args(), settings=NO_BACKFILL)

    after = catalog_snapshot(conn)
    # The application's constraints and indexes are exactly as they were (names included).
    # (the fix-up triggers are constraint triggers, listed in pg_constraint as TRIGGER ...)
    assert [c for c in _app(after["constraints"]) if not str(c[3]).startswith("TRIGGER")] == _app(
        before["constraints"]
    )
    assert _app(after["indexes"]) == _app(before["indexes"])
    for t in names.tables():
        cols = _columns(conn, t)
        assert cols[t.pk_shadow] == ("uuid", False, "gen_random_uuid()")
        if t.fk:
            assert cols[t.fk_shadow] == ("uuid", False, None)
        # Existing rows are untouched: same integers, shadows still NULL until the backfill.
        assert _data(conn, t) == data[t.name]
        nulls = conn.execute(
            sql.SQL("SELECT count(*) FILTER (WHERE {} IS NOT NULL) FROM {}").format(t.i(t.pk_shadow), t.ident)
        ).fetchone()
        assert nulls == (0,)
    triggers = {(r[1], r[2]) for r in after["triggers"]}
    expected = set()
    for t in names.tables():
        expected |= {(t.name, f"~ou_{t.name}_{t.pk}_key"), (t.name, f"~ou_{t.name}_{t.pk}_key_keep")}
        if t.fk:  # BEFORE triggers sort after the application's; the deferred fix-up before RI checks
            expected |= {
                (t.name, f"~ou_{t.name}_{t.fk}_fk"),
                (t.name, f"~ou_{t.name}_{t.fk}_fk_upd"),
                (t.name, f"OU_{t.name}_{t.fk}_fkfix"),
            }
    assert triggers == expected
    # Trigger functions live in the state schema only. The hot ones run as the invoker (every writer
    # here may read the parent) with schema-qualified operators; the rare fix-up runs as definer,
    # pinned to a safe search_path.
    funcs = [r for r in after["functions"] if r[0] != "online_uuid"]
    assert funcs == []
    for _, name, body in (r for r in after["functions"] if r[0] == "online_uuid"):
        definer = "SECURITY DEFINER" in body
        assert definer == name.endswith("_fkfix_fn"), name
        if definer:
            assert "search_path TO 'pg_catalog', 'pg_temp'" in body, name
        if name.endswith("_fk_fn"):
            assert "OPERATOR(pg_catalog.=)" in body, name
    snap = state_snapshot(conn)[mid]
    assert snap["phase"] == "expanded"
    assert sorted(snap["steps"]) == sorted(
        [f"start:key:{t.schema}.{t.name}.{t.pk}" for t in names.tables()]
        + [f"start:fk:{t.schema}.{t.name}.{t.fk}" for t in names.children()]
    )


# --- every write after start gets correct shadows ------------------------------------------


def test_parent_insert_gets_a_fresh_uuid(live: Live) -> None:
    conn, p = live.conn, live.n.parent
    one = insert(conn, p)
    row = conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES (NULL) RETURNING {}").format(p.ident, p.i(p.pk_shadow), p.i(p.pk))
    ).fetchone()  # an explicit NULL gets one too
    assert row is not None
    many = [
        r[0]
        for r in conn.execute(
            sql.SQL("INSERT INTO {} (note) SELECT 'bulk' FROM generate_series(1, 50) RETURNING {}").format(
                p.ident, p.i(p.pk)
            )
        ).fetchall()
    ]
    got = [_u(key_shadow(conn, p, k)) for k in [one, row[0], *many]]
    assert all(g.version == 4 for g in got)
    assert len(set(got)) == len(got)
    live.check()


def test_child_insert_copies_its_parents_uuid(live: Live) -> None:
    conn, n = live.conn, live.n
    parent = insert(conn, n.parent)
    pu = _u(key_shadow(conn, n.parent, parent))
    for t in (n.child, n.dchild):
        kid = insert(conn, t, fk=parent)
        shadow, fk, fk_shadow = shadows(conn, t, kid)
        assert (fk, fk_shadow) == (parent, pu)
        assert _u(shadow) != pu
    # A parent from before start has no UUID until the backfill: its new child waits with it.
    old_kid = insert(conn, n.child, fk=1)
    assert key_shadow(conn, n.parent, 1) is None
    assert read_fk_shadow(conn, n.child, old_kid) is None
    live.check()


def test_null_fk_gives_a_null_shadow_and_back(live: Live) -> None:
    conn, n = live.conn, live.n
    parent = insert(conn, n.parent)
    pu = key_shadow(conn, n.parent, parent)
    for t in (n.child, n.dchild, n.node):
        kid = insert(conn, t, fk=None)
        assert shadows(conn, t, kid)[1:] == (None, None)
        ref = parent if t is not n.node else kid
        ref_u = pu if t is not n.node else key_shadow(conn, t, kid)
        upd = sql.SQL("UPDATE {} SET {} = %s WHERE {} = %s").format(t.ident, t.i(t.fk or ""), t.i(t.pk))
        conn.execute(upd, (ref, kid))
        assert shadows(conn, t, kid)[1:] == (ref, ref_u)
        conn.execute(upd, (None, kid))
        assert shadows(conn, t, kid)[1:] == (None, None)
    live.check()


def test_self_references_to_another_row_and_to_itself(live: Live) -> None:
    conn, nd = live.conn, live.n.node
    top = insert(conn, nd)
    below = insert(conn, nd, fk=top)
    assert read_fk_shadow(conn, nd, below) == _u(key_shadow(conn, nd, top))
    # INSERT (id, parent_id) VALUES (k, k): the row references itself.
    k = next_key(conn, nd)
    conn.execute(
        sql.SQL("INSERT INTO {} ({}, {}) VALUES (%s, %s)").format(nd.ident, nd.i(nd.pk), nd.i(nd.fk or "")),
        (k, k),
    )
    own, fk, fk_shadow = shadows(conn, nd, k)
    assert (fk, fk_shadow) == (k, _u(own))
    # An existing row pointed at itself by UPDATE.
    conn.execute(
        sql.SQL("UPDATE {} SET {} = {} WHERE {} = %s").format(
            nd.ident, nd.i(nd.fk or ""), nd.i(nd.pk), nd.i(nd.pk)
        ),
        (below,),
    )
    own, fk, fk_shadow = shadows(conn, nd, below)
    assert (fk, fk_shadow) == (below, _u(own))
    live.check()


def test_parent_and_child_in_one_transaction_and_one_statement(live: Live) -> None:
    conn, n = live.conn, live.n
    with conn.transaction():
        parent = insert(conn, n.parent)
        kid = insert(conn, n.child, fk=parent)
        dkid = insert(conn, n.dchild, fk=parent)
        top = insert(conn, n.node)
        leaf = insert(conn, n.node, fk=top)
        # Already right inside the transaction, not only after it.
        assert read_fk_shadow(conn, n.child, kid) == _u(key_shadow(conn, n.parent, parent))
    pu = key_shadow(conn, n.parent, parent)
    assert read_fk_shadow(conn, n.child, kid) == pu and read_fk_shadow(conn, n.dchild, dkid) == pu
    assert read_fk_shadow(conn, n.node, leaf) == key_shadow(conn, n.node, top)
    # A writable CTE: parent and child in one statement.
    p, c = n.parent, n.child
    row = conn.execute(
        sql.SQL(
            "WITH p AS (INSERT INTO {} (note) VALUES ('cte') RETURNING {}) "
            "INSERT INTO {} ({}) SELECT {} FROM p RETURNING {}, {}"
        ).format(p.ident, p.i(p.pk), c.ident, c.i(c.fk or ""), p.i(p.pk), c.i(c.pk), c.i(c.fk or ""))
    ).fetchone()
    assert row is not None
    assert read_fk_shadow(conn, c, row[0]) == _u(key_shadow(conn, p, row[1]))
    live.check()


def test_multi_row_insert_where_the_referenced_row_comes_later(live: Live) -> None:
    """The deferred fix-up trigger fills what the row trigger could not see yet."""
    conn, nd = live.conn, live.n.node
    a, b, c, x, y = (next_key(conn, nd) for _ in range(5))
    ins = sql.SQL("INSERT INTO {} ({}, {}) VALUES (%s, %s), (%s, %s), (%s, %s)").format(
        nd.ident, nd.i(nd.pk), nd.i(nd.fk or "")
    )
    conn.execute(ins, (a, b, b, c, c, None))  # a -> b -> c, each referenced row inserted after its child
    for kid, ref in ((a, b), (b, c)):
        assert read_fk_shadow(conn, nd, kid) == _u(key_shadow(conn, nd, ref))
    # A cycle x <-> y, and the same inside an explicit transaction (right at commit).
    with conn.transaction():
        conn.execute(
            sql.SQL("INSERT INTO {} ({}, {}) VALUES (%s, %s), (%s, %s)").format(
                nd.ident, nd.i(nd.pk), nd.i(nd.fk or "")
            ),
            (x, y, y, x),
        )
    assert read_fk_shadow(conn, nd, x) == _u(key_shadow(conn, nd, y))
    assert read_fk_shadow(conn, nd, y) == _u(key_shadow(conn, nd, x))
    live.check()


def test_key_change_with_on_update_cascade_keeps_the_uuid(live: Live) -> None:
    conn, n = live.conn, live.n
    p, c, nd = n.parent, n.child, n.node
    parent = insert(conn, p)
    pu = _u(key_shadow(conn, p, parent))
    kids = [insert(conn, c, fk=parent) for _ in range(3)]
    new_key = next_key(conn, p) + 1000
    conn.execute(
        sql.SQL("UPDATE {} SET {} = %s WHERE {} = %s").format(p.ident, p.i(p.pk), p.i(p.pk)),
        (new_key, parent),
    )
    assert key_shadow(conn, p, new_key) == pu  # a key's UUID never changes
    for kid in kids:
        assert shadows(conn, c, kid)[1:] == (new_key, pu)
    # Self-referencing cascade, including a row that references itself.
    k = next_key(conn, nd)
    conn.execute(
        sql.SQL("INSERT INTO {} ({}, {}) VALUES (%s, %s)").format(nd.ident, nd.i(nd.pk), nd.i(nd.fk or "")),
        (k, k),
    )
    leaf = insert(conn, nd, fk=k)
    ku = _u(key_shadow(conn, nd, k))
    conn.execute(
        sql.SQL("UPDATE {} SET {} = %s WHERE {} = %s").format(nd.ident, nd.i(nd.pk), nd.i(nd.pk)),
        (k + 5000, k),
    )
    assert shadows(conn, nd, k + 5000) == (ku, k + 5000, ku)
    assert shadows(conn, nd, leaf)[1:] == (k + 5000, ku)
    live.check()


def test_deferrable_fk_child_inserted_before_its_parent(live: Live) -> None:
    conn, p, d = live.conn, live.n.parent, live.n.dchild
    with conn.transaction():
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        key = next_key(conn, p)
        kid = insert(conn, d, fk=key)
        assert read_fk_shadow(conn, d, kid) == uuid.UUID(int=0)  # parent not there yet: marked for the fix-up
        insert(conn, p, pk=key)
    assert shadows(conn, d, kid)[1:] == (key, _u(key_shadow(conn, p, key)))
    live.check()


def test_deferred_child_updated_before_its_parent_arrives(live: Live) -> None:
    conn, p, d = live.conn, live.n.parent, live.n.dchild
    with conn.transaction():
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        key = next_key(conn, p)
        kid = insert(conn, d, fk=key)
        conn.execute(
            sql.SQL("UPDATE {} SET note = 'edited' WHERE {} = %s").format(d.ident, d.i(d.pk)), (kid,)
        )
        insert(conn, p, pk=key)
    assert shadows(conn, d, kid)[1:] == (key, _u(key_shadow(conn, p, key)))
    live.check()


def test_copy_fills_shadows_like_insert(live: Live) -> None:
    conn, n = live.conn, live.n
    p, c, nd = n.parent, n.child, n.node
    keys = [next_key(conn, p) for _ in range(20)]
    with conn.cursor() as cur:
        with cur.copy(sql.SQL("COPY {} ({}, note) FROM STDIN").format(p.ident, p.i(p.pk))) as cp:
            for k in keys:
                cp.write_row((k, "copied"))
        with cur.copy(sql.SQL("COPY {} ({}, note) FROM STDIN").format(c.ident, c.i(c.fk or ""))) as cp:
            for i, k in enumerate(keys):
                cp.write_row((None if i % 4 == 0 else k, "copied"))
        a, b, s = (next_key(conn, nd) for _ in range(3))
        with cur.copy(
            sql.SQL("COPY {} ({}, {}) FROM STDIN").format(nd.ident, nd.i(nd.pk), nd.i(nd.fk or ""))
        ) as cp:
            for row in ((a, b), (b, None), (s, s)):  # a's parent comes later; s references itself
                cp.write_row(row)
    pus = {k: _u(key_shadow(conn, p, k)) for k in keys}
    assert len(set(pus.values())) == len(keys)
    copied = conn.execute(
        sql.SQL("SELECT {}, {} FROM {} WHERE note = 'copied'").format(
            c.i(c.fk or ""), c.i(c.fk_shadow), c.ident
        )
    ).fetchall()
    assert len(copied) == len(keys)
    assert all(fks == (pus[fk] if fk is not None else None) for fk, fks in copied)
    assert read_fk_shadow(conn, nd, a) == _u(key_shadow(conn, nd, b))
    assert read_fk_shadow(conn, nd, s) == _u(key_shadow(conn, nd, s))
    live.check()


def test_an_established_key_uuid_cannot_be_changed(live: Live) -> None:
    conn, n = live.conn, live.n
    p = n.parent
    parent = insert(conn, p)
    kid = insert(conn, n.child, fk=parent)
    pu = _u(key_shadow(conn, p, parent))
    set_shadow = sql.SQL("UPDATE {} SET {} = %s, note = %s WHERE {} = %s").format(
        p.ident, p.i(p.pk_shadow), p.i(p.pk)
    )
    conn.execute(set_shadow, (None, "to null", parent))
    conn.execute(set_shadow, (uuid.uuid4(), "to another", parent))
    row = conn.execute(
        sql.SQL("SELECT {}, note FROM {} WHERE {} = %s").format(p.i(p.pk_shadow), p.ident, p.i(p.pk)),
        (parent,),
    ).fetchone()
    assert row == (pu, "to another")  # the rest of the UPDATE applies, the UUID stays
    assert read_fk_shadow(conn, n.child, kid) == pu
    # A row from before start has none yet: giving it one is allowed (that is what the backfill does).
    old = conn.execute(
        sql.SQL("SELECT max({}) FROM {} WHERE note = 'reserved'").format(p.i(p.pk), p.ident)
    ).fetchone()
    assert old is not None and key_shadow(conn, p, old[0]) is None
    given = uuid.uuid4()
    conn.execute(set_shadow, (given, "reserved", old[0]))
    assert key_shadow(conn, p, old[0]) == given
    conn.execute(set_shadow, (uuid.uuid4(), "reserved", old[0]))
    assert key_shadow(conn, p, old[0]) == given
    live.check()


def test_moving_a_child_to_another_parent_moves_its_shadow(live: Live) -> None:
    conn, n = live.conn, live.n
    p1, p2 = insert(conn, n.parent), insert(conn, n.parent)
    u2 = _u(key_shadow(conn, n.parent, p2))
    for t in (n.child, n.dchild):
        kid = insert(conn, t, fk=p1)
        conn.execute(
            sql.SQL("UPDATE {} SET {} = %s WHERE {} = %s").format(t.ident, t.i(t.fk or ""), t.i(t.pk)),
            (p2, kid),
        )
        assert shadows(conn, t, kid)[1:] == (p2, u2)
        conn.execute(
            sql.SQL("UPDATE {} SET {} = 1 WHERE {} = %s").format(t.ident, t.i(t.fk or ""), t.i(t.pk)), (kid,)
        )
        assert shadows(conn, t, kid)[1:] == (1, None)  # parent 1 predates start: no UUID yet
    nd = n.node
    a, b = insert(conn, nd), insert(conn, nd)
    leaf = insert(conn, nd, fk=a)
    conn.execute(
        sql.SQL("UPDATE {} SET {} = %s WHERE {} = %s").format(nd.ident, nd.i(nd.fk or ""), nd.i(nd.pk)),
        (b, leaf),
    )
    assert read_fk_shadow(conn, nd, leaf) == _u(key_shadow(conn, nd, b))
    live.check()


def test_upsert_keeps_the_key_uuid_and_moves_the_child(live: Live) -> None:
    """INSERT ... ON CONFLICT DO UPDATE, as ORMs write: the update path follows the same rules."""
    conn, n = live.conn, live.n
    p, c = n.parent, n.child
    p1, p2 = insert(conn, p), insert(conn, p)
    u1, u2 = _u(key_shadow(conn, p, p1)), _u(key_shadow(conn, p, p2))
    conn.execute(
        sql.SQL(
            "INSERT INTO {} ({}, note) VALUES (%s, 'upserted') "
            "ON CONFLICT ({}) DO UPDATE SET note = excluded.note"
        ).format(p.ident, p.i(p.pk), p.i(p.pk)),
        (p1,),
    )
    assert key_shadow(conn, p, p1) == u1
    kid = insert(conn, c, fk=p1)
    upsert_child = sql.SQL(
        "INSERT INTO {} ({}, {}) VALUES (%s, %s) ON CONFLICT ({}) DO UPDATE SET {} = excluded.{}"
    ).format(c.ident, c.i(c.pk), c.i(c.fk or ""), c.i(c.pk), c.i(c.fk or ""), c.i(c.fk or ""))
    conn.execute(upsert_child, (kid, p2))
    assert shadows(conn, c, kid)[1:] == (p2, u2)
    conn.execute(upsert_child, (kid, None))
    assert shadows(conn, c, kid)[1:] == (None, None)
    live.check()


def test_everything_written_during_and_after_start_is_consistent_after_a_live_backfill(
    dsn: str, conn: psycopg.Connection, names: Names
) -> None:
    create_schema(conn, names)
    with app_writing(dsn, app_workload(names)) as w:
        wait_for(lambda: w.calls > 5, what="the writer")
        api.start(dsn, names.table_args(), settings=NO_BACKFILL)
        # parent 1 predates start: no UUID yet ('reserved': the writer leaves this child alone)
        old_kid = insert(conn, names.child, fk=1, note="reserved")
        assert read_fk_shadow(conn, names.child, old_kid) is None
        wait_for(lambda: w.calls > 60, what="more writes")
        api.backfill(dsn)  # the application keeps writing meanwhile
        wait_for(lambda: w.calls > 120, what="writes after the backfill")
    assert w.errors == []
    assert read_fk_shadow(conn, names.child, old_kid) == _u(key_shadow(conn, names.parent, 1))
    assert dual_write_problems(conn, names) == []
    assert api.verify(dsn).ok


def test_same_table_names_in_two_schemas(dsn: str, conn: psycopg.Connection) -> None:
    for s in ("a", "b"):
        conn.execute(
            sql.SQL(
                "CREATE SCHEMA {0}; CREATE TABLE {0}.p (id serial PRIMARY KEY);"
                "CREATE TABLE {0}.c (id serial PRIMARY KEY, p_id int REFERENCES {0}.p)"
            ).format(sql.Identifier(s))
        )
    api.start(dsn, ["a.p", "b.p"], settings=NO_BACKFILL)
    for s in ("a", "b"):
        pid, pu = conn.execute(
            sql.SQL("INSERT INTO {}.p DEFAULT VALUES RETURNING id, id_uuid").format(sql.Identifier(s))
        ).fetchone() or (None, None)
        got = conn.execute(
            sql.SQL("INSERT INTO {}.c (p_id) VALUES (%s) RETURNING p_id_uuid").format(sql.Identifier(s)),
            (pid,),
        ).fetchone()
        assert got == (pu,)


# --- locks: start waits politely and gives up naming who blocks it ----------------------------


def test_blocked_start_gives_up_with_exit_3_naming_the_blocker_without_stalling_writers(
    dsn: str, conn: psycopg.Connection, names: Names
) -> None:
    create_schema(conn, names)
    c = names.child
    lock_timeout_ms = 300
    blocker = psycopg.connect(dsn, application_name="nightly report")
    try:
        blocker.execute(sql.SQL("SELECT count(*) FROM {}").format(c.ident))  # open transaction: ACCESS SHARE
        blocker_pid = blocker.info.backend_pid

        def quick(wc: psycopg.Connection, _rng: Any) -> None:
            k = insert(wc, c, fk=1, note="quick")
            wc.execute(
                sql.SQL("SELECT note FROM {} WHERE {} = %s").format(c.ident, c.i(c.pk)), (k,)
            ).fetchone()

        with app_writing(dsn, quick, name="latency probe", pause_s=0.005) as probe:
            t0 = time.monotonic()
            done = run_cli(
                "start",
                "--no-backfill",
                "--dsn",
                dsn,
                *_targs(names),
                "--lock-timeout",
                str(lock_timeout_ms),
                "--max-attempts",
                "5",
                "--retry-for",
                "30",
            )
            t1 = time.monotonic()
        assert done.returncode == 3, done.stderr
        [line] = error_lines(done.stderr)
        assert f"pid {blocker_pid}" in line and "nightly report" in line, line
        assert c.name in line
        # The application's statements on that table waited at most one lock_timeout each.
        assert probe.errors == []
        assert probe.calls_since(t0) > 20
        worst = probe.max_latency(t0, t1)
        print(
            f"worst writer latency while start was blocked: {worst:.3f} s over {probe.calls_since(t0)} calls"
        )
        assert worst < lock_timeout_ms / 1000 + 0.5, f"a writer statement took {worst:.3f} s"
        # ...and they did queue behind start's lock request (else this measured nothing).
        assert worst > lock_timeout_ms / 1000 / 3, f"the probe never waited ({worst:.3f} s)"
        # Nothing was changed on the blocked table; the steps before it stay done.
        assert c.pk_shadow not in _columns(conn, c)
        mid = api.status(dsn)["migration"]
        assert phase_of(conn, mid) == "expanding"
        assert f"start:key:{c.schema}.{c.name}.{c.pk}" not in steps_done(conn, mid)
    finally:
        blocker.close()
    # Once the blocker is gone, the same command finishes the job.
    again = invoke_cli("start", "--no-backfill", "--dsn", dsn, *_targs(names))
    assert again.returncode == 0, again.stderr
    assert phase_of(conn, mid) == "expanded"
    k = insert(conn, c, fk=insert(conn, names.parent))
    assert read_fk_shadow(conn, c, k) is not None


def _targs(n: Names) -> list[str]:
    out: list[str] = []
    for t in n.table_args():
        out += ["--table", t]
    return out


# --- rollback before cutover ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "backfilled", "source"),
    [
        ("public", False, "random"),
        ("quoted", False, "derived"),
        ("quoted", True, "derived"),
        ("quoted", True, "random"),
    ],
    ids=[
        "public-expanded-random",
        "quoted-expanded-derived",
        "quoted-backfilled-derived",
        "quoted-backfilled-random",
    ],
    indirect=["names"],
)
def test_rollback_restores_the_schema_byte_for_byte(
    dsn: str, conn: psycopg.Connection, names: Names, pg_bin: Path, backfilled: bool, source: str
) -> None:
    create_schema(conn, names)
    before = schema_dump(pg_bin, dsn)
    touched: Touched = []
    with app_writing(dsn, app_workload(names, touched)) as w:
        wait_for(lambda: w.calls > 5, what="the writer")
        api.start(dsn, names.table_args(), settings=StartSettings(backfill=backfilled, uuid_source=source))
        wait_for(lambda: len(touched) > 20, what="writes after start")
        assert schema_dump(pg_bin, dsn) != before
        # A new process, knowing only the DSN, finds the migration and undoes it.
        done = run_cli("rollback", "--dsn", dsn)
        time.sleep(0.2)
    assert done.returncode == 0, done.stderr
    assert "rolled back" in done.stdout
    assert w.errors == []
    assert schema_dump(pg_bin, dsn) == before
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'online_uuid'").fetchone() == (0,)
    # The application's rows, written through it all, are still there with their integer keys.
    last = max(k for _, role, k, _new in touched if role == "parent")
    assert conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
            names.parent.ident, names.parent.i(names.parent.pk)
        ),
        (last,),
    ).fetchone() == (1,)


def test_rollback_of_a_v7_migration_drops_the_generator_too(
    dsn: str, conn: psycopg.Connection, pg_bin: Path
) -> None:
    n = PUBLIC
    create_schema(conn, n)
    before = schema_dump(pg_bin, dsn)
    done = run_cli("start", "--no-backfill", "--uuid", "v7", "--dsn", dsn, *_targs(n))
    assert done.returncode == 0, done.stderr
    a, b = insert(conn, n.parent), insert(conn, n.parent)
    ua, ub = _u(key_shadow(conn, n.parent, a)), _u(key_shadow(conn, n.parent, b))
    assert ua.version == 7 and ub.version == 7
    assert ua.bytes[:6] <= ub.bytes[:6]  # time-ordered
    done = run_cli("rollback", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert schema_dump(pg_bin, dsn) == before


# --- state in the database ---------------------------------------------------------------------


def test_a_new_process_sees_the_migration_with_only_the_dsn(
    dsn: str, conn: psycopg.Connection, names: Names
) -> None:
    import json

    create_schema(conn, names)
    mid = api.start(dsn, names.table_args(), settings=NO_BACKFILL)
    done = run_cli("status", "--json", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["migration"], doc["phase"]) == (mid, "expanded")
    assert doc["last_error"] is None
    human = run_cli("status", "--dsn", dsn)
    assert f"migration {mid}: phase expanded" in human.stdout


def test_rerunning_start_resumes_and_changes_nothing(
    dsn: str, conn: psycopg.Connection, names: Names
) -> None:
    create_schema(conn, names)
    mid = api.start(dsn, names.table_args(), settings=NO_BACKFILL)
    before = (catalog_snapshot(conn), state_snapshot(conn))
    reordered = names.table_args()[::-1]
    done = invoke_cli("start", "--no-backfill", "--dsn", dsn, *[a for t in reordered for a in ("-t", t)])
    assert done.returncode == 0, done.stderr
    assert f"migration {mid}: expanded" in done.stdout
    assert (catalog_snapshot(conn), state_snapshot(conn)) == before


def test_start_refuses_tables_of_another_unfinished_migration(
    dsn: str, conn: psycopg.Connection, names: Names
) -> None:
    create_schema(conn, names)
    mid = api.start(dsn, [names.parent.qualified], settings=NO_BACKFILL)
    state_before = state_snapshot(conn)
    # Same table, another migration name.
    other = invoke_cli(
        "start", "--no-backfill", "--migration", "other", "--dsn", dsn, "--table", names.parent.qualified
    )
    assert other.returncode == 2, other.stderr
    [line] = error_lines(other.stderr)
    assert f"unfinished migration {mid!r}" in line
    # A table whose FK the first migration converts (its key is not converted there).
    overlap = invoke_cli("start", "--no-backfill", "--dsn", dsn, "--table", names.child.qualified)
    assert overlap.returncode == 2, overlap.stderr
    [line] = error_lines(overlap.stderr)
    assert f"is in migration {mid!r}" in line and names.child.name in line
    assert state_snapshot(conn) == state_before


def test_start_with_more_tables_than_the_unfinished_migration_is_not_silently_resumed(
    dsn: str, conn: psycopg.Connection
) -> None:
    n = PUBLIC
    create_schema(conn, n)
    api.start(dsn, [n.parent.qualified], settings=NO_BACKFILL)
    done = invoke_cli(
        "start", "--no-backfill", "--dsn", dsn, "--table", n.parent.qualified, "--table", n.node.qualified
    )
    converted = n.node.pk_shadow in _columns(conn, n.node)
    assert done.returncode == 2 or converted, (done.returncode, done.stdout, done.stderr)


# (a refused run waits 5 s for the lock first, in case its holder was just killed: public only with -m slow)
@pytest.mark.parametrize("names", [pytest.param("public", marks=pytest.mark.slow), "quoted"], indirect=True)
def test_a_second_concurrent_start_is_refused_naming_the_first(
    dsn: str, conn: psycopg.Connection, names: Names
) -> None:
    create_schema(conn, names)
    blocker = psycopg.connect(dsn, application_name="long tx")
    first = None
    try:
        blocker.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(names.child.ident))
        first = spawn_cli(
            "start",
            "--no-backfill",
            "--dsn",
            dsn,
            *_targs(names),
            "--lock-timeout",  # one long wait: queued, not asleep between tries, when the blocker goes
            "10000",
            "--max-attempts",
            "1000",
            "--retry-for",
            "120",
        )
        # The first run is inside the expansion, holding the migration, waiting for the blocker.
        wait_for(lambda: waiting_on_lock(conn, "online-uuid/"), what="the first start to wait for its lock")
        [(pid, app, _)] = backends(conn, "online-uuid/")
        mid = api.status(dsn)["migration"]
        assert api.status(dsn)["phase"] == "expanding"  # status needs no lock: it answers meanwhile
        reordered = names.table_args()[::-1]
        second = spawn_cli("start", "--no-backfill", "--dsn", dsn, *[a for t in reordered for a in ("-t", t)])
        rollback = spawn_cli("rollback", "--dsn", dsn)
        _, second_err = second.communicate(timeout=60)
        _, rollback_err = rollback.communicate(timeout=60)
        assert second.returncode == 2, second_err
        [line] = error_lines(second_err)
        assert f"another online-uuid run is working on migration {mid}" in line
        assert f"pid {pid}" in line and app in line, line
        # Rolling back under the running start is refused the same way.
        assert rollback.returncode == 2, rollback_err
        assert f"pid {pid}" in rollback_err
        blocker.rollback()
        _, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        assert phase_of(conn, mid) == "expanded"
    finally:
        blocker.close()
        if first is not None and first.poll() is None:
            kill9(first)


def test_a_start_racing_another_for_the_state_schema_waits_for_it(dsn: str, conn: psycopg.Connection) -> None:
    """The first start of a database creates schema online_uuid; a second one must not trip over it."""
    n = PUBLIC
    create_schema(conn, n)
    first = psycopg.connect(dsn)  # a transaction: the first run, in the middle of creating the schema
    try:
        state.ensure_schema(first)
        second = spawn_cli("start", "--no-backfill", "--dsn", dsn, *_targs(n))
        wait_for(lambda: waiting_on_lock(conn, "online-uuid/"), what="the second start to wait")
        first.commit()
        _, err = second.communicate(timeout=60)
    finally:
        first.close()
    assert second.returncode == 0, err
    assert phase_of(conn, "node") == "expanded"


def test_a_writer_that_cannot_read_the_parent_gets_a_definer_trigger(
    dsn: str, conn: psycopg.Connection
) -> None:
    """Invoker triggers are faster, but a role that may insert children without reading parents must still work."""
    from online_uuid import api
    from online_uuid.settings import StartSettings

    conn.execute("CREATE TABLE p (id serial PRIMARY KEY, name text UNIQUE)")
    conn.execute("CREATE TABLE c (id serial PRIMARY KEY, p_id int REFERENCES p (id))")
    conn.execute("CREATE TABLE r (id serial PRIMARY KEY, c_id int REFERENCES c (id))")
    conn.execute("INSERT INTO p (name) VALUES ('a'), ('b')")
    conn.execute(
        "DO $$ BEGIN CREATE ROLE blind_writer LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    conn.execute(
        "GRANT INSERT, SELECT ON c TO blind_writer; GRANT USAGE ON SEQUENCE c_id_seq TO blind_writer"
    )
    plan = api.plan(dsn, ["p", "c"], uuid_source="random")
    by_name = {f.table.name: f for f in plan.foreign_keys}
    assert by_name["c"].definer and not by_name["r"].definer
    assert any("blind_writer" in w.object for w in plan.warnings)
    api.start(dsn, ["p", "c"], settings=StartSettings(backfill=False, uuid_source="random"))
    conn.execute("INSERT INTO p (name) VALUES ('new')")
    writer = psycopg.conninfo.make_conninfo(dsn, user="blind_writer")
    with psycopg.connect(writer, autocommit=True) as w:
        w.execute("INSERT INTO c (p_id) VALUES (3)")  # p.id 3 = 'new', which has a UUID already
    row = conn.execute(
        "SELECT c.p_id_uuid = p.id_uuid FROM c JOIN p ON p.id = c.p_id WHERE c.p_id = 3"
    ).fetchone()
    assert row == (True,)
    bodies = dict(
        conn.execute(
            "SELECT proname, pg_get_functiondef(oid) FROM pg_proc WHERE pronamespace = 'online_uuid'::regnamespace"
        ).fetchall()
    )
    assert "SECURITY DEFINER" in next(b for n, b in bodies.items() if n.endswith("_c_p_id_fk_fn"))
    assert "SECURITY DEFINER" not in next(b for n, b in bodies.items() if n.endswith("_r_c_id_fk_fn"))
