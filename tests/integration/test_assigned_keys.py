"""Keys the application assigns itself (no default, no identity: snowflake ids, Hibernate sequences).

After cutover the application inserts rows naming only the new columns; the retired integer column
must still get a value (it is NOT NULL, and a rollback needs it), from a sequence the tool owns.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from online_uuid import api, naming
from online_uuid.model import TableRef
from online_uuid.settings import StartSettings

P = TableRef("public", "p")
SEQ = f"online_uuid.{naming.retired_sequence(P, 'id')}"


def _schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        """CREATE TABLE p (id bigint PRIMARY KEY, v text);
           CREATE TABLE ch (id bigint PRIMARY KEY, pid bigint NOT NULL REFERENCES p);
           INSERT INTO p VALUES (10, 'a'), (20, 'b'), (30, 'c');
           INSERT INTO ch VALUES (1, 10), (2, 30)"""
    )


def _default_of(conn: psycopg.Connection[Any], column: str) -> Any:
    row = conn.execute(
        "SELECT column_default FROM information_schema.columns WHERE table_name = 'p' AND column_name = %s",
        (column,),
    ).fetchone()
    assert row is not None
    return row[0]


def _sequence_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (SEQ,)).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("source", ["derived", "random"])
def test_inserts_naming_only_the_new_columns_work_after_cutover_and_rollback_keeps_them(
    dsn: str, conn: psycopg.Connection[Any], source: str
) -> None:
    _schema(conn)
    warnings = [w.message for w in api.plan(dsn, ["p"]).warnings if w.object == "public.p.id"]
    assert any("has no default" in m and SEQ.split(".")[1] in m for m in warnings), warnings

    api.start(dsn, ["p"], settings=StartSettings(uuid_source=source))
    api.cutover(dsn)
    # The application, cut over: it never names the retired column.
    new = conn.execute("INSERT INTO p (v) VALUES ('x') RETURNING id, id_int").fetchone()
    assert new is not None and new[1] == 31  # above the highest id the application had assigned
    conn.execute("INSERT INTO ch (id, pid) VALUES (3, %s)", (new[0],))
    assert _default_of(conn, "id") is not None and "gen_random_uuid" in _default_of(conn, "id")

    api.rollback(dsn)  # back to integer keys, losslessly
    assert conn.execute("SELECT id FROM p WHERE v = 'x'").fetchone() == (31,)
    assert conn.execute("SELECT pid FROM ch WHERE id = 3").fetchone() == (31,)
    assert _default_of(conn, "id") is None  # exactly as before: the application assigns ids again
    conn.execute("INSERT INTO p (id, v) VALUES (40, 'app again')")

    api.cutover(dsn)
    again = conn.execute("INSERT INTO p (v) VALUES ('y') RETURNING id_int").fetchone()
    assert again == (41,)
    api.finalize(dsn)
    assert not _sequence_exists(conn)  # no helper of the tool is left
    assert conn.execute("SELECT count(*) FROM p").fetchone() == (6,)


def test_a_full_rollback_drops_the_tools_sequence(dsn: str, conn: psycopg.Connection[Any]) -> None:
    _schema(conn)
    api.start(dsn, ["p"])
    api.cutover(dsn)
    assert _sequence_exists(conn)
    api.rollback(dsn)  # after cutover: back to backfilled
    api.rollback(dsn)  # before cutover: everything start and cutover made goes
    assert not _sequence_exists(conn)
    assert _default_of(conn, "id") is None
    assert conn.execute("SELECT array_agg(id ORDER BY id) FROM p").fetchone() == ([10, 20, 30],)
