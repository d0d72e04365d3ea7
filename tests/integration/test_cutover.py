"""`verify` and `cutover` on a real server: what a user checks afterwards, never just "no exception".

Rows are followed by natural keys (names), so a relationship that survives the key swap is proven by
joining on the new UUID keys and finding the same (child, parent) pairs as before by integer.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from online_uuid import api, naming
from online_uuid.demo.schema import FOREIGN_KEYS, TABLES, create_schema
from online_uuid.errors import LockTimeoutError
from online_uuid.model import Phase, TableRef
from online_uuid.settings import CutoverSettings, LockSettings, StartSettings
from support.cli import cli_in_process as _cli
from support.cli import error_lines, spawn_cli
from support.sessions import wait_for
from support.snapshots import catalog_snapshot, constraint_defs, phase_of, state_snapshot
from support.workload import Writer

MID = "parent"  # the default migration name: the first listed table

# The online preparation takes a short ACCESS EXCLUSIVE on every table (NOT NULL proof, FK re-add), so
# a reader already there when cutover starts blocks the preparation; one that arrives after it
# (`_prepare_online`) blocks only the swap. `audit` is outside the migration.
PC_DDL = """
CREATE TABLE parent (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE child (
    id serial PRIMARY KEY, name text NOT NULL UNIQUE,
    parent_id int CONSTRAINT child_parent_fk REFERENCES parent ON DELETE CASCADE);
CREATE INDEX child_parent_idx ON child (parent_id);
CREATE TABLE audit (id serial PRIMARY KEY, note text);
"""

HELPER = re.compile(r"^(ou|OU)_|_ou$")  # names of the tool's preparation objects (naming.py)

FAST_GIVE_UP = ("--lock-timeout", "100", "--max-attempts", "3", "--retry-for", "5")


def _seed(conn: psycopg.Connection, parents: int, children: int) -> None:
    conn.execute(PC_DDL)
    conn.execute("INSERT INTO parent (name) SELECT 'p' || g FROM generate_series(1, %s) g", (parents,))
    conn.execute(
        "INSERT INTO child (name, parent_id) SELECT 'c' || g, g %% %s + 1 FROM generate_series(1, %s) g",
        (parents, children),
    )


def _pairs(conn: psycopg.Connection) -> dict[str, str]:
    """child name -> parent name, joined on whatever `id` and `parent_id` are now."""
    rows = conn.execute("SELECT c.name, p.name FROM child c JOIN parent p ON p.id = c.parent_id").fetchall()
    return dict(rows)  # type: ignore[arg-type]


def _type(conn: psycopg.Connection, table: str, column: str, schema: str = "public") -> str | None:
    row = conn.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "AND column_name = %s",
        (schema, table, column),
    ).fetchone()
    return str(row[0]) if row else None


def _user_visible(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """The catalog an application depends on: everything but the tool's online preparation objects."""
    snap = catalog_snapshot(conn)
    snap["constraints"] = [r for r in snap["constraints"] if not HELPER.search(str(r[2]))]
    snap["indexes"] = [r for r in snap["indexes"] if not HELPER.search(str(r[1]))]
    return snap


def _indexes(conn: psycopg.Connection, schema: str = "public") -> dict[str, str]:
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (schema,)
    ).fetchall()
    return {str(n): str(d) for n, d in rows}


@pytest.fixture
def blocker(dsn: str) -> Any:
    """Factory of sessions that read a table in a transaction left open (they hold ACCESS SHARE)."""
    opened: list[psycopg.Connection] = []

    def open_(table: str, name: str = "long-report") -> psycopg.Connection:
        c = psycopg.connect(dsn, application_name=name)
        c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        opened.append(c)
        return c

    yield open_
    for c in opened:
        c.close()


_CHILD = TableRef("public", "child")
FK_FUNCTION = f"online_uuid.{naming.function_name(_CHILD, naming.fk_trigger(_CHILD, 'parent_id'))}()"


