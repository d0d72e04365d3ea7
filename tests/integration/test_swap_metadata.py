"""Privileges, comments, defaults, triggers and rules of every object the swap touches are kept.

A snapshot of the catalog taken before `start` equals the one after cutover and after rollback:
column grants and comments of converted columns (they follow the column name), recreated views with
WITH GRANT OPTION, column grants, comments, defaults, INSTEAD OF triggers and rules, and comments on
the recreated keys, foreign keys and indexes.
"""

from __future__ import annotations

from typing import Any

import psycopg

from online_uuid import api

ROLES = "DO $$ BEGIN CREATE ROLE {0}; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
DDL = """
CREATE TABLE p (id serial PRIMARY KEY, v text);
CREATE TABLE c (id serial PRIMARY KEY, pid int CONSTRAINT c_pid_fk REFERENCES p, v text);
CREATE INDEX c_pid_idx ON c (pid) WITH (fillfactor = 70);
ALTER INDEX p_pkey SET (fillfactor = 80);
ALTER TABLE c ALTER COLUMN pid SET STATISTICS 500;
INSERT INTO p (v) SELECT 'p' || g FROM generate_series(1, 20) g;
INSERT INTO c (pid, v) SELECT g % 20 + 1, 'c' || g FROM generate_series(1, 40) g;
COMMENT ON COLUMN p.id IS 'the key';
COMMENT ON COLUMN c.pid IS 'the parent';
COMMENT ON CONSTRAINT p_pkey ON p IS 'primary key';
COMMENT ON INDEX p_pkey IS 'primary key index';
COMMENT ON CONSTRAINT c_pid_fk ON c IS 'foreign key';
COMMENT ON INDEX c_pid_idx IS 'lookup';
GRANT SELECT (id, v) ON p TO ou_reader;
GRANT SELECT (id, pid, v), UPDATE (pid) ON c TO ou_reader;
GRANT INSERT (pid, v) ON c TO ou_writer WITH GRANT OPTION;
CREATE VIEW pv AS SELECT p.id, p.v, c.id AS cid FROM p JOIN c ON c.pid = p.id;
COMMENT ON VIEW pv IS 'parents with children';
COMMENT ON COLUMN pv.v IS 'the name';
GRANT SELECT ON pv TO ou_reader WITH GRANT OPTION;
GRANT SELECT (v), INSERT (v) ON pv TO ou_writer;
ALTER VIEW pv ALTER COLUMN v SET DEFAULT 'from the view';
CREATE FUNCTION pv_insert() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS
  $$BEGIN INSERT INTO p (v) VALUES (NEW.v); RETURN NEW; END$$;
CREATE TRIGGER pv_insert INSTEAD OF INSERT ON pv FOR EACH ROW EXECUTE FUNCTION pv_insert();
CREATE RULE pv_delete AS ON DELETE TO pv DO INSTEAD DELETE FROM c WHERE c.id = OLD.cid;
"""

SNAPSHOT = {
    "relation acl": "SELECT relname, relacl::text[] FROM pg_class WHERE relname IN ('p', 'c', 'pv') ORDER BY 1",
    "column acl": """
        SELECT c.relname, a.attname, a.attacl::text[] FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relname IN ('p', 'c', 'pv') AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attname NOT LIKE '%\\_uuid' AND a.attname NOT LIKE '%\\_int' ORDER BY 1, 2""",
    "column comments": """
        SELECT c.relname, a.attname, col_description(c.oid, a.attnum) FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid WHERE c.relname IN ('p', 'c', 'pv') AND a.attnum > 0
           AND NOT a.attisdropped AND a.attname NOT LIKE '%\\_uuid' AND a.attname NOT LIKE '%\\_int'
         ORDER BY 1, 2""",
    "relation comments": """
        SELECT relname, obj_description(oid, 'pg_class') FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND obj_description(oid, 'pg_class') IS NOT NULL ORDER BY 1""",
    "constraint comments": """
        SELECT conname, obj_description(oid, 'pg_constraint') FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace AND obj_description(oid, 'pg_constraint') IS NOT NULL
         ORDER BY 1""",
    "index options": """
        SELECT relname, reloptions::text[] FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND relkind = 'i' AND reloptions IS NOT NULL ORDER BY 1""",
    "statistics targets": """
        SELECT c.relname, a.attname, nullif(a.attstattarget::int, -1) FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid WHERE c.relname IN ('p', 'c') AND a.attnum > 0
           AND NOT a.attisdropped AND a.attname NOT LIKE '%\\_uuid' AND a.attname NOT LIKE '%\\_int'
         ORDER BY 1, 2""",
    "view triggers": """
        SELECT tgname, pg_get_triggerdef(oid), tgenabled FROM pg_trigger WHERE tgrelid = 'pv'::regclass
         ORDER BY 1""",
    "view rules": "SELECT rulename, definition FROM pg_rules WHERE tablename = 'pv' ORDER BY 1",
    "view defaults": """
        SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
          JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
         WHERE d.adrelid = 'pv'::regclass ORDER BY 1""",
}


def _snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {k: [tuple(r) for r in conn.execute(q).fetchall()] for k, q in SNAPSHOT.items()}


def _as_roles_the_application_works(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL ROLE ou_reader")
        assert len(conn.execute("SELECT id, v FROM p").fetchall()) == 20
        assert len(conn.execute("SELECT id, pid, v FROM c").fetchall()) == 40
        assert len(conn.execute("SELECT * FROM pv").fetchall()) == 40
    with conn.transaction():
        conn.execute("SET LOCAL ROLE ou_writer")
        conn.execute("INSERT INTO pv (v) VALUES (DEFAULT)")  # the view's default and INSTEAD OF trigger
    assert conn.execute("SELECT count(*) FROM p WHERE v = 'from the view'").fetchone() == (1,)
    conn.execute("DELETE FROM p WHERE v = 'from the view'")


def test_metadata_is_the_same_after_cutover_and_after_rollback(dsn: str, conn: psycopg.Connection) -> None:
    conn.execute(ROLES.format("ou_reader"))
    conn.execute(ROLES.format("ou_writer"))
    conn.execute(DDL)
    before = _snapshot(conn)
    _as_roles_the_application_works(conn)
    api.start(dsn, ["p"])
    api.cutover(dsn)
    assert conn.execute(
        "SELECT format_type(atttypid, -1) FROM pg_attribute WHERE attrelid = 'p'::regclass AND attname = 'id'"
    ).fetchone() == ("uuid",)
    assert _snapshot(conn) == before
    _as_roles_the_application_works(conn)
    api.rollback(dsn)
    assert _snapshot(conn) == before
    shadows = conn.execute(
        "SELECT attname, attacl, col_description(attrelid, attnum) FROM pg_attribute "
        "WHERE attrelid IN ('p'::regclass, 'c'::regclass) AND attname LIKE '%\\_uuid' ORDER BY 1"
    ).fetchall()
    assert shadows == [("id_uuid", None, None), ("pid_uuid", None, None)]  # as start made them
    _as_roles_the_application_works(conn)
