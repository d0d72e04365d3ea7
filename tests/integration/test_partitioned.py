"""Foreign keys on partitioned tables (issue 13 point 1): declared on the partitioned parent or on each
partition, one level or several, a default partition, partitions created, attached and detached
while the migration runs; under a concurrent writer, in both UUID sources.

What a user checks: every payment still points at its customer (the join on uuid after cutover
gives the integer join's rows), the column types, the foreign keys and indexes under their old
names on the parent and on every partition, the integer schema back after a rollback, and no
`_int` column left after finalize.
"""

from __future__ import annotations

import random
from typing import Any

import psycopg
import pytest
from psycopg import sql

from online_uuid import api, db, partitions, state
from online_uuid.errors import PlanError, StateError
from online_uuid.executor import Executor
from online_uuid.model import Phase, TableRef
from online_uuid.phases import cutover as cutover_phase
from online_uuid.settings import BackfillSettings, LockSettings, StartSettings
from online_uuid.statements import derive_fn
from support.snapshots import catalog_snapshot
from support.workload import writing

pytestmark = pytest.mark.pg(14)

SOURCES = ["derived", "random"]
SLOW_BACKFILL = BackfillSettings(initial_batch_size=100, min_batch_size=50, max_batch_size=200)

BASE = """
CREATE SCHEMA "Sales";
CREATE TABLE "Sales".customer (id serial PRIMARY KEY, name text);
CREATE TABLE "Sales".payment (payment_id serial, customer_id int NOT NULL, amount numeric, paid date NOT NULL,
                              PRIMARY KEY (payment_id, paid)) PARTITION BY RANGE (paid);
CREATE TABLE "Sales".payment_2020 PARTITION OF "Sales".payment FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE "Sales"."Payment 2021" PARTITION OF "Sales".payment FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
CREATE TABLE "Sales".payment_rest PARTITION OF "Sales".payment DEFAULT;
"""
ON_PARENT = """
ALTER TABLE "Sales".payment ADD CONSTRAINT "Payment Customer" FOREIGN KEY (customer_id) REFERENCES "Sales".customer;
ALTER TABLE "Sales".payment_2020 RENAME CONSTRAINT "Payment Customer" TO pay2020_customer;
CREATE INDEX payment_customer ON "Sales".payment (customer_id);
ALTER INDEX "Sales".payment_2020_customer_id_idx RENAME TO "pay2020 by customer";
"""
# Each partition declares its own (the DVD sample's payment does): no constraint on the parent, and
# one partition has no index on the column (its heap is walked by ctid ranges), one no foreign key.
PER_PARTITION = """
ALTER TABLE "Sales".payment_2020 ADD CONSTRAINT pay2020_customer FOREIGN KEY (customer_id) REFERENCES "Sales".customer;
ALTER TABLE "Sales"."Payment 2021" ADD FOREIGN KEY (customer_id) REFERENCES "Sales".customer;
CREATE INDEX pay2020_by_customer ON "Sales".payment_2020 (customer_id);
"""
DATA = """
INSERT INTO "Sales".customer (name) SELECT 'customer ' || g FROM generate_series(1, 300) g;
INSERT INTO "Sales".payment (customer_id, amount, paid)
SELECT 1 + g % 300, g, date '2020-01-01' + (g % 1300) FROM generate_series(1, 3000) g;
"""
CUSTOMER = '"Sales".customer'


def _links(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """(payment, its partition, its customer's name): the join on the live key columns."""
    return conn.execute(
        'SELECT p.payment_id, p.tableoid::regclass::text, c.name FROM "Sales".payment p '
        'LEFT JOIN "Sales".customer c ON c.id = p.customer_id ORDER BY 1'
    ).fetchall()


def _types(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, bool]]:
    rows = conn.execute(
        "SELECT a.attrelid::regclass::text || '.' || a.attname, format_type(a.atttypid, a.atttypmod), "
        "a.attnotnull FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relnamespace = '\"Sales\"'::regnamespace AND c.relkind IN ('r', 'p') "
        "AND a.attname IN ('id', 'customer_id', 'id_int', 'customer_id_int', 'id_uuid', 'customer_id_uuid') "
        "AND NOT a.attisdropped"
    ).fetchall()
    return {str(n): (str(t), bool(nn)) for n, t, nn in rows}