@contextmanager
def _swap_held(dsn: str) -> Iterator[None]:
    """Keep any swap waiting inside its transaction, after it has locked every table.

    The swap drops the FK's trigger function right after its LOCK TABLE; COMMENT ON takes a lock on
    that function until commit, and nothing before the swap (verify, the online preparation) needs it.
    """
    with psycopg.connect(dsn, application_name="swap-holder") as hold:
        hold.execute(sql.SQL("COMMENT ON FUNCTION {} IS 'held by the test'").format(sql.SQL(FK_FUNCTION)))
        yield
        hold.rollback()


def _prepare_online(dsn: str) -> None:
    """A first cutover that finishes the online preparation, then gives up at the swap."""
    with _swap_held(dsn), pytest.raises(LockTimeoutError, match="cutover gave up after 1 attempts"):
        api.cutover(dsn, settings=CutoverSettings(lock=LockSettings(lock_timeout_ms=200, max_attempts=1)))


# --- verify ------------------------------------------------------------------------------------


def test_verify_exits_0_only_when_all_holds_and_names_the_first_wrong_rows(
    dsn: str, conn: psycopg.Connection
) -> None:
    """The row-by-row verify of the lookup path; in derived mode a validated CHECK refuses such rows
    (test_derived.py), and its row-by-row verify is tested there too."""
    _seed(conn, parents=50, children=200)
    api.start(dsn, ["parent"], settings=StartSettings(uuid_source="random"))

    code, out, _ = _cli("verify", dsn=dsn)
    assert code == 0
    assert re.search(r"ok\s+public\.parent\.id_uuid: 50 rows checked", out), out
    assert re.search(r"ok\s+public\.child\.parent_id_uuid: 200 rows checked", out), out

    # Two children whose shadow FK no longer matches their parent's UUID (written behind the triggers).
    conn.execute("ALTER TABLE child DISABLE TRIGGER USER")
    conn.execute("UPDATE child SET parent_id_uuid = gen_random_uuid() WHERE id IN (7, 11)")
    conn.execute("ALTER TABLE child ENABLE TRIGGER USER")

    code, out, err = _cli("verify", dsn=dsn)
    assert code == 1
    assert re.search(r"FAIL\s+public\.child\.parent_id_uuid", out), out
    [line] = error_lines(err)
    assert "public.child.parent_id_uuid: 2 rows whose UUID differs from the parent's" in line, line
    assert "'id': 7" in line and "'id': 11" in line, line

    code, out, _ = _cli("verify", "--json", dsn=dsn)
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    bad = next(c for c in doc["checks"] if c["column"] == "parent_id_uuid")
    assert (bad["rows"], bad["mismatched"], bad["ok"]) == (200, 2, False)
    assert sorted(s["id"] for s in bad["samples"]) == [7, 11]

    # cutover refuses on a failed verify and touches nothing at all.
    catalog, st = catalog_snapshot(conn), state_snapshot(conn)
    code, _, err = _cli("cutover", dsn=dsn)
    assert code == 1
    assert any("verify failed, cutover refused" in e and "2 rows" in e for e in error_lines(err)), err
    assert catalog_snapshot(conn) == catalog
    assert state_snapshot(conn) == st
    assert _type(conn, "parent", "id") == "integer"

    # Changing the FK makes the trigger recompute the shadow (rewriting the same value does not).
    conn.execute("UPDATE child SET parent_id = NULL WHERE id IN (7, 11)")
    conn.execute("UPDATE child SET parent_id = id % 50 + 1 WHERE id IN (7, 11)")
    assert _cli("verify", dsn=dsn)[0] == 0

    # A key without its UUID is reported before the foreign keys that point at it.
    conn.execute("ALTER TABLE parent DISABLE TRIGGER USER")
    conn.execute("UPDATE parent SET id_uuid = NULL WHERE id = 5")
    conn.execute("ALTER TABLE parent ENABLE TRIGGER USER")
    code, _, err = _cli("verify", dsn=dsn)
    assert code == 1
    [line] = error_lines(err)
    assert re.search(r"public\.parent\.id_uuid: 1 rows? without a UUID, first: \[\{'id': 5\}\]", line), line


