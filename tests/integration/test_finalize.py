"""`rollback` after cutover, and `finalize`, on a real server: what a user checks afterwards.

Rollback must give back the original integer ids and constraint definitions; finalize must leave a
schema that `pg_dump --schema-only` cannot tell from one created with UUID keys from the start.
"""

from __future__ import annotations

import difflib
import re
import secrets
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from online_uuid import api, naming
from online_uuid.embedded import PgServer
from online_uuid.model import Phase
from online_uuid.settings import StartSettings
from support.cli import cli_in_process as _cli
from support.schema import fresh_database
from support.snapshots import catalog_snapshot, constraint_defs, phase_of, schema_dump

HELPER = re.compile(r"^(ou|OU)_|_ou$")  # names of the tool's preparation objects (naming.py)


def _ns(schema: str) -> str:
    return sql.Identifier(schema).as_string(None)


def _indexes(conn: psycopg.Connection, schema: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (schema,)
    ).fetchall()
    return {str(n): str(d) for n, d in rows}


def _columns(conn: psycopg.Connection, schema: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(table, column) -> (position, type, NOT NULL, default, identity) of every table column."""
    rows = conn.execute(
        "SELECT c.relname, a.attname, a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
        "pg_get_expr(d.adbin, d.adrelid), a.attidentity FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid "
        "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind IN ('r', 'v') AND a.attnum > 0 "
        "AND NOT a.attisdropped",
        (_ns(schema),),
    ).fetchall()
    return {(str(r[0]), str(r[1])): tuple(r[2:]) for r in rows}


def _types(conn: psycopg.Connection, schema: str) -> dict[tuple[str, str], str]:
    return {k: v[1] for k, v in _columns(conn, schema).items()}


def _no_helper_objects(conn: psycopg.Connection, schema: str, user_triggers: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Nothing of the tool is left in the user's schema, nor a function in its own."""
    leftovers = [
        c for c in _columns(conn, schema) if c[1].endswith((naming.RETIRED_SUFFIX, naming.SHADOW_SUFFIX))
    ]
    assert leftovers == [], f"retired or shadow columns left: {leftovers}"
    assert not [k for k in constraint_defs(conn, schema) if HELPER.search(k[1]) or k[1].startswith("ou_")]
    assert not [n for n in _indexes(conn, schema) if HELPER.search(n)]
    triggers = {
        str(r[0])
        for r in conn.execute(
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND c.relnamespace = to_regnamespace(%s)",
            (_ns(schema),),
        ).fetchall()
    }
    assert triggers == set(user_triggers)
    functions = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "WHERE p.pronamespace = to_regnamespace('online_uuid')"
    ).fetchall()
    assert functions == []
    sequences = conn.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'S' AND relnamespace = to_regnamespace(%s)",
        (_ns(schema),),
    ).fetchall()
    assert sequences == [], "the integer keys' sequences go with their columns"


def _normalised(dump: str) -> list[str]:
    """The dump with the column lines of each CREATE TABLE sorted (column order is all that may differ)."""
    out: list[str] = []
    cols: list[str] | None = None
    for line in dump.splitlines():
        if cols is None:
            out.append(line)
            if line.startswith("CREATE TABLE ") and line.endswith("("):
                cols = []
        elif line.startswith(")"):
            out += sorted(c.rstrip(",") for c in cols)
            out.append(line)
            cols = None
        else:
            cols.append(line)
    return out


def _assert_same_dump(pg_bin: Path, migrated: str, reference: str) -> None:
    a = _normalised(schema_dump(pg_bin, migrated, "--exclude-schema=online_uuid"))
    b = _normalised(schema_dump(pg_bin, reference, "--exclude-schema=online_uuid"))
    diff = "\n".join(
        difflib.unified_diff(b, a, "uuid keys from the start", "migrated + finalized", lineterm="")
    )
    assert a == b, diff


@pytest.fixture
def reference_dsn(pg_server: PgServer) -> Iterator[str]:
    """A second fresh database on the same server, for the schema created with UUID keys from the start."""
    with fresh_database(pg_server.dsn, pg_server.dsn_for) as reference:
        yield reference


