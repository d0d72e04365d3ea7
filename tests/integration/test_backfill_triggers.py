"""The backfill changes nothing but the shadow columns: the application's triggers stay quiet.

Its sessions run as `session_replication_role = replica` where the role may (superuser, or GRANT SET
ON PARAMETER on 15+); elsewhere `plan` lists what would fire and `start` refuses without a flag.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from online_uuid import api
from online_uuid.errors import RefusedError
from online_uuid.settings import StartSettings
from support.cli import invoke_cli

APP_DDL = """
CREATE TABLE audit (id bigserial PRIMARY KEY, tbl text, at timestamptz DEFAULT now());
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN NEW.last_update := now(); RETURN NEW; END$$;
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO audit (tbl) VALUES (TG_TABLE_NAME); RETURN NULL; END$$;
CREATE TABLE p (id serial PRIMARY KEY, v text, last_update timestamptz, doc tsvector);
CREATE TABLE c (id serial PRIMARY KEY, pid int REFERENCES p, last_update timestamptz);
CREATE TRIGGER p_touch BEFORE UPDATE ON p FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TRIGGER p_audit AFTER UPDATE ON p FOR EACH ROW EXECUTE FUNCTION audit_row();
CREATE TRIGGER p_doc BEFORE INSERT OR UPDATE ON p FOR EACH ROW
  EXECUTE FUNCTION tsvector_update_trigger(doc, 'pg_catalog.english', v);
CREATE TRIGGER c_touch BEFORE UPDATE ON c FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TRIGGER c_audit AFTER UPDATE ON c FOR EACH STATEMENT EXECUTE FUNCTION audit_row();
"""
SEED = """
ALTER TABLE p DISABLE TRIGGER USER; ALTER TABLE c DISABLE TRIGGER USER;
INSERT INTO p (v, last_update, doc)
  SELECT 'word' || g, '2000-01-01', to_tsvector('english', 'stale') FROM generate_series(1, 300) g;