# --- cutover under load ------------------------------------------------------------------------


class NaturalKeyApp:
    """One writer's view of the data: it only ever names rows (never ids) and remembers its children."""

    def __init__(self, w: int, seed_pairs: dict[str, str], writers: int) -> None:
        self.w = w
        self.parents = sorted(set(seed_pairs.values()))
        self.children = {c: p for c, p in seed_pairs.items() if int(c[1:]) % writers == w}  # owned seeds
        self.deleted: set[str] = set()
        self.wrong_reads: list[str] = []
        self.n = 0

    def op(self, conn: psycopg.Connection, rng: random.Random) -> None:
        self.n += 1
        k = rng.randrange(10)
        if k < 2:  # a new parent and its first child in one transaction
            pn, cn = f"w{self.w}-p{self.n}", f"w{self.w}-c{self.n}"
            with conn.transaction():
                conn.execute("INSERT INTO parent (name) VALUES (%s)", (pn,))
                conn.execute(
                    "INSERT INTO child (parent_id, name) SELECT id, %s FROM parent WHERE name = %s", (cn, pn)
                )
            self.parents.append(pn)
            self.children[cn] = pn
        elif k < 4:  # a child of an existing parent
            pn, cn = rng.choice(self.parents), f"w{self.w}-c{self.n}"
            conn.execute(
                "INSERT INTO child (parent_id, name) SELECT id, %s FROM parent WHERE name = %s", (cn, pn)
            )
            self.children[cn] = pn
        elif k < 6 and self.children:  # move one of my children to another parent
            cn, pn = rng.choice(sorted(self.children)), rng.choice(self.parents)
            conn.execute(
                "UPDATE child SET parent_id = (SELECT id FROM parent WHERE name = %s) WHERE name = %s",
                (pn, cn),
            )
            self.children[cn] = pn
        elif k == 6 and len(self.children) > 10:
            cn = rng.choice(sorted(self.children))
            conn.execute("DELETE FROM child WHERE name = %s", (cn,))
            del self.children[cn]
            self.deleted.add(cn)
        elif self.children:  # read by natural key
            cn = rng.choice(sorted(self.children))
            row = conn.execute(
                "SELECT p.name FROM child c JOIN parent p ON p.id = c.parent_id WHERE c.name = %s", (cn,)
            ).fetchone()
            if row is None or row[0] != self.children[cn]:
                self.wrong_reads.append(f"{cn}: read {row}, expected {self.children[cn]}")


@pytest.mark.concurrency
def test_cutover_under_load_no_workload_error_and_stall_bounded_by_lock_timeout(
    dsn: str, conn: psycopg.Connection
) -> None:
    _seed(conn, parents=2_000, children=20_000)
    api.start(dsn, ["parent", "child"])
    before = _pairs(conn)
    assert len(before) == 20_000

    writers = 4
    apps = [NaturalKeyApp(w, before, writers) for w in range(writers)]
    threads = [Writer(dsn, a.op, name=f"app-{a.w}", seed=a.w, pause_s=0.001).start() for a in apps]
    lock_timeout_ms = 200
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        result = api.cutover(
            dsn, settings=CutoverSettings(lock=LockSettings(lock_timeout_ms=lock_timeout_ms))
        )
        t1 = time.monotonic()
        time.sleep(0.5)
    finally:
        for t in threads:
            t.stop()

    assert [e for t in threads for e in t.errors] == []
    assert [r for a in apps for r in a.wrong_reads] == []
    for t in threads:
        assert t.calls_since(t0) > 0 and t.calls_since(t1) > 0, (
            "every writer worked during and after the cutover"
        )
    worst = max(t.max_latency() for t in threads)
    bound = lock_timeout_ms / 1000 + result.lock_held_s + 0.3
    assert worst <= bound, f"worst stall {worst:.3f} s > lock_timeout + lock held + 0.3 s = {bound:.3f} s"

    assert _type(conn, "parent", "id") == "uuid" and _type(conn, "child", "parent_id") == "uuid"
    expected = dict(before)
    for a in apps:
        for cn in a.deleted:
            expected.pop(cn, None)
        expected.update(a.children)
    assert _pairs(conn) == expected  # joined on the UUIDs now: the same pairs as by integer
    orphans = conn.execute("SELECT count(*) FROM child WHERE parent_id IS NULL").fetchone()
    assert orphans == (0,)
    report = api.verify(dsn)  # after cutover: the retired integers, kept by the reverse triggers
    assert report.ok, report.first_problem()


