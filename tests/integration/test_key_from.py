"""`start --key-from TABLE.COLUMN`: the new key takes an existing uuid column's values."""

from __future__ import annotations

import psycopg
import pytest

from online_uuid import api
from support.cli import cli_in_process
from support.snapshots import catalog_snapshot

DDL = """
CREATE SCHEMA "Shop";
CREATE TABLE "Shop".customer (
    id serial PRIMARY KEY,
    "Public Id" uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    name text);
CREATE TABLE "Shop".rental (id serial PRIMARY KEY, customer_id int REFERENCES "Shop".customer, at int);
INSERT INTO "Shop".customer (name) SELECT 'c' || g FROM generate_series(1, 200) g;
INSERT INTO "Shop".rental (customer_id, at) SELECT 1 + g % 200, g FROM generate_series(1, 600) g;
INSERT INTO "Shop".rental (customer_id, at) VALUES (NULL, 0);
"""
TABLE = '"Shop".customer'
KEY_FROM = '"Shop".customer."Public Id"'


def _links(conn: psycopg.Connection, key: str) -> list[tuple[object, ...]]:
    """(rental id, the customer's public id) through the live FK."""
    return conn.execute(
        f'SELECT r.id, c."Public Id" FROM "Shop".rental r LEFT JOIN "Shop".customer c ON c.{key} = r.customer_id '  # noqa: S608
        "ORDER BY r.id"
    ).fetchall()


def test_adopted_column_becomes_the_key_end_to_end_with_rollback(dsn: str, conn: psycopg.Connection) -> None:
    conn.prepare_threshold = None
    conn.execute(DDL)
    before_catalog = catalog_snapshot(conn)
    public = dict(conn.execute('SELECT id, "Public Id" FROM "Shop".customer').fetchall())
    links = _links(conn, "id")

    plan = api.plan(dsn, [TABLE], key_from=[KEY_FROM])
    assert plan.keys[0].adopt == "Public Id"
    code, out, err = cli_in_process("start", "-t", TABLE, "--key-from", KEY_FROM, dsn=dsn)
    assert code == 0, (out, err)
    shadows = dict(conn.execute('SELECT id, id_uuid FROM "Shop".customer').fetchall())
    assert shadows == public  # the key's values are the adopted column's, no new UUID
    # rows written after start take the adopted column's value too (also when the app sets it)
    new_id = conn.execute(
        'INSERT INTO "Shop".customer (name) VALUES (%s) RETURNING id, "Public Id", id_uuid', ("new",)
    ).fetchone()
    assert new_id is not None and new_id[1] == new_id[2]
    conn.execute('INSERT INTO "Shop".rental (customer_id, at) VALUES (%s, 1)', (new_id[0],))
    assert api.verify(dsn).ok

    api.cutover(dsn)
    after = dict(conn.execute('SELECT id_int, id FROM "Shop".customer').fetchall())
    assert all(after[i] == u for i, u in public.items()) and after[new_id[0]] == new_id[1]
    assert conn.execute('SELECT count(*) FROM "Shop".customer WHERE id <> "Public Id"').fetchone() == (0,)
    assert _links(conn, "id")[: len(links)] == links  # every rental still points at its customer
    cols = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = '\"Shop\".customer'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    ).fetchall()
    assert ("Public Id", "uuid", True) in cols and ("id", "uuid", True) in cols  # the adopted column stays

    api.rollback(dsn)  # back to integers, lossless
    assert (
        dict(conn.execute('SELECT id, "Public Id" FROM "Shop".customer WHERE id <= 200').fetchall()) == public
    )
    assert _links(conn, "id")[: len(links)] == links
    api.rollback(dsn)  # and away: the schema as it was
    conn.execute('DELETE FROM "Shop".rental WHERE at = 1; DELETE FROM "Shop".customer WHERE name = \'new\'')
    assert catalog_snapshot(conn) == before_catalog


@pytest.mark.parametrize(
    ("fix", "message"),
    [
        (
            'UPDATE "Shop".customer SET "Public Id" = NULL WHERE id <= 3',
            "holds 3 NULL(s) and 0 duplicate value(s)",
        ),
        (
            'UPDATE "Shop".customer SET "Public Id" = (SELECT "Public Id" FROM "Shop".customer WHERE id = 1) '
            "WHERE id IN (2, 3)",
            "holds 0 NULL(s) and 2 duplicate value(s)",
        ),
        ("", "is text, not uuid"),
    ],
    ids=["nulls", "duplicates", "not-uuid"],
)
def test_key_from_refuses_nulls_duplicates_and_other_types(
    dsn: str, conn: psycopg.Connection, fix: str, message: str
) -> None:
    conn.execute(DDL.replace("NOT NULL DEFAULT gen_random_uuid() UNIQUE", "DEFAULT gen_random_uuid()"))
    key_from = KEY_FROM
    if fix:
        conn.execute(fix)
    else:
        key_from = '"Shop".customer.name'
    code, out, err = cli_in_process("start", "-t", TABLE, "--key-from", key_from, dsn=dsn)
    assert code == 2, (out, err)
    assert message in err and err.count("\n") == 1, err
    assert conn.execute("SELECT to_regnamespace('online_uuid')").fetchone() == (None,)
