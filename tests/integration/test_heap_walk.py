"""Children with no integer key to walk: the backfill and verify walk their heap by ctid ranges."""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg
import pytest

from online_uuid import api
from online_uuid.backfill import run_backfill
from online_uuid.backfill.progress import JobProgress
from online_uuid.settings import BackfillSettings, StartSettings
from support.workload import writing

pytestmark = pytest.mark.pg(14)

# A DVD-rental-like corner: film_category's key (film_id, category_id) has no index that starts with
# category_id; category_log has no key at all; tag has a uuid key.
DDL = """
CREATE TABLE category (category_id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE film (film_id serial PRIMARY KEY, title text);
CREATE TABLE film_category (
    film_id int NOT NULL REFERENCES film,
    category_id int NOT NULL REFERENCES category,
    pad text NOT NULL DEFAULT '',
    PRIMARY KEY (film_id, category_id));
CREATE TABLE category_log (category_id int REFERENCES category, note text);
CREATE TABLE tag (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), category_id int REFERENCES category);
"""


def _fill(conn: psycopg.Connection, films: int, categories: int) -> None:
    conn.execute(DDL)
    conn.execute("INSERT INTO category (name) SELECT 'c' || g FROM generate_series(1, %s) g", (categories,))
    conn.execute("INSERT INTO film (title) SELECT 'f' || g FROM generate_series(1, %s) g", (films,))
    conn.execute(
        "INSERT INTO film_category (film_id, category_id) "
        "SELECT f, c FROM generate_series(1, %s) f, generate_series(1, 3) k, "
        "LATERAL (SELECT 1 + (f * 7 + k * 13) %% %s AS c) x ON CONFLICT DO NOTHING",
        (films, categories),
    )
    conn.execute(
        "INSERT INTO category_log SELECT 1 + g %% %s, 'n' FROM generate_series(1, 500) g", (categories,)
    )
    conn.execute("INSERT INTO category_log VALUES (NULL, 'no category')")
    conn.execute(
        "INSERT INTO tag (category_id) SELECT 1 + g %% %s FROM generate_series(1, 300) g", (categories,)
    )
    conn.execute("ANALYZE")