def _names(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[str, str]]]:
    """Foreign keys and indexes of the payment tables, by table, as the user named them."""
    fks = conn.execute(
        "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'f' "
        "AND connamespace = '\"Sales\"'::regnamespace ORDER BY 1, 2"
    ).fetchall()
    idx = conn.execute(
        "SELECT i.indrelid::regclass::text, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relnamespace = '\"Sales\"'::regnamespace ORDER BY 1, 2"
    ).fetchall()
    return {"fks": [tuple(r) for r in fks], "indexes": [tuple(r) for r in idx]}


def _wrong_links_after_cutover(conn: psycopg.Connection[Any]) -> int:
    """Payments whose uuid customer is not the customer of their (retired) integer id: every row."""
    row = conn.execute(
        'SELECT count(*) FROM "Sales".payment p LEFT JOIN "Sales".customer c ON c.id_int = p.customer_id_int '
        "WHERE c.id IS DISTINCT FROM p.customer_id"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _application(touched: set[int]) -> Any:
    """Payments come and move: new ones (some with a customer made in the same statement), a payment
    given another customer, a payment moved to another partition. Never names a shadow column.
    The payments it changes go into `touched`."""

    def op(conn: psycopg.Connection[Any], rng: random.Random) -> None:
        _write(conn, rng, touched)

    return op


def _write(conn: psycopg.Connection[Any], rng: random.Random, touched: set[int]) -> None:
    pid = rng.randrange(1, 3000)
    k = rng.randrange(4)
    if k == 0:
        conn.execute(
            'WITH c AS (INSERT INTO "Sales".customer (name) VALUES (%s) RETURNING id) '
            'INSERT INTO "Sales".payment (customer_id, amount, paid) SELECT id, 1, %s FROM c',
            (f"writer {rng.random()}", f"202{rng.randrange(5)}-06-01"),
        )
    elif k == 1:
        touched.add(pid)
        conn.execute(
            'UPDATE "Sales".payment SET customer_id = (SELECT id FROM "Sales".customer ORDER BY random() LIMIT 1) '
            "WHERE payment_id = %s",
            (pid,),
        )
    elif k == 2:
        touched.add(pid)
        conn.execute('UPDATE "Sales".payment SET paid = paid + 400 WHERE payment_id = %s', (pid,))
    else:
        conn.execute(
            'INSERT INTO "Sales".payment (customer_id, amount, paid) '
            'VALUES ((SELECT id FROM "Sales".customer ORDER BY random() LIMIT 1), 2, %s)',
            (f"202{rng.randrange(5)}-03-01",),
        )


@pytest.mark.parametrize("source", SOURCES)
def test_fk_declared_on_the_partitioned_parent_converts_under_load(
    dsn: str, conn: psycopg.Connection[Any], source: str
) -> None:
    conn.execute(BASE + ON_PARENT + DATA)
    before = catalog_snapshot(conn)
    names, types, links = _names(conn), _types(conn), _links(conn)

    plan = api.plan(dsn, [CUSTOMER], uuid_source=source)
    (f,) = plan.foreign_keys
    assert (str(f.table), f.name, f.partitioned) == ('"Sales".payment', "Payment Customer", True)
    assert {str(p.table): p.batch_column for p in f.leaves()} == {
        '"Sales".payment_2020': "customer_id",
        '"Sales"."Payment 2021"': "customer_id",
        '"Sales".payment_rest': "customer_id",
    }

    touched: set[int] = set()
    with writing(dsn, _application(touched)) as w:
        mid = api.start(
            dsn, [CUSTOMER], settings=StartSettings(uuid_source=source), backfill_settings=SLOW_BACKFILL
        )
        after_start = w.calls  # the writer ran through start and its backfill
        report = api.verify(dsn)
        assert report.ok, report.first_problem()
        checked = {c.table: c.enforced_by for c in report.checks if c.column == "customer_id_uuid"}
        if source == "derived":  # the root's validated CHECK holds on every partition: nothing read
            assert checked == {'"Sales".payment': "ou_payment_customer_id_dv"}
        else:  # each leaf partition walked on its own
            assert checked == {
                '"Sales".payment_2020': "",
                '"Sales"."Payment 2021"': "",
                '"Sales".payment_rest': "",
            }
        status = api.status(dsn, mid)
        assert status["progress"]["percent"] == 100.0
        assert {j["job_id"].split("@")[-1] for j in status["jobs"] if j["kind"] == "fk"} == {
            "Sales.payment_2020",
            "Sales.Payment 2021",
            "Sales.payment_rest",
        }
        assert all(j["percent"] <= 100.0 for j in status["jobs"])
        api.cutover(dsn)
        assert w.calls > after_start > 0  # and through verify and cutover
    assert w.errors == [], w.errors[:5]

    assert _wrong_links_after_cutover(conn) == 0  # every row, the writer's included
    now = {pid: (part, name) for pid, part, name in _links(conn)}
    kept = [(pid, part, name) for pid, part, name in links if pid not in touched]
    assert len(kept) > 1000
    assert all(now[pid] == (part, name) for pid, part, name in kept)  # same customer, same partition
    assert _names(conn) == names  # foreign keys and indexes on the parent and each partition, same names
    after = _types(conn)
    assert after['"Sales".payment.customer_id'] == ("uuid", True)
    assert after['"Sales".payment_2020.customer_id'] == ("uuid", True)
    assert after['"Sales"."Payment 2021".customer_id_int'] == ("integer", False)
    assert api.verify(dsn).ok  # the integer side, kept by the reverse triggers

    assert api.rollback(dsn) == Phase.BACKFILLED  # after cutover: integers back, losslessly
    assert {k: v for k, v in _types(conn).items() if not k.endswith("_uuid")} == types
    assert _names(conn) == names
    assert api.verify(dsn).ok
    api.cutover(dsn)
    api.finalize(dsn)
    final = _types(conn)
    assert not any(k.endswith(("_int", "_uuid")) for k in final), final
    assert final['"Sales"."Payment 2021".customer_id'] == ("uuid", True)
    assert _names(conn) == names
    assert (
        conn.execute(
            'SELECT count(*) FROM "Sales".payment p JOIN "Sales".customer c ON c.id = p.customer_id'
        ).fetchone()
        == conn.execute('SELECT count(*) FROM "Sales".payment').fetchone()
    )
    leftovers = conn.execute(
        "SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE c.relnamespace = '\"Sales\"'::regnamespace AND t.tgname LIKE '%%ou\\_%%'"
    ).fetchall()
    assert leftovers == []
    assert catalog_snapshot(conn)["triggers"] == before["triggers"]


@pytest.mark.parametrize("source", SOURCES)
def test_fks_declared_on_each_partition_convert_and_roll_back(
    dsn: str, conn: psycopg.Connection[Any], source: str
) -> None:
    conn.execute(BASE + PER_PARTITION + DATA)
    before = catalog_snapshot(conn)
    names, links = _names(conn), _links(conn)

    plan = api.plan(dsn, [CUSTOMER], uuid_source=source)
    (f,) = plan.foreign_keys
    assert f.name == ""  # the parent has none: each partition its own
    walks = {p.table.name: p.batch_column for p in f.leaves()}
    assert walks == {"payment_2020": "customer_id", "Payment 2021": "ctid", "payment_rest": "ctid"}

    api.start(dsn, [CUSTOMER], settings=StartSettings(uuid_source=source))
    assert api.rollback(dsn) == Phase.ROLLED_BACK  # before cutover: everything start made is gone
    assert catalog_snapshot(conn) == before

    touched: set[int] = set()
    with writing(dsn, _application(touched)) as w:
        api.start(
            dsn, [CUSTOMER], settings=StartSettings(uuid_source=source), backfill_settings=SLOW_BACKFILL
        )
        assert api.verify(dsn).ok
        api.cutover(dsn)
    assert w.errors == [], w.errors[:5]
    assert _wrong_links_after_cutover(conn) == 0
    assert _names(conn) == names
    now = set(_links(conn))
    assert all(r in now for r in links if r[0] not in touched)
    referencing = [t for t, _ in _names(conn)["fks"]]
    assert referencing == ['"Sales"."Payment 2021"', '"Sales".payment_2020']  # payment_rest: none, as before
    assert _types(conn)['"Sales".payment_rest.customer_id'] == ("uuid", True)

    assert api.rollback(dsn) == Phase.BACKFILLED
    assert _types(conn)['"Sales".payment_rest.customer_id'] == ("integer", True)
    assert api.rollback(dsn) == Phase.ROLLED_BACK
    snap = catalog_snapshot(conn)
    assert snap["constraints"] == before["constraints"] and snap["indexes"] == before["indexes"]
    assert snap["columns"] == before["columns"]


MULTI_LEVEL = """
CREATE SCHEMA "Sales";
CREATE TABLE "Sales".customer (id serial PRIMARY KEY, name text);
CREATE TABLE "Sales".payment (payment_id serial, customer_id int, region text NOT NULL, paid date NOT NULL,
                              PRIMARY KEY (payment_id, region, paid)) PARTITION BY LIST (region);
CREATE TABLE "Sales".payment_eu PARTITION OF "Sales".payment FOR VALUES IN ('eu') PARTITION BY RANGE (paid);
CREATE TABLE "Sales".payment_eu_old PARTITION OF "Sales".payment_eu FOR VALUES FROM ('2000-01-01') TO ('2021-01-01');
CREATE TABLE "Sales".payment_eu_new PARTITION OF "Sales".payment_eu DEFAULT;
CREATE TABLE "Sales".payment_other PARTITION OF "Sales".payment DEFAULT;
ALTER TABLE "Sales".payment ADD FOREIGN KEY (customer_id) REFERENCES "Sales".customer ON DELETE SET NULL;
CREATE INDEX ON "Sales".payment (customer_id, paid);
CREATE UNIQUE INDEX payment_one_per_day ON "Sales".payment (customer_id, payment_id, region, paid);
INSERT INTO "Sales".customer (name) SELECT 'customer ' || g FROM generate_series(1, 100) g;
INSERT INTO "Sales".payment (customer_id, region, paid)
SELECT nullif(g % 101, 0), (ARRAY['eu', 'us'])[1 + g % 2], date '2020-01-01' + (g % 700)
  FROM generate_series(1, 2000) g;
"""


def test_multi_level_partitions_with_defaults(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute(MULTI_LEVEL)
    before = catalog_snapshot(conn)
    names = _names(conn)
    plan = api.plan(dsn, [CUSTOMER])
    (f,) = plan.foreign_keys
    assert sorted(p.table.name for p in f.leaves()) == ["payment_eu_new", "payment_eu_old", "payment_other"]
    api.start(dsn, [CUSTOMER])
    assert api.verify(dsn).ok
    api.cutover(dsn)
    assert _wrong_links_after_cutover(conn) == 0
    assert _names(conn) == names
    nulls = 'SELECT count(*) FROM "Sales".payment WHERE customer_id IS NULL'
    had = conn.execute(nulls).fetchone()
    conn.execute("DELETE FROM \"Sales\".customer WHERE name = 'customer 7'")  # ON DELETE SET NULL, kept
    assert had is not None and conn.execute(nulls).fetchone() == (had[0] + 20,)
    assert api.rollback(dsn) == Phase.BACKFILLED
    assert api.rollback(dsn) == Phase.ROLLED_BACK
    snap = catalog_snapshot(conn)
    assert (snap["constraints"], snap["indexes"], snap["columns"]) == (
        before["constraints"],
        before["indexes"],
        before["columns"],
    )


@pytest.mark.parametrize("source", SOURCES)
def test_partitions_created_attached_and_detached_during_the_migration(
    dsn: str, conn: psycopg.Connection[Any], source: str
) -> None:
    conn.execute(BASE + ON_PARENT + DATA)
    mid = api.start(dsn, [CUSTOMER], settings=StartSettings(uuid_source=source))
    # a partition created now gets the shadow column and the triggers from its parent
    conn.execute(
        'CREATE TABLE "Sales".payment_2030 PARTITION OF "Sales".payment '
        "FOR VALUES FROM ('2030-01-01') TO ('2031-01-01');"
        "INSERT INTO \"Sales\".payment (customer_id, amount, paid) SELECT g, 1, '2030-05-05' FROM generate_series(1, 50) g"
    )
    # a table attached now must have the shadow column first: PostgreSQL says so
    conn.execute(
        'CREATE TABLE "Sales".payment_2040 (payment_id int NOT NULL, customer_id int NOT NULL, amount numeric, '
        "paid date NOT NULL);"
        'INSERT INTO "Sales".payment_2040 (payment_id, customer_id, amount, paid) '
        "SELECT 90000 + g, g, 1, '2040-05-05' FROM generate_series(1, 30) g"
    )
    with pytest.raises(psycopg.Error, match='missing column "customer_id_uuid"'):
        conn.execute(
            'ALTER TABLE "Sales".payment ATTACH PARTITION "Sales".payment_2040 '
            "FOR VALUES FROM ('2040-01-01') TO ('2041-01-01')"
        )
    conn.execute('ALTER TABLE "Sales".payment_2040 ADD COLUMN customer_id_uuid uuid')
    attach = (
        'ALTER TABLE "Sales".payment ATTACH PARTITION "Sales".payment_2040 '
        "FOR VALUES FROM ('2040-01-01') TO ('2041-01-01')"
    )
    if source == "derived":
        # after the backfill the parent holds the invariant shadow = derive(column) as a CHECK,
        # which a table must hold to join: give it the column's values, then the constraint
        with pytest.raises(psycopg.Error, match='missing constraint "ou_payment_customer_id_dv"'):
            conn.execute(attach)
        row = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = '\"Sales\".payment'::regclass "
            "AND conname = 'ou_payment_customer_id_dv'"
        ).fetchone()
        assert row is not None
        derive = derive_fn(TableRef("Sales", "customer"), "id")  # the parent key's derive function
        conn.execute(
            sql.SQL('UPDATE "Sales".payment_2040 SET customer_id_uuid = {}(customer_id)').format(derive)
        )
        conn.execute(f'ALTER TABLE "Sales".payment_2040 ADD CONSTRAINT ou_payment_customer_id_dv {row[0]}')
        conn.execute(attach)
        assert api.verify(dsn).ok
    else:
        conn.execute(attach)
        report = api.verify(dsn)  # the attached rows predate their triggers: found, then repaired
        assert {c.table for c in report.checks if not c.ok} == {'"Sales".payment_2040'}
        assert api.verify(dsn, repair=True).ok

    # a partition detached now keeps a shadow column no trigger maintains: refused, named, fixable
    conn.execute('ALTER TABLE "Sales".payment DETACH PARTITION "Sales".payment_2020')
    with pytest.raises(StateError, match=r'partition "Sales"\.payment_2020 was detached .* ATTACH PARTITION'):
        api.verify(dsn)
    with pytest.raises(StateError, match=r"payment_2020 was detached"):
        api.cutover(dsn)
    assert api.status(dsn, mid)["phase"] == Phase.BACKFILLED
    conn.execute(
        'ALTER TABLE "Sales".payment ATTACH PARTITION "Sales".payment_2020 '
        "FOR VALUES FROM ('2020-01-01') TO ('2021-01-01')"
    )
    assert api.verify(dsn).ok
    names = _names(conn)
    api.cutover(dsn)
    assert _wrong_links_after_cutover(conn) == 0
    assert _names(conn) == names
    types = _types(conn)
    assert types['"Sales".payment_2030.customer_id'] == ("uuid", True)
    assert types['"Sales".payment_2040.customer_id'] == ("uuid", True)
    api.finalize(dsn)


def test_a_detached_partition_whose_shadow_is_dropped_is_let_go(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute(BASE + ON_PARENT + DATA)
    api.start(dsn, [CUSTOMER])
    conn.execute('ALTER TABLE "Sales".payment DETACH PARTITION "Sales".payment_rest')
    with pytest.raises(StateError, match=r"keeps its customer_id_uuid column .* and its foreign key"):
        api.verify(dsn)
    conn.execute(
        'ALTER TABLE "Sales".payment_rest DROP COLUMN customer_id_uuid, DROP CONSTRAINT "Payment Customer"'
    )
    assert api.verify(dsn).ok
    api.cutover(dsn)
    assert _wrong_links_after_cutover(conn) == 0
    assert _types(conn)['"Sales".payment_rest.customer_id'] == ("integer", True)  # it left before


def test_what_is_still_refused_says_why(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute(BASE + ON_PARENT)
    with pytest.raises(PlanError, match=r"--cascade-deletes would change foreign key Payment Customer"):
        api.plan(dsn, [CUSTOMER], cascade_deletes=True)
    conn.execute('ALTER TABLE "Sales".payment ADD CONSTRAINT one_a_day UNIQUE (customer_id, paid)')
    with pytest.raises(PlanError, match=r"unique constraint one_a_day of partitioned table"):
        api.plan(dsn, [CUSTOMER])
    conn.execute(
        "CREATE TABLE customer (id serial PRIMARY KEY);"
        "CREATE TABLE visit (customer_id int NOT NULL REFERENCES customer, at date) PARTITION BY HASH (customer_id);"
        "CREATE TABLE visit_0 PARTITION OF visit FOR VALUES WITH (MODULUS 2, REMAINDER 0);"
        "CREATE TABLE visit_1 PARTITION OF visit FOR VALUES WITH (MODULUS 2, REMAINDER 1)"
    )
    with pytest.raises(
        PlanError, match=r"public\.visit is partitioned by HASH \(customer_id\), which uses customer_id"
    ):
        api.plan(dsn, ["customer"])


def test_a_partition_created_between_preparation_and_swap_gets_the_prepared_twin_and_fk(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """PostgreSQL clones the prepared twin index and foreign key to it; the swap names them as the
    partition's own (a cutover that gave up on its lock after preparing, then ran again)."""
    conn.execute(BASE + ON_PARENT + DATA)
    mid = api.start(dsn, [CUSTOMER], settings=StartSettings(uuid_source="random"))
    with db.connect(dsn, "test-prepare") as c:
        state.move(c, mid, Phase.BACKFILLED, Phase.PREPARING)
        prepared = partitions.refresh(c, state.load(c, mid).plan)
        cutover_phase._prepare(c, Executor(c, mid, LockSettings()), mid, prepared)
    conn.execute(
        'CREATE TABLE "Sales".payment_2035 PARTITION OF "Sales".payment '
        "FOR VALUES FROM ('2035-01-01') TO ('2036-01-01');"
        "INSERT INTO \"Sales\".payment (customer_id, amount, paid) SELECT g, 1, '2035-05-05' FROM generate_series(1, 20) g"
    )

    def own(table: str) -> set[tuple[str, str]]:
        """Its foreign keys and indexes, with their definitions."""
        rows = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
            "AND contype = 'f' UNION ALL SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass",
            (table, table),
        ).fetchall()
        return {(str(n), str(d)) for n, d in rows}

    made = own('"Sales".payment_2035')
    assert {n for n, _ in made} >= {"Payment Customer", "Payment Customer_ou"}  # cloned by PostgreSQL
    names = _names(conn)
    api.cutover(dsn)
    after = own('"Sales".payment_2035')
    # the names its integer column's foreign key and index had, now on the uuid column
    assert {n for n, d in after if "customer_id" in d} == {n for n, d in made if "(customer_id)" in d}
    assert all("_ou" not in n and "customer_id_uuid" not in d for n, d in after)
    assert _names(conn)["fks"] == [r for r in names["fks"] if not r[1].endswith("_ou")]
    assert _wrong_links_after_cutover(conn) == 0
    assert _types(conn)['"Sales".payment_2035.customer_id'] == ("uuid", True)