@pytest.fixture
def reader(pg_server: PgServer) -> Iterator[str]:
    """A role with a name that needs quoting, granted SELECT on a view (request it before `dsn`)."""
    name = f"Report Reader {secrets.token_hex(3)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        try:
            admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test server's user may not CREATE ROLE")
    yield name
    with (
        psycopg.connect(pg_server.dsn, autocommit=True) as admin,
        suppress(psycopg.errors.DependentObjectsStillExist),
    ):
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


# --- rollback after cutover ---------------------------------------------------------------------

ROLLBACK_DDL = """
CREATE TABLE team (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE member (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    team_id bigint NOT NULL CONSTRAINT member_team_fk REFERENCES team ON DELETE RESTRICT ON UPDATE CASCADE,
    mentor_id integer CONSTRAINT member_mentor_fk REFERENCES member ON DELETE SET NULL);
CREATE INDEX member_team_idx ON member (team_id);
CREATE TABLE task (
    id serial PRIMARY KEY,
    title text NOT NULL,
    member_id integer CONSTRAINT task_member_fk REFERENCES member
        ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT task_member_title UNIQUE (member_id, title));
INSERT INTO team (name) SELECT 'T' || g FROM generate_series(1, 5) g;
INSERT INTO member (name, team_id, mentor_id)
    SELECT 'M' || g, 1 + g % 5, CASE WHEN g > 1 AND g % 4 <> 0 THEN g - 1 END FROM generate_series(1, 40) g;
INSERT INTO task (title, member_id) SELECT 'K' || g, CASE WHEN g % 10 <> 0 THEN 1 + g % 40 END
    FROM generate_series(1, 100) g;
"""
ROLLBACK_TABLES = ("team", "member", "task")
NATURAL = {"team": "name", "member": "name", "task": "title"}


def _ids(conn: psycopg.Connection, column: str = "id") -> dict[str, dict[str, Any]]:
    """table -> natural key -> `column`."""
    return {
        t: dict(
            conn.execute(
                sql.SQL("SELECT {}, {} FROM {}").format(
                    sql.Identifier(NATURAL[t]), sql.Identifier(column), sql.Identifier(t)
                )
            ).fetchall()
        )  # type: ignore[arg-type]
        for t in ROLLBACK_TABLES
    }


def _relations(conn: psycopg.Connection) -> dict[str, set[tuple[Any, ...]]]:
    """Every relationship by natural keys, joined on whatever the key columns are now."""
    q = {
        "member.team": "SELECT m.name, t.name FROM member m JOIN team t ON t.id = m.team_id",
        "member.mentor": "SELECT m.name, x.name FROM member m LEFT JOIN member x ON x.id = m.mentor_id",
        "task.member": "SELECT k.title, m.name FROM task k LEFT JOIN member m ON m.id = k.member_id",
    }
    return {k: {tuple(r) for r in conn.execute(v).fetchall()} for k, v in q.items()}  # type: ignore[arg-type]


