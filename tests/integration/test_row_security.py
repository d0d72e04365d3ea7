"""Row level security: the tool sees every row or refuses; a parent hidden from a writer still links."""

from __future__ import annotations

import json

import psycopg
from psycopg.conninfo import make_conninfo

from online_uuid import api
from online_uuid.settings import StartSettings
from support.cli import invoke_cli

DDL = """
CREATE TABLE p (id serial PRIMARY KEY, v text);
CREATE TABLE c (id serial PRIMARY KEY, pid int REFERENCES p, v text);
INSERT INTO p (v) SELECT CASE WHEN g % 3 = 0 THEN 'secret' ELSE 'open' END FROM generate_series(1, 90) g;
INSERT INTO c (pid, v) SELECT g % 90 + 1, 'c' FROM generate_series(1, 180) g;
ALTER TABLE p ENABLE ROW LEVEL SECURITY;
CREATE POLICY open_only ON p USING (v <> 'secret');
"""
ROLE = "DO $$ BEGIN CREATE ROLE {0} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"


def _owner_dsn(conn: psycopg.Connection, dsn: str) -> str:
    conn.execute(ROLE.format("rls_owner"))
    conn.execute(f"GRANT CREATE ON DATABASE {conn.info.dbname} TO rls_owner")
    for obj in ("TABLE p", "TABLE c", "SEQUENCE p_id_seq", "SEQUENCE c_id_seq"):
        conn.execute(f"ALTER {obj} OWNER TO rls_owner")
    return make_conninfo(dsn, user="rls_owner")


def test_force_row_level_security_is_refused_unless_the_user_bypasses_it(
    dsn: str, conn: psycopg.Connection
) -> None:
    conn.execute(DDL)
    conn.execute("ALTER TABLE p FORCE ROW LEVEL SECURITY")
    owner = _owner_dsn(conn, dsn)
    res = invoke_cli("plan", "--dsn", owner, "-t", "p")
    assert res.returncode == 2
    [line] = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert "FORCE ROW LEVEL SECURITY" in line and "ALTER ROLE rls_owner BYPASSRLS" in line
    assert invoke_cli("start", "--dsn", owner, "-t", "p").returncode == 2
    assert conn.execute("SELECT to_regnamespace('online_uuid') IS NULL").fetchone() == (True,)
    # A user that bypasses it: plan says so, and every row (the hidden ones too) gets its UUID.
    conn.execute("ALTER ROLE rls_owner BYPASSRLS")
    try:
        doc = json.loads(invoke_cli("plan", "--dsn", owner, "-t", "p", "--json").stdout)
        assert any("bypasses it" in w["message"] for w in doc["warnings"])
        api.start(owner, ["p"])
        assert conn.execute("SELECT count(*) FROM p WHERE id_uuid IS NULL").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM c WHERE pid_uuid IS NULL").fetchone() == (0,)
        report = api.verify(owner)  # the server holds the invariant on every row, hidden ones too
        assert report.ok and report.checks[0].enforced_by
        assert conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'p'::regclass AND conname = 'ou_p_id_dv' "
            "AND convalidated"
        ).fetchone() == (1,)
    finally:
        conn.execute("ALTER ROLE rls_owner NOBYPASSRLS")


def test_a_parent_hidden_by_a_policy_still_gives_the_child_its_uuid(
    dsn: str, conn: psycopg.Connection
) -> None:
    conn.execute(DDL)
    conn.execute(ROLE.format("rls_app"))
    conn.execute("GRANT SELECT ON p TO rls_app; GRANT SELECT, INSERT, UPDATE ON c TO rls_app")
    conn.execute("GRANT USAGE ON SEQUENCE c_id_seq TO rls_app")
    # The lookup path (random mode) reads the parent: the definer choice is what is tested here.
    doc = json.loads(invoke_cli("plan", "--dsn", dsn, "-t", "p", "--json", "--uuid-source", "random").stdout)
    assert doc["foreign_keys"][0]["definer"] is True
    assert any("row level security" in w["message"] for w in doc["warnings"])
    api.start(dsn, ["p"], settings=StartSettings(uuid_source="random"))
    with psycopg.connect(make_conninfo(dsn, user="rls_app"), autocommit=True) as app:
        app.execute("INSERT INTO c (pid, v) VALUES (3, 'app')")  # p 3 is 'secret': hidden from rls_app
        app.execute("UPDATE c SET pid = 6 WHERE id = 1")
    rows = conn.execute(
        "SELECT c.pid_uuid = p.id_uuid FROM c JOIN p ON p.id = c.pid WHERE c.v = 'app' OR c.id = 1"
    ).fetchall()
    assert rows == [(True,), (True,)]
    assert api.verify(dsn).ok