class _Fractions:
    def __init__(self) -> None:
        self.fractions: list[tuple[str, float]] = []

    def job(self, snap: JobProgress) -> None:
        self.fractions.append((snap.job_id, snap.fraction))

    def note(self, message: str, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _wrong_links(conn: psycopg.Connection, table: str) -> int:
    """Child rows whose shadow is not their category's UUID (NULL FK: shadow must be NULL too)."""
    row = conn.execute(
        f"SELECT count(*) FROM {table} x LEFT JOIN category c USING (category_id) "  # noqa: S608 - test names
        "WHERE x.category_id_uuid IS DISTINCT FROM c.category_id_uuid"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_children_without_a_walkable_key_are_planned_filled_verified_and_cut_over(
    dsn: str, conn: psycopg.Connection
) -> None:
    _fill(conn, films=400, categories=16)
    plan = api.plan(dsn, ["category"])
    walks = {f.table.name: f.batch_column for f in plan.foreign_keys}
    assert walks == {"film_category": "ctid", "category_log": "ctid", "tag": "ctid"}

    api.start(dsn, ["category"], backfill_settings=BackfillSettings(vacuum_every_pct=0, max_batch_size=200))
    for table in ("film_category", "category_log", "tag"):
        assert _wrong_links(conn, table) == 0, table
    jobs = conn.execute(
        "SELECT job_id, min_key, max_key, next_key, finished_at IS NOT NULL, batches "
        "FROM online_uuid.backfill WHERE kind = 'fk'"
    ).fetchall()
    for job_id, lo, hi, nxt, finished, _batches in jobs:
        assert finished and lo == 0 and nxt == hi + 1, job_id  # the cursor is a block number, at the end
    assert max(b for *_, b in jobs) > 1  # film_category took several batches of blocks
    assert all(j["percent"] == 100 for j in api.status(dsn)["jobs"])

    # verify walks the heap too: a wrong row in a block is found (without the server-held invariant,
    # which would refuse the write below, verify reads the rows)
    conn.execute('ALTER TABLE film_category DROP CONSTRAINT "ou_film_category_category_id_dv"')
    conn.execute("ALTER TABLE film_category DISABLE TRIGGER USER")
    conn.execute("UPDATE film_category SET category_id_uuid = NULL WHERE film_id = 7")
    conn.execute("ALTER TABLE film_category ENABLE TRIGGER USER")
    report = api.verify(dsn)
    assert not report.ok and "film_category" in report.first_problem()
    bad = next(c for c in report.checks if c.table.endswith("film_category"))
    assert (
        bad.mismatched == 3 and bad.rows == conn.execute("SELECT count(*) FROM film_category").fetchone()[0]
    )
    conn.execute(
        "UPDATE film_category fc SET category_id_uuid = c.category_id_uuid FROM category c "
        "WHERE c.category_id = fc.category_id AND fc.film_id = 7"
    )
    assert api.verify(dsn).ok

    before = conn.execute(
        "SELECT fc.film_id, c.category_id_uuid FROM film_category fc JOIN category c USING (category_id) "
        "ORDER BY 1, 2"
    ).fetchall()
    api.cutover(dsn)
    after = conn.execute(
        "SELECT fc.film_id, c.category_id FROM film_category fc JOIN category c USING (category_id) ORDER BY 1, 2"
    ).fetchall()
    assert after == before  # every link kept, now by uuid
    assert api.verify(dsn).ok  # after cutover: the retired integers, walked by ctid as well
    api.rollback(dsn)
    assert conn.execute("SELECT count(*) FROM film_category").fetchone() == (len(before),)
    for table in ("film_category", "category_log", "tag"):
        assert _wrong_links(conn, table) == 0, table


def test_heap_walk_misses_no_row_under_concurrent_updates_that_move_rows(
    dsn: str, conn: psycopg.Connection
) -> None:
    """A writer grows rows (so they move to other pages, walked ones included) and inserts new ones."""
    films = 3000
    _fill(conn, films=films, categories=40)
    conn.execute("INSERT INTO film (title) SELECT 'new' FROM generate_series(1, 2000)")
    api.start(dsn, ["category"], settings=StartSettings(backfill=False))
    next_film = [films + 1]

    def op(c: psycopg.Connection, rng: random.Random) -> None:
        if rng.random() < 0.15 and next_film[0] <= films + 2000:
            c.execute(
                "INSERT INTO film_category (film_id, category_id) VALUES (%s, %s)",
                (next_film[0], rng.randint(1, 40)),
            )
            next_film[0] += 1
        else:  # a row grows: its new version no longer fits in its page and moves
            c.execute(
                "UPDATE film_category SET pad = repeat('x', %s) WHERE film_id = %s",
                (rng.randint(50, 700), rng.randint(1, films)),
            )

    settings = BackfillSettings(
        vacuum_every_pct=10,  # frees space in walked blocks, which moved rows then land in
        initial_batch_size=300,
        min_batch_size=100,
        max_batch_size=300,
        max_rows_per_second=3000,
    )
    seen = _Fractions()
    with writing(dsn, op, pause_s=0.0005) as w:
        result = api.backfill(dsn, settings=settings, progress=seen)
    fk = [f for job, f in seen.fractions if job == "fk:public.film_category.category_id"]
    assert len(fk) > 10 and all(0 <= f <= 1 for f in fk) and fk == sorted(fk)  # by block, never past 100%
    assert not w.errors, w.errors[:3]
    assert w.calls > 500 and result.total_rows > 0
    moved = conn.execute("SELECT count(*) FROM film_category WHERE pad <> ''").fetchone()
    assert moved is not None and moved[0] > 500
    assert _wrong_links(conn, "film_category") == 0
    assert api.verify(dsn).ok


class _StopAt(_Fractions):
    """Stops the run once film_category's walk passes a share of its blocks."""

    def __init__(self, stop: threading.Event, at: float) -> None:
        super().__init__()
        self.stop, self.at = stop, at

    def job(self, snap: JobProgress) -> None:
        super().job(snap)
        if snap.job_id.endswith("film_category.category_id") and snap.fraction >= self.at:
            self.stop.set()


def test_heap_walk_stops_and_resumes_at_its_saved_block(dsn: str, conn: psycopg.Connection) -> None:
    _fill(conn, films=3000, categories=40)
    mid = api.start(dsn, ["category"], settings=StartSettings(backfill=False))
    stop = threading.Event()
    settings = BackfillSettings(vacuum_every_pct=0, initial_batch_size=200, max_batch_size=200)
    first = run_backfill(dsn, mid, settings, progress=_StopAt(stop, 0.3), stop=stop, take_lock=True)
    assert first.stopped
    row = conn.execute(
        "SELECT next_key, max_key, rows_done FROM online_uuid.backfill WHERE job_id LIKE '%%film_category%%'"
    ).fetchone()
    assert row is not None
    nxt, last, done = row
    assert 0 < nxt <= last and done > 0
    # the saved block is exactly where the filled rows end
    tid = f"({nxt},0)"
    assert conn.execute(
        "SELECT count(*) FROM film_category WHERE category_id_uuid IS NULL AND ctid < %s::tid", (tid,)
    ).fetchone() == (0,)
    left = conn.execute(
        "SELECT count(*) FROM film_category WHERE category_id_uuid IS NULL AND ctid >= %s::tid", (tid,)
    ).fetchone()
    assert left is not None and left[0] > 0

    second = run_backfill(dsn, mid, settings, take_lock=True)
    assert not second.stopped and second.rows["fk:public.film_category.category_id"] == left[0]
    assert _wrong_links(conn, "film_category") == 0 and api.verify(dsn).ok