# --- cutover blocked by a long transaction ------------------------------------------------------


@pytest.mark.parametrize(("stage", "blocked"), [("preparation", "parent"), ("swap", "child")])
def test_blocked_cutover_exits_3_naming_the_blocker_changes_nothing_and_succeeds_later(
    dsn: str, conn: psycopg.Connection, blocker: Any, stage: str, blocked: str
) -> None:
    _seed(conn, parents=30, children=90)
    api.start(dsn, ["parent"])
    if stage == "swap":
        _prepare_online(dsn)  # the long transaction begins while the indexes are built
    before_pairs, visible = _pairs(conn), _user_visible(conn)
    b = blocker(blocked)
    bpid = b.info.backend_pid

    code, _, err = _cli("cutover", *FAST_GIVE_UP, dsn=dsn)

    assert code == 3, err
    [line] = error_lines(err)
    assert f"pid {bpid} (long-report, idle in transaction" in line, line
    assert "nothing was changed" in line
    if stage == "swap":
        assert line.startswith("error: cutover gave up after 3 attempts of 100 ms; blocked by"), line
    assert _user_visible(conn) == visible  # columns, types, defaults, constraints, indexes, triggers
    assert phase_of(conn, MID) == Phase.BACKFILLED  # where it was: the cutover gave up
    assert api.verify(dsn).ok
    b.execute("SELECT 1")  # the blocker was left alone and its transaction goes on
    b.commit()

    code, out, err = _cli("cutover", dsn=dsn)
    assert code == 0, err
    assert "cut over: lock held" in out
    assert (_type(conn, "parent", "id"), _type(conn, "child", "parent_id")) == ("uuid", "uuid")
    assert _pairs(conn) == before_pairs
    assert phase_of(conn, MID) == Phase.CUT_OVER


@pytest.mark.parametrize("stage", ["preparation", "swap"])
def test_terminate_blockers_ends_only_the_blocker_and_succeeds(
    dsn: str, conn: psycopg.Connection, blocker: Any, stage: str
) -> None:
    _seed(conn, parents=30, children=90)
    api.start(dsn, ["parent"])
    if stage == "swap":
        _prepare_online(dsn)
    before_pairs = _pairs(conn)
    b = blocker("parent")
    bystander = blocker("audit", name="bystander")  # an old transaction on a table outside the migration
    idle = psycopg.connect(dsn, autocommit=True, application_name="idle-app")
    apps = [NaturalKeyApp(w, before_pairs, 4) for w in range(4)]  # the application keeps writing
    writers = [Writer(dsn, a.op, name=f"app-{a.w}", seed=a.w, pause_s=0.001).start() for a in apps]
    try:
        # Under this load an attempt can also time out on the writers' own short transactions: allow retries.
        retries = ("--lock-timeout", "100", "--max-attempts", "20", "--retry-for", "30")
        code, out, err = _cli("cutover", "--terminate-blockers", "--json", *retries, dsn=dsn)
        assert code == 0, err
        assert json.loads(out)["terminated"] == [b.info.backend_pid]
        with pytest.raises(psycopg.OperationalError):
            b.execute("SELECT 1")
        assert bystander.execute("SELECT count(*) FROM audit").fetchone() == (0,)
        bystander.commit()
        assert idle.execute("SELECT 1").fetchone() == (1,)
    finally:
        idle.close()
        for w in writers:
            w.stop()
    assert [e for w in writers for e in w.errors] == []  # no application session was terminated
    assert _type(conn, "parent", "id") == "uuid"
    expected = dict(before_pairs)
    for a in apps:
        for cn in a.deleted:
            expected.pop(cn, None)
        expected.update(a.children)
    assert _pairs(conn) == expected