def _without_shadows(cols: dict[tuple[str, str], tuple[Any, ...]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {k: v for k, v in cols.items() if not k[1].endswith(naming.SHADOW_SUFFIX)}


def test_rollback_after_cutover_restores_original_ids_names_and_actions_then_cutover_again_and_finalize(
    dsn: str, conn: psycopg.Connection
) -> None:
    conn.execute(ROLLBACK_DDL)
    ids0, rel0 = _ids(conn), _relations(conn)
    cols0, cons0, idx0 = _columns(conn, "public"), constraint_defs(conn, "public"), _indexes(conn, "public")
    max0 = {t: max(v.values()) for t, v in ids0.items()}
    api.start(dsn, list(ROLLBACK_TABLES), settings=StartSettings(cascade_deletes=True))

    assert _cli("cutover", dsn=dsn)[0] == 0
    assert {_types(conn, "public")[(t, "id")] for t in ROLLBACK_TABLES} == {"uuid"}
    assert all(
        d.endswith("ON DELETE CASCADE") or "ON DELETE CASCADE " in d
        for (_, n), d in constraint_defs(conn, "public").items()
        if n.endswith("_fk")
    )
    uuids = _ids(conn)

    # The application goes on between cutover and rollback, by natural keys and UUID keys only.
    conn.execute("INSERT INTO team (name) VALUES ('T-new')")
    conn.execute(
        "INSERT INTO member (name, team_id, mentor_id) SELECT 'M-new', t.id, m.id FROM team t, member m "
        "WHERE t.name = 'T-new' AND m.name = 'M3'"
    )
    conn.execute("INSERT INTO member (name, team_id) SELECT 'M-new2', id FROM team WHERE name = 'T1'")
    conn.execute("INSERT INTO task (title, member_id) SELECT 'K-new', id FROM member WHERE name = 'M-new'")
    conn.execute("UPDATE member SET team_id = (SELECT id FROM team WHERE name = 'T-new') WHERE name = 'M5'")
    conn.execute(
        "UPDATE task SET member_id = (SELECT id FROM member WHERE name = 'M-new2') WHERE title = 'K7'"
    )
    conn.execute("DELETE FROM task WHERE title = 'K8'")
    rel1, uuids1 = _relations(conn), _ids(conn)

    code, out, err = _cli("rollback", dsn=dsn)
    assert code == 0, err
    assert "rolled back: phase backfilled" in out
    assert phase_of(conn, "team") == Phase.BACKFILLED

    # Integer keys are back: same columns, positions, types, defaults and identities as before start ...
    assert _without_shadows(_columns(conn, "public")) == cols0
    # ... with the original constraint names and FK actions, and every index under its name (the
    # dual-write constraint triggers `OU_*_fkfix` are back too: the migration is `backfilled` again).
    assert {k: v for k, v in constraint_defs(conn, "public").items() if not HELPER.search(k[1])} == cons0
    assert _indexes(conn, "public") == idx0
    ids2 = _ids(conn)
    for t in ROLLBACK_TABLES:  # the original integer values, not new ones
        assert {k: v for k, v in ids2[t].items() if k in ids0[t]} == {
            k: v for k, v in ids0[t].items() if k in ids2[t]
        }
    new_rows = {t: {k: v for k, v in ids2[t].items() if k not in ids0[t]} for t in ROLLBACK_TABLES}
    assert set(new_rows["team"]) == {"T-new"} and set(new_rows["member"]) == {"M-new", "M-new2"}
    for t, rows in new_rows.items():  # rows written after the cutover got integers from their sequence
        assert all(isinstance(v, int) and v > max0[t] for v in rows.values()), (t, rows)
    assert _relations(conn) == rel1  # joined by integer again: what the application saw by UUID
    assert _ids(conn, "id_uuid") == uuids1  # and every row keeps its UUID for the next cutover
    report = api.verify(dsn)
    assert report.ok, report.first_problem()
    with pytest.raises(
        (psycopg.errors.ForeignKeyViolation, psycopg.errors.RestrictViolation), match="member_team_fk"
    ):
        conn.execute("DELETE FROM team WHERE name = 'T1'")  # RESTRICT again, not CASCADE

    # Cut over again: the same UUIDs; then finalize.
    assert _cli("cutover", dsn=dsn)[0] == 0
    assert _ids(conn) == uuids1
    assert all(uuids1[t][n] == u for t in uuids for n, u in uuids[t].items() if n in uuids1[t])
    code, out, err = _cli("finalize", dsn=dsn)
    assert code == 0, err
    assert phase_of(conn, "team") == Phase.FINALIZED
    assert _relations(conn) == rel1
    assert _ids(conn) == uuids1
    _no_helper_objects(conn, "public")
    assert rel0  # (the seed had relationships to begin with)


def test_finalize_is_refused_before_cutover_and_changes_nothing(dsn: str, conn: psycopg.Connection) -> None:
    conn.execute(ROLLBACK_DDL)
    api.start(dsn, list(ROLLBACK_TABLES))
    before = catalog_snapshot(conn)
    code, _, err = _cli("finalize", dsn=dsn)
    assert code == 2
    assert "finalize only follows a cutover" in err
    assert catalog_snapshot(conn) == before
    assert phase_of(conn, "team") == Phase.BACKFILLED


# --- finalize: indistinguishable from UUID keys from the start -------------------------------------

# {key} / {ref}: the key column type and a referencing column type, integer or uuid flavour.
GUIDE_DDL = """
CREATE TABLE mcp_connectors (
    id {key_serial} PRIMARY KEY, name text NOT NULL, kind text NOT NULL, user_id bigint NOT NULL,
    is_active boolean NOT NULL DEFAULT true, created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uq_mcp_connectors_name UNIQUE (name));
CREATE TABLE connector_access (
    id {key_identity} PRIMARY KEY, connector_id {ref} NOT NULL, user_id bigint NOT NULL,
    role text NOT NULL DEFAULT 'viewer' CHECK (role IN ('owner', 'editor', 'viewer')),
    CONSTRAINT uq_connector_access_connector_user UNIQUE (connector_id, user_id));
CREATE INDEX ix_connector_access_user_id ON connector_access (user_id);
CREATE TABLE mcp_servers (
    id {key_identity} PRIMARY KEY, connector_id {ref} NOT NULL, name text NOT NULL, url text NOT NULL,
    CONSTRAINT uq_mcp_servers_name UNIQUE (name));
CREATE INDEX ix_mcp_servers_connector_id ON mcp_servers (connector_id);
CREATE TABLE mcp_server_tokens (
    id {key_serial} PRIMARY KEY, mcp_server_id {ref} NOT NULL, token_hash text NOT NULL,
    CONSTRAINT uq_mcp_server_tokens_token_hash UNIQUE (token_hash));
CREATE INDEX ix_mcp_server_tokens_mcp_server_id ON mcp_server_tokens (mcp_server_id);
CREATE TABLE mcp_server_tools (
    id {key_identity} PRIMARY KEY, mcp_server_id {ref} NOT NULL, tool_name text NOT NULL,
    CONSTRAINT uq_mcp_server_tools_server_tool UNIQUE (mcp_server_id, tool_name));
ALTER TABLE connector_access ADD CONSTRAINT fk_connector_access_connector_id
    FOREIGN KEY (connector_id) REFERENCES mcp_connectors (id) ON DELETE CASCADE;
ALTER TABLE mcp_servers ADD CONSTRAINT fk_mcp_servers_connector_id
    FOREIGN KEY (connector_id) REFERENCES mcp_connectors (id) ON DELETE CASCADE;
ALTER TABLE mcp_server_tokens ADD CONSTRAINT fk_mcp_server_tokens_mcp_server_id
    FOREIGN KEY (mcp_server_id) REFERENCES mcp_servers (id) {later_cascade};
ALTER TABLE mcp_server_tools ADD CONSTRAINT fk_mcp_server_tools_mcp_server_id
    FOREIGN KEY (mcp_server_id) REFERENCES mcp_servers (id) {later_cascade};
"""
GUIDE_TABLES = ["mcp_connectors", "connector_access", "mcp_servers", "mcp_server_tokens", "mcp_server_tools"]
GUIDE_SEED = """
INSERT INTO mcp_connectors (name, kind, user_id)
    SELECT 'conn-' || g, 'github', g FROM generate_series(1, 10) g;
INSERT INTO connector_access (connector_id, user_id)
    SELECT c.id, u FROM mcp_connectors c, generate_series(1, 2) u;
INSERT INTO mcp_servers (connector_id, name, url) SELECT c.id, c.name || '-srv', 'u' FROM mcp_connectors c;
INSERT INTO mcp_server_tokens (mcp_server_id, token_hash) SELECT s.id, s.name || '-tok' FROM mcp_servers s;
INSERT INTO mcp_server_tools (mcp_server_id, tool_name) SELECT s.id, 'tool' FROM mcp_servers s;
"""
UUID_KEY = "uuid DEFAULT gen_random_uuid()"


def test_finalized_guide_tables_match_uuid_keys_from_the_start(
    dsn: str, conn: psycopg.Connection, reference_dsn: str, pg_bin: Path
) -> None:
    conn.execute(
        GUIDE_DDL.format(
            key_serial="serial",
            key_identity="integer GENERATED BY DEFAULT AS IDENTITY",
            ref="integer",
            later_cascade="",
        )
    )
    conn.execute(GUIDE_SEED)
    api.start(dsn, GUIDE_TABLES, settings=StartSettings(cascade_deletes=True))
    api.cutover(dsn)
    api.finalize(dsn)

    with psycopg.connect(reference_dsn, autocommit=True) as ref:
        ref.execute(
            GUIDE_DDL.format(
                key_serial=UUID_KEY, key_identity=UUID_KEY, ref="uuid", later_cascade="ON DELETE CASCADE"
            )
        )
    _assert_same_dump(pg_bin, dsn, reference_dsn)
    _no_helper_objects(conn, "public")
    assert conn.execute(
        "SELECT count(*) FROM mcp_server_tools t JOIN mcp_servers s ON s.id = t.mcp_server_id "
        "JOIN mcp_connectors c ON c.id = s.connector_id AND s.name = c.name || '-srv'"
    ).fetchone() == (10,)


HARD_DDL = """
CREATE SCHEMA "App Data";
CREATE FUNCTION "App Data".touch() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN NEW.total := coalesce(NEW.total, 0); RETURN NEW; END $$;
CREATE TABLE "App Data"."user" (id {user_key} PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE "App Data"."Order" (
    "ID" {order_key} PRIMARY KEY,
    ref text NOT NULL CONSTRAINT "Order_ref_key" UNIQUE,
    "parent Order" {order_ref} CONSTRAINT "Order_parent_fk" REFERENCES "App Data"."Order" ("ID")
        ON UPDATE CASCADE,
    "user" {user_ref} NOT NULL CONSTRAINT "Order_user_fk" REFERENCES "App Data"."user" (id) ON DELETE CASCADE,
    total numeric NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX "Order_user_total" ON "App Data"."Order" ("user", total DESC);
CREATE TRIGGER "Order touch" BEFORE INSERT ON "App Data"."Order"
    FOR EACH ROW EXECUTE FUNCTION "App Data".touch();
CREATE TABLE "App Data".access (
    user_id {user_ref} NOT NULL CONSTRAINT access_user_fk REFERENCES "App Data"."user" (id),
    order_id {order_ref} NOT NULL CONSTRAINT access_order_fk REFERENCES "App Data"."Order" ("ID")
        DEFERRABLE INITIALLY DEFERRED,
    granted_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT access_pkey PRIMARY KEY (user_id, order_id));
CREATE INDEX access_order_id ON "App Data".access (order_id);
CREATE VIEW "App Data"."order view" AS
    SELECT o."ID", o.ref, o."user", u.name AS user_name FROM "App Data"."Order" o
      JOIN "App Data"."user" u ON u.id = o."user";
GRANT SELECT ON "App Data"."order view" TO {reader};
"""
HARD_INT = {
    "user_key": "serial",
    "order_key": "bigint GENERATED ALWAYS AS IDENTITY",
    "user_ref": "integer",
    "order_ref": "bigint",
}
HARD_UUID = {"user_key": UUID_KEY, "order_key": UUID_KEY, "user_ref": "uuid", "order_ref": "uuid"}
HARD_SEED = """
INSERT INTO "App Data"."user" (name) SELECT 'u' || g FROM generate_series(1, 6) g;
INSERT INTO "App Data"."Order" (ref, "user", total)
    SELECT 'o' || g, 1 + g % 6, g FROM generate_series(1, 30) g;
UPDATE "App Data"."Order" SET "parent Order" = "ID" - 1 WHERE "ID" % 3 <> 1;
INSERT INTO "App Data".access (user_id, order_id)
    SELECT u.id, o."ID" FROM "App Data"."user" u JOIN "App Data"."Order" o ON o."ID" % 6 = u.id % 6;
"""
S = "App Data"


def _hard_relations(conn: psycopg.Connection) -> dict[str, set[tuple[Any, ...]]]:
    q = {
        "parent": 'SELECT o.ref, p.ref FROM "App Data"."Order" o LEFT JOIN "App Data"."Order" p '
        'ON p."ID" = o."parent Order"',
        "user": 'SELECT o.ref, u.name FROM "App Data"."Order" o JOIN "App Data"."user" u ON u.id = o."user"',
        "access": 'SELECT u.name, o.ref FROM "App Data".access a '
        'JOIN "App Data"."user" u ON u.id = a.user_id JOIN "App Data"."Order" o ON o."ID" = a.order_id',
        "view": 'SELECT ref, user_name FROM "App Data"."order view"',
    }
    return {k: {tuple(r) for r in conn.execute(v).fetchall()} for k, v in q.items()}  # type: ignore[arg-type]


def _user_constraints(conn: psycopg.Connection) -> dict[tuple[str, str], str]:
    """The schema's constraints without the tool's own: deferred fix-up triggers (random mode) and the
    derived invariant's CHECKs (derived mode, until the swap)."""
    return {k: v for k, v in constraint_defs(conn, S).items() if not k[1].endswith(("_fkfix", "_dv"))}


def test_hard_cases_through_cutover_and_finalize_match_uuid_keys_from_the_start(
    reader: str, dsn: str, conn: psycopg.Connection, reference_dsn: str, pg_bin: Path
) -> None:
    who = sql.Identifier(reader).as_string(None)
    conn.execute(HARD_DDL.format(reader=who, **HARD_INT))
    conn.execute(HARD_SEED)
    api.start(dsn, ['"App Data"."user"', '"App Data"."Order"'])

    # While both keys are live: a grant inserted before its order in one transaction (deferred FK).
    with conn.transaction():
        row = conn.execute(
            """SELECT nextval(pg_get_serial_sequence('"App Data"."Order"', 'ID'))"""
        ).fetchone()
        assert row is not None
        conn.execute(
            'INSERT INTO "App Data".access (user_id, order_id) SELECT id, %s FROM "App Data"."user" '
            "WHERE name = 'u1'",
            (row[0],),
        )
        conn.execute(
            'INSERT INTO "App Data"."Order" ("ID", ref, "user") OVERRIDING SYSTEM VALUE '
            "SELECT %s, 'o-late', id FROM \"App Data\".\"user\" WHERE name = 'u2'",
            (row[0],),
        )
    report = api.verify(dsn)
    assert report.ok, report.first_problem()
    rel, cons, idx = _hard_relations(conn), _user_constraints(conn), _indexes(conn, S)

    code, _, err = _cli("cutover", dsn=dsn)
    assert code == 0, err
    types = _types(conn, S)
    for col in [
        ("user", "id"),
        ("Order", "ID"),
        ("Order", "parent Order"),
        ("Order", "user"),
        ("access", "user_id"),
        ("access", "order_id"),
        ("order view", "ID"),
        ("order view", "user"),
    ]:
        assert types[col] == "uuid", col
    assert _hard_relations(conn) == rel
    assert _user_constraints(conn) == cons  # same names, composite PK, deferrable FK, actions
    assert _indexes(conn, S) == idx  # composite unique index with the FK column, index on order_id
    assert conn.execute(
        "SELECT has_table_privilege(%s, '\"App Data\".\"order view\"', 'SELECT')", (reader,)
    ).fetchone() == (True,)
    # The deferrable FK still defers, now on UUIDs; the identity and the user's trigger still work.
    with conn.transaction():
        new_id = conn.execute("SELECT gen_random_uuid()").fetchone()
        assert new_id is not None
        conn.execute(
            'INSERT INTO "App Data".access (user_id, order_id) SELECT id, %s FROM "App Data"."user" '
            "WHERE name = 'u3'",
            new_id,
        )
        conn.execute(
            'INSERT INTO "App Data"."Order" ("ID", ref, "user", total) '
            "SELECT %s, 'o-uuid', id, NULL FROM \"App Data\".\"user\" WHERE name = 'u3'",
            new_id,
        )
    assert conn.execute(
        'SELECT total, "ID_int" IS NOT NULL FROM "App Data"."Order" WHERE ref = \'o-uuid\''
    ).fetchone() == (0, True)

    code, _, err = _cli("finalize", dsn=dsn)
    assert code == 0, err
    _no_helper_objects(conn, S, user_triggers={"Order touch"})
    with psycopg.connect(reference_dsn, autocommit=True) as ref:
        ref.execute(HARD_DDL.format(reader=who, **HARD_UUID))
    _assert_same_dump(pg_bin, dsn, reference_dsn)