INSERT INTO c (pid, last_update) SELECT g % 300 + 1, '2000-01-01' FROM generate_series(1, 500) g;
ALTER TABLE p ENABLE TRIGGER USER; ALTER TABLE c ENABLE TRIGGER USER;
"""


def _app_state(conn: psycopg.Connection) -> dict[str, Any]:
    one = conn.execute(
        "SELECT (SELECT count(*) FROM audit), "
        "(SELECT count(*) FROM p WHERE last_update <> '2000-01-01' OR doc <> to_tsvector('english', 'stale')), "
        "(SELECT count(*) FROM c WHERE last_update <> '2000-01-01'), "
        "(SELECT count(*) FROM p WHERE id_uuid IS NULL), (SELECT count(*) FROM c WHERE pid_uuid IS NULL)"
    ).fetchone()
    assert one is not None
    return dict(zip(("audit_rows", "p_changed", "c_changed", "p_unfilled", "c_unfilled"), one, strict=True))


def _role(conn: psycopg.Connection, dsn: str, name: str) -> str:
    """A login role that owns the test tables and may create the state schema."""
    conn.execute(f"DO $$ BEGIN CREATE ROLE {name} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    conn.execute(f"GRANT CREATE ON DATABASE {conn.info.dbname} TO {name}")
    for obj in ("TABLE audit", "TABLE p", "TABLE c", "SEQUENCE audit_id_seq", "SEQUENCE p_id_seq"):
        conn.execute(f"ALTER {obj} OWNER TO {name}")
    conn.execute(f"ALTER SEQUENCE c_id_seq OWNER TO {name}")
    return make_conninfo(dsn, user=name)


@pytest.mark.parametrize("who", ["superuser", "granted"])
def test_backfill_fires_no_application_trigger(dsn: str, conn: psycopg.Connection, who: str) -> None:
    conn.execute(APP_DDL)
    conn.execute(SEED)
    run_dsn = dsn
    if who == "granted":
        if conn.info.server_version < 150000:
            pytest.skip("GRANT SET ON PARAMETER needs PostgreSQL 15")
        run_dsn = _role(conn, dsn, "bf_granted")
        conn.execute("GRANT SET ON PARAMETER session_replication_role TO bf_granted")
    plan = json.loads(invoke_cli("plan", "--dsn", run_dsn, "-t", "p", "--json").stdout)
    assert plan["backfill_replica"] is True and plan["backfill_fires"] == []
    api.start(run_dsn, ["p"])
    assert _app_state(conn) == {
        "audit_rows": 0,
        "p_changed": 0,
        "c_changed": 0,
        "p_unfilled": 0,
        "c_unfilled": 0,
    }
    assert api.verify(run_dsn).ok
    # The application's own writes still fire its triggers, and the tool's keep the shadows right.
    conn.execute("UPDATE c SET pid = 7 WHERE id = 1")
    assert _app_state(conn)["audit_rows"] == 1
    row = conn.execute(
        "SELECT c.pid_uuid = p.id_uuid FROM c JOIN p ON p.id = c.pid WHERE c.id = 1"
    ).fetchone()
    assert row == (True,)


def test_without_the_privilege_plan_lists_the_triggers_and_start_refuses(
    dsn: str, conn: psycopg.Connection
) -> None:
    conn.execute(APP_DDL)
    conn.execute(SEED)
    run_dsn = _role(conn, dsn, "bf_plain")
    text = invoke_cli("plan", "--dsn", run_dsn, "-t", "p")
    assert text.returncode == 0, text.stderr
    for name in ("p_touch on public.p", "p_audit on public.p", "p_doc on public.p", "c_touch on public.c"):
        assert name in text.stdout
    doc = json.loads(invoke_cli("plan", "--dsn", run_dsn, "-t", "p", "--json").stdout)
    assert doc["backfill_replica"] is False
    assert set(doc["backfill_fires"]) == {
        "trigger c_audit on public.c",
        "trigger c_touch on public.c",
        "trigger p_audit on public.p",
        "trigger p_doc on public.p",
        "trigger p_touch on public.p",
    }
    res = invoke_cli("start", "--dsn", run_dsn, "-t", "p")
    assert res.returncode == 2
    [line] = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    if conn.info.server_version >= 150000:
        assert "GRANT SET ON PARAMETER session_replication_role TO bf_plain" in line
    else:  # no parameter privileges before 15
        assert "run it as a superuser" in line
    assert "--allow-trigger-side-effects" in line
    assert conn.execute("SELECT to_regnamespace('online_uuid') IS NULL").fetchone() == (True,)
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attname LIKE '%_uuid'").fetchone() == (0,)
    # Accepted explicitly: the backfill runs, and the side effects happen as announced.
    api.start(run_dsn, ["p"], settings=StartSettings(allow_trigger_side_effects=True))
    got = _app_state(conn)
    assert got["p_unfilled"] == got["c_unfilled"] == 0 and got["audit_rows"] > 0


def test_triggers_enabled_always_are_listed_and_refused_even_as_replica(
    dsn: str, conn: psycopg.Connection
) -> None:
    conn.execute(APP_DDL)
    conn.execute(SEED)
    conn.execute("ALTER TABLE p ENABLE ALWAYS TRIGGER p_audit")
    doc = json.loads(invoke_cli("plan", "--dsn", dsn, "-t", "p", "--json").stdout)
    assert doc["backfill_replica"] is True
    assert doc["backfill_fires"] == ["trigger p_audit on public.p (ENABLE ALWAYS)"]
    with pytest.raises(RefusedError, match=r"p_audit on public.p .ENABLE ALWAYS.* fire even as"):
        api.start(dsn, ["p"])
    assert conn.execute("SELECT count(*) FROM audit").fetchone() == (0,)
    assert conn.execute("SELECT to_regnamespace('online_uuid') IS NULL").fetchone() == (True,)