# --- the cutover's own backend killed while it holds the lock -----------------------------------


def test_cutover_backend_terminated_inside_the_swap_leaves_the_pre_cutover_state_and_a_rerun_succeeds(
    dsn: str, conn: psycopg.Connection
) -> None:
    _seed(conn, parents=30, children=90)
    api.start(dsn, ["parent"])
    before_pairs = _pairs(conn)
    _prepare_online(dsn)
    visible = _user_visible(conn)

    with _swap_held(dsn):
        proc = spawn_cli("cutover", "--lock-timeout", "20000", "--statement-timeout", "30000", "--dsn", dsn)
        app = f"online-uuid/{MID}/cutover"

        def swap_waiting() -> int | None:
            row = conn.execute(
                "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                "WHERE a.application_name = %s AND a.wait_event_type = 'Lock' AND l.granted "
                "AND l.mode = 'AccessExclusiveLock' AND l.relation = 'parent'::regclass",
                (app,),
            ).fetchone()
            return int(row[0]) if row else None

        pid = wait_for(swap_waiting, 30, "the cutover to hold ACCESS EXCLUSIVE on parent inside the swap")
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        _, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, err
    assert any("terminating connection" in e for e in error_lines(err)), err
    assert _user_visible(conn) == visible  # the swap's transaction rolled back as a whole
    assert phase_of(conn, MID) == Phase.PREPARING
    assert _type(conn, "parent", "id") == "integer"
    # The dual-write triggers are still in place: a new child gets its shadow FK at once.
    conn.execute("INSERT INTO child (name, parent_id) SELECT 'late', id FROM parent WHERE name = 'p3'")
    late = conn.execute(
        "SELECT c.parent_id_uuid = p.id_uuid FROM child c JOIN parent p ON p.id = c.parent_id "
        "WHERE c.name = 'late'"
    ).fetchone()
    assert late == (True,)
    assert api.verify(dsn).ok

    code, _, err = _cli("cutover", dsn=dsn)
    assert code == 0, err
    assert _type(conn, "parent", "id") == "uuid"
    assert _pairs(conn) == {**before_pairs, "late": "p3"}


# --- cutover --check ------------------------------------------------------------------------------


def test_cutover_check_reports_an_old_transaction_and_locks_nothing(
    dsn: str, conn: psycopg.Connection, blocker: Any
) -> None:
    _seed(conn, parents=10, children=10)
    api.start(dsn, ["parent"])
    code, out, _ = _cli("cutover", "--check", dsn=dsn)
    # (then the sessions at risk from prepared statements: this test's own connection)
    assert (code, out.strip().splitlines()[0]) == (0, "nothing blocks a cutover now")

    # The CLI has no flag for the age threshold (60 s): lower it so the test needs no minute-old transaction.
    b = blocker("parent")
    time.sleep(0.5)
    catalog, st = catalog_snapshot(conn), state_snapshot(conn)
    t0 = time.monotonic()
    code, out, _ = _cli("cutover", "--check", "--json", "--max-transaction-age", "0.3", dsn=dsn)
    assert time.monotonic() - t0 < 5
    assert code == 1
    problems = json.loads(out)["problems"]
    assert len(problems) == 1
    assert re.fullmatch(
        rf"pid {b.info.backend_pid} \(long-report\) holds a lock on the tables in a "
        r"transaction \d+ s old",
        problems[0],
    ), problems
    assert catalog_snapshot(conn) == catalog and state_snapshot(conn) == st
    assert phase_of(conn, MID) == Phase.BACKFILLED
    b.execute("SELECT 1")  # untouched
    assert conn.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE a.application_name LIKE 'online-uuid/%%' AND l.locktype = 'relation'"
    ).fetchone() == (0,)


# --- lock held time ---------------------------------------------------------------------------------


