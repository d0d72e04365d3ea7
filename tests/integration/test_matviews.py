"""Materialized views over converted columns: readable with the same rows through every phase."""

from __future__ import annotations

import random

import psycopg

from online_uuid import api
from support.workload import writing

DDL = """
CREATE TABLE film (film_id serial PRIMARY KEY, title text NOT NULL);
CREATE TABLE inventory (inventory_id serial PRIMARY KEY, film_id int NOT NULL REFERENCES film, store int);
INSERT INTO film (title) SELECT 'film ' || g FROM generate_series(1, 300) g;
INSERT INTO inventory (film_id, store) SELECT 1 + g % 250, g % 3 FROM generate_series(1, 900) g;
CREATE MATERIALIZED VIEW film_stock WITH (fillfactor = 90) AS
    SELECT f.film_id, f.title, count(i.inventory_id) AS copies
      FROM film f LEFT JOIN inventory i ON i.film_id = f.film_id GROUP BY f.film_id, f.title;
CREATE UNIQUE INDEX film_stock_pk ON film_stock (film_id);
CREATE INDEX "Film Stock by title" ON film_stock (title) WHERE copies > 0;
COMMENT ON MATERIALIZED VIEW film_stock IS 'stock per film';
COMMENT ON COLUMN film_stock.copies IS 'copies in all stores';
COMMENT ON INDEX film_stock_pk IS 'one row per film';
CREATE MATERIALIZED VIEW per_store AS SELECT store, count(*) AS n FROM inventory GROUP BY store;
DO $$ BEGIN CREATE ROLE mv_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT SELECT ON film_stock TO mv_reader;
"""


def _rows(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT film_id, title, copies FROM film_stock ORDER BY title").fetchall()


def _shape(conn: psycopg.Connection) -> dict[str, object]:
    """What a DBA would check: the key's type, indexes, comments, grants, options, populated."""
    one = conn.execute(
        "SELECT format_type(a.atttypid, a.atttypmod), c.relispopulated, c.reloptions, "
        "obj_description(c.oid, 'pg_class'), col_description(c.oid, 3), "
        "has_table_privilege('mv_reader', c.oid, 'SELECT'), pg_get_userbyid(c.relowner) "
        "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = 1 "
        "WHERE c.oid = 'film_stock'::regclass"
    ).fetchone()
    assert one is not None
    indexes = conn.execute(
        "SELECT indexname, regexp_replace(indexdef, 'film_id(_int)?', 'film_id'), "
        "obj_description(format('%I', indexname)::regclass, 'pg_class') "
        "FROM pg_indexes WHERE tablename = 'film_stock' ORDER BY 1"
    ).fetchall()
    return {
        "type": one[0],
        "populated": one[1],
        "options": one[2],
        "comment": one[3],
        "column_comment": one[4],
        "reader": one[5],
        "owner": one[6],
        "indexes": indexes,
    }


def test_matview_reads_the_same_rows_at_every_phase_and_is_rebuilt_on_uuid_at_finalize(
    dsn: str, conn: psycopg.Connection
) -> None:
    conn.prepare_threshold = None  # the key changes type under the same query text
    conn.execute(DDL)
    before, shape = _rows(conn), _shape(conn)
    assert shape["type"] == "integer" and len(shape["indexes"]) == 2  # type: ignore[arg-type]

    plan = api.plan(dsn, ["film"])
    assert [str(m.view) for m in plan.matviews] == [
        "public.film_stock"
    ]  # per_store reads no converted column
    warning = next(w for w in plan.warnings if w.object == "materialized view public.film_stock")
    assert (
        "carries film_id (film.film_id)" in warning.message
        and "integer values until finalize" in warning.message
    )

    api.start(dsn, ["film"])
    assert _rows(conn) == before and _shape(conn) == shape
    api.cutover(dsn)
    assert _rows(conn) == before and _shape(conn) == shape  # on film_id_int, kept by the reverse triggers
    conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY film_stock")
    assert _rows(conn) == before
    api.rollback(dsn)
    assert _rows(conn) == before and _shape(conn) == shape
    api.cutover(dsn)
    assert _rows(conn) == before
    uuid_of = dict(conn.execute("SELECT film_id_int, film_id FROM film").fetchall())

    problems: list[str] = []

    def read(c: psycopg.Connection, _rng: random.Random) -> None:
        got = c.execute("SELECT count(*), count(DISTINCT film_id) FROM film_stock").fetchone()
        if got != (len(before), len(before)):
            problems.append(f"read {got}")

    with writing(dsn, read, pause_s=0.001) as reader:
        api.finalize(dsn)
    assert not reader.errors and not problems, (reader.errors[:3], problems[:3])
    assert reader.calls > 10

    assert _rows(conn) == [(uuid_of[f], t, n) for f, t, n in before]  # same rows, the key now uuid
    after = _shape(conn)
    assert after == {
        **shape,
        "type": "uuid",
    }  # indexes (names, definitions), comments, grants, options, owner
    conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY film_stock")
    assert conn.execute("SELECT to_regclass('film_stock_ou_new')").fetchone() == (None,)


def test_a_matview_that_cannot_be_rebuilt_stops_finalize_before_anything_is_dropped(
    dsn: str, conn: psycopg.Connection
) -> None:
    conn.execute("CREATE TABLE t (id serial PRIMARY KEY, v int); INSERT INTO t (v) VALUES (1), (2)")
    conn.execute("CREATE MATERIALIZED VIEW small_ids AS SELECT id FROM t WHERE id < 100")  # integer literal
    api.start(dsn, ["t"])
    api.cutover(dsn)
    try:
        api.finalize(dsn)
    except Exception as exc:
        message = str(exc)
    else:
        raise AssertionError("finalize should have stopped")
    assert "small_ids" in message and "nothing was dropped" in message
    assert conn.execute("SELECT count(*) FROM small_ids").fetchone() == (2,)
    assert conn.execute("SELECT count(*) FROM t WHERE id_int IS NOT NULL").fetchone() == (2,)
    conn.execute("DROP MATERIALIZED VIEW small_ids")
    api.finalize(dsn)
    assert conn.execute("SELECT to_regclass('small_ids_ou_new')").fetchone() == (None,)
