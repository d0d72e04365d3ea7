"""Rows written past the tool's triggers: replica-role writes, triggers a DBA disabled.

The tool's triggers are ENABLE ALWAYS; `cutover` refuses to swap when one was disabled or altered
since its verify; `verify --repair` fixes exactly the rows that disagree, online and in batches.
"""

from __future__ import annotations

import json
import random
from typing import Any

import psycopg
import pytest

from online_uuid import api
from online_uuid.phases import cutover as cutover_phase
from online_uuid.settings import StartSettings
from support.cli import invoke_cli
from support.snapshots import phase_of
from support.workload import writing

DDL = """
CREATE TABLE p (id serial PRIMARY KEY, v text);
CREATE TABLE c (id serial PRIMARY KEY, pid int REFERENCES p, v text);
INSERT INTO p (v) SELECT 'p' || g FROM generate_series(1, 200) g;
INSERT INTO c (pid, v) SELECT g % 200 + 1, 'c' || g FROM generate_series(1, 400) g;
"""
TOOL_TRIGGERS = """
SELECT t.tgrelid::regclass::text, t.tgname, t.tgenabled::text FROM pg_trigger t
  JOIN pg_proc f ON f.oid = t.tgfoid WHERE f.pronamespace = 'online_uuid'::regnamespace ORDER BY 1, 2
"""


def _links(conn: psycopg.Connection) -> set[tuple[Any, ...]]:
    """(child v, parent v): the relationships, whatever type the keys have."""
    return {tuple(r) for r in conn.execute("SELECT c.v, p.v FROM c JOIN p ON p.id = c.pid").fetchall()}


def _replica_writes(conn: psycopg.Connection, rng: random.Random) -> None:
    conn.execute("SET session_replication_role = replica")
    n = rng.randrange(1, 200)
    conn.execute("INSERT INTO c (pid, v) VALUES (%s, 'bulk')", (n,))
    conn.execute("UPDATE c SET pid = %s WHERE id = %s", (rng.randrange(1, 200), rng.randrange(1, 400)))


def test_replica_role_writes_keep_their_shadows_right(dsn: str, conn: psycopg.Connection) -> None:
    conn.execute(DDL)
    with writing(dsn, _replica_writes, name="bulk-loader") as w:
        api.start(dsn, ["p"])
    assert not w.errors and w.calls > 0
    with psycopg.connect(dsn, autocommit=True) as bulk:  # and after the backfill passed every row
        bulk.execute("SET session_replication_role = replica")
        bulk.execute("INSERT INTO p (v) SELECT 'late' || g FROM generate_series(1, 20) g")
        bulk.execute("INSERT INTO c (pid, v) SELECT id, 'late' FROM p WHERE v LIKE 'late%'")
        bulk.execute("UPDATE c SET pid = pid % 50 + 1 WHERE id <= 30")
    triggers = conn.execute(TOOL_TRIGGERS).fetchall()
    assert triggers and {r[2] for r in triggers} == {"A"}
    report = api.verify(dsn)
    assert report.ok, report.first_problem()
    before = _links(conn)
    api.cutover(dsn)
    assert {r[2] for r in conn.execute(TOOL_TRIGGERS).fetchall()} == {"A"}  # the reverse ones too
    with psycopg.connect(dsn, autocommit=True) as bulk:
        bulk.execute("SET session_replication_role = replica")
        bulk.execute("INSERT INTO c (pid, v) SELECT id, 'after' FROM p WHERE v = 'p1'")
    got = conn.execute("SELECT c.pid_int = p.id_int FROM c JOIN p ON p.id = c.pid WHERE c.v = 'after'")
    assert got.fetchall() == [(True,)]
    assert _links(conn) == before | {("after", "p1")}


def _dba_bypass(dsn: str) -> None:
    """A DBA disables the child's triggers, writes children (and moves one), enables them again."""
    with psycopg.connect(dsn, autocommit=True) as dba:
        dba.execute("ALTER TABLE c DISABLE TRIGGER USER")
        dba.execute("INSERT INTO c (pid, v) SELECT g, 'bypass' || g FROM generate_series(1, 7) g")
        dba.execute("UPDATE c SET pid = 200 WHERE v = 'c1'")
        dba.execute("ALTER TABLE c ENABLE TRIGGER USER")


def test_cutover_refuses_rows_written_past_disabled_triggers_and_repair_fixes_them(
    dsn: str, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup path (in derived mode a validated CHECK refuses such writes: test_derived.py)."""
    conn.execute(DDL)
    api.start(dsn, ["p"], settings=StartSettings(uuid_source="random"))
    assert api.verify(dsn).ok
    real_swap = cutover_phase.run_swap

    def after_verify(*args: Any, **kw: Any) -> Any:  # between cutover's verify and its swap
        monkeypatch.setattr(cutover_phase, "run_swap", real_swap)
        _dba_bypass(dsn)
        return real_swap(*args, **kw)

    monkeypatch.setattr(cutover_phase, "run_swap", after_verify)
    res = invoke_cli("cutover", "--dsn", dsn)
    assert res.returncode == 1, res.stdout + res.stderr
    [line] = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert "ou_c_pid_fk on public.c" in line and "verify --repair" in line
    assert phase_of(conn, "p") == "backfilled"
    assert conn.execute(
        "SELECT format_type(atttypid, -1) FROM pg_attribute WHERE attrelid = 'p'::regclass AND attname = 'id'"
    ).fetchone() == ("integer",)  # nothing swapped
    before = _links(conn)
    bad = api.verify(dsn)
    assert not bad.ok and sum(c.mismatched for c in bad.checks) == 8

    res = invoke_cli("verify", "--dsn", dsn, "--repair", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is True
    assert doc["repaired"] == {"public.c.pid_uuid": 8}
    text = invoke_cli("verify", "--dsn", dsn, "--repair")
    assert text.returncode == 0 and "nothing to repair" in text.stdout

    api.cutover(dsn)
    assert _links(conn) == before
    assert phase_of(conn, "p") == "cut_over"


def test_cutover_refuses_while_a_tool_trigger_is_disabled(dsn: str, conn: psycopg.Connection) -> None:
    conn.execute(DDL)
    api.start(dsn, ["p"])
    conn.execute('ALTER TABLE c DISABLE TRIGGER "~ou_c_pid_fk"')  # no write yet: verify alone would pass
    res = invoke_cli("cutover", "--dsn", dsn)
    assert res.returncode == 1
    [line] = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert "~ou_c_pid_fk on public.c is disabled" in line and "ENABLE ALWAYS TRIGGER" in line
    assert phase_of(conn, "p") == "backfilled"
    conn.execute('ALTER TABLE c ENABLE ALWAYS TRIGGER "~ou_c_pid_fk"')
    api.cutover(dsn)
    assert phase_of(conn, "p") == "cut_over"