def test_lock_held_time_is_reported_and_recorded(dsn: str, conn: psycopg.Connection) -> None:
    _seed(conn, parents=10, children=10)
    api.start(dsn, ["parent"])
    code, out, err = _cli("cutover", "--json", dsn=dsn)
    assert code == 0, err
    doc = json.loads(out)
    assert 0 < doc["lock_held_ms"] < 1000 and doc["attempts"] == 1

    recorded = conn.execute("SELECT cutover FROM online_uuid.migrations WHERE id = %s", (MID,)).fetchone()
    assert recorded is not None
    assert recorded[0]["attempts"] == 1
    assert round(recorded[0]["lock_held_s"] * 1000, 1) == doc["lock_held_ms"]

    code, out, _ = _cli("status", "--json", dsn=dsn)
    assert code == 0
    status = json.loads(out)
    assert status["phase"] == "cut_over"
    [event] = [e for e in status["events"] if e["kind"] == "cutover"]
    assert event["detail"]["lock_held_s"] == recorded[0]["lock_held_s"]


# --- the guide's five MCP tables -------------------------------------------------------------------

GUIDE_SEED = """
INSERT INTO mcp_connectors (name, kind, user_id)
    SELECT 'conn-' || g, 'github', g FROM generate_series(1, 12) g;
INSERT INTO connector_access (connector_id, user_id, role)
    SELECT c.id, u, 'viewer' FROM mcp_connectors c, generate_series(1, 3) u;
INSERT INTO mcp_servers (connector_id, name, url)
    SELECT c.id, c.name || '-srv-' || k, 'https://mcp.test' FROM mcp_connectors c, generate_series(1, 2) k;
INSERT INTO mcp_server_tokens (mcp_server_id, token_hash)
    SELECT s.id, s.name || '-tok-' || k FROM mcp_servers s, generate_series(1, 2) k;
INSERT INTO mcp_server_tools (mcp_server_id, tool_name)
    SELECT s.id, 'tool-' || k FROM mcp_servers s, generate_series(1, 3) k;
"""


def _guide_relations(conn: psycopg.Connection) -> dict[str, set[tuple[Any, ...]]]:
    q = {
        "access": "SELECT c.name, a.user_id FROM connector_access a "
        "JOIN mcp_connectors c ON c.id = a.connector_id",
        "servers": "SELECT s.name, c.name FROM mcp_servers s JOIN mcp_connectors c ON c.id = s.connector_id",
        "tokens": "SELECT t.token_hash, s.name FROM mcp_server_tokens t "
        "JOIN mcp_servers s ON s.id = t.mcp_server_id",
        "tools": "SELECT s.name, t.tool_name FROM mcp_server_tools t "
        "JOIN mcp_servers s ON s.id = t.mcp_server_id",
    }
    return {k: {tuple(r) for r in conn.execute(v).fetchall()} for k, v in q.items()}  # type: ignore[arg-type]


@pytest.mark.parametrize("cascade", [True, False], ids=["cascade-deletes", "original-actions"])
def test_guide_checklist_after_cutover(dsn: str, conn: psycopg.Connection, cascade: bool) -> None:
    create_schema(conn)
    conn.execute(GUIDE_SEED)
    rel, cons, idx = _guide_relations(conn), constraint_defs(conn), _indexes(conn)
    api.start(dsn, list(TABLES), settings=StartSettings(cascade_deletes=cascade))
    api.cutover(dsn)

    # Verify all tables have UUID IDs (and the FK columns are UUID too).
    for t in TABLES:
        assert _type(conn, t, "id") == "uuid", t
    for fk in FOREIGN_KEYS:
        assert _type(conn, fk.table, fk.column) == "uuid", fk
    # Check foreign key constraints are intact: same names, same rows related.
    assert _guide_relations(conn) == rel
    # (The reverse dual-write triggers keep the `_int` columns until finalize; their deferred fix-ups
    # are constraint triggers, `OU_*_fkfix`, the only helpers left in pg_constraint.)
    after = {k: d for k, d in constraint_defs(conn).items() if not k[1].startswith("OU_")}
    assert not [k for k in after if HELPER.search(k[1])]
    names = {n for (_, n), d in after.items() if d.startswith("FOREIGN KEY")}
    assert names == {fk.name for fk in FOREIGN_KEYS}
    expected = dict(cons)
    if cascade:  # the guide's "CASCADE DELETE bonus": every FK cascades, names kept
        for fk in FOREIGN_KEYS:
            expected[(fk.table, fk.name)] = (
                f"FOREIGN KEY ({fk.column}) REFERENCES {fk.parent}(id) ON DELETE CASCADE"
            )
    assert after == expected  # without --cascade-deletes: exactly the original definitions
    assert _indexes(conn) == idx  # every index under its original name, on the same columns

    # CRUD by natural keys with UUID keys.
    conn.execute("INSERT INTO mcp_connectors (name, kind, user_id) VALUES ('conn-new', 'slack', 99)")
    conn.execute(
        "INSERT INTO mcp_servers (connector_id, name, url) SELECT id, 'srv-new', 'u' FROM mcp_connectors "
        "WHERE name = 'conn-new'"
    )
    conn.execute(
        "INSERT INTO mcp_server_tokens (mcp_server_id, token_hash) SELECT id, 'tok-new' FROM mcp_servers "
        "WHERE name = 'srv-new'"
    )
    conn.execute(
        "UPDATE mcp_servers SET connector_id = (SELECT id FROM mcp_connectors WHERE name = 'conn-1') "
        "WHERE name = 'srv-new'"
    )
    assert conn.execute(
        "SELECT c.name FROM mcp_server_tokens t JOIN mcp_servers s ON s.id = t.mcp_server_id "
        "JOIN mcp_connectors c ON c.id = s.connector_id WHERE t.token_hash = 'tok-new'"
    ).fetchone() == ("conn-1",)
    new_id = conn.execute("SELECT id FROM mcp_connectors WHERE name = 'conn-new'").fetchone()
    assert new_id is not None and new_id[0].version == 4
    conn.execute("DELETE FROM mcp_server_tokens WHERE token_hash = 'tok-new'")
    conn.execute("DELETE FROM mcp_servers WHERE name = 'srv-new'")
    conn.execute("DELETE FROM mcp_connectors WHERE name = 'conn-new'")
    assert _guide_relations(conn) == rel

    # Test CASCADE DELETE: deleting a connector.
    if cascade:
        conn.execute("DELETE FROM mcp_connectors WHERE name = 'conn-3'")
        gone = {f"conn-3-srv-{k}" for k in (1, 2)}
        want = {
            "access": {r for r in rel["access"] if r[0] != "conn-3"},
            "servers": {r for r in rel["servers"] if r[1] != "conn-3"},
            "tokens": {r for r in rel["tokens"] if r[1] not in gone},
            "tools": {r for r in rel["tools"] if r[0] not in gone},
        }
        assert _guide_relations(conn) == want
        assert all(len(want[k]) < len(rel[k]) for k in want)
    else:  # NO ACTION on tokens, as before: the delete is refused and nothing goes
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="fk_mcp_server_tokens_mcp_server_id"):
            conn.execute("DELETE FROM mcp_connectors WHERE name = 'conn-3'")
        assert _guide_relations(conn) == rel


def test_cutover_is_refused_twice_and_before_the_backfill(dsn: str, conn: psycopg.Connection) -> None:
    _seed(conn, parents=5, children=5)
    api.start(dsn, ["parent"], settings=StartSettings(backfill=False))
    code, _, err = _cli("cutover", dsn=dsn)
    assert code == 2 and "cutover needs a finished backfill" in err, err
    assert _type(conn, "parent", "id") == "integer" and phase_of(conn, MID) == Phase.EXPANDED
    api.backfill(dsn)
    assert _cli("cutover", dsn=dsn)[0] == 0
    catalog = catalog_snapshot(conn)
    code, _, err = _cli("cutover", dsn=dsn)
    assert code == 2 and "already cut over" in err
    assert catalog_snapshot(conn) == catalog
