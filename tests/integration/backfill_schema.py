"""Shared by the backfill tests: a quoted, mixed-case schema with sparse keys, and a runner."""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg
from psycopg import sql

from online_uuid import state, status
from online_uuid.backfill import BackfillResult, run_backfill
from online_uuid.backfill.progress import JobProgress
from online_uuid.metrics import Metrics
from online_uuid.model import ForeignKeyConversion, KeyConversion, Phase, Plan, TableRef
from online_uuid.naming import retired_column, shadow_column
from online_uuid.settings import BackfillSettings

SCHEMA = "App Data"  # quoted, mixed case, with a space
PARENT = TableRef(SCHEMA, "Parent")
CHILD = TableRef(SCHEMA, "order")  # reserved word
LEAF = TableRef(SCHEMA, "Leaf")
MID = "m1"

FAST = BackfillSettings(vacuum_every_pct=0)


def q(*parts: str) -> sql.Identifier:
    return sql.Identifier(*parts)


def _fk(name: str, table: TableRef, column: str, batch: str) -> ForeignKeyConversion:
    return ForeignKeyConversion(
        name=name,
        table=table,
        column=column,
        shadow=shadow_column(column),
        retired=retired_column(column),
        ref_table=PARENT,
        ref_column="select",
        on_delete="a",
        on_update="a",
        batch_column=batch,
    )


def make_plan() -> Plan:
    key = KeyConversion(
        table=PARENT,
        column="select",
        type="bigint",
        shadow=shadow_column("select"),
        retired=retired_column("select"),
        constraint="Parent_pkey",
    )
    fks = (
        _fk("parent_self", PARENT, "Parent Id", "select"),  # self-reference, walks the key
        _fk("order_parent", CHILD, "Parent", "id"),  # walks the child's own integer key
        _fk("leaf_parent", LEAF, "pid", "pid"),  # walks the (indexed) FK column itself
    )
    return Plan(keys=(key,), foreign_keys=fks)


def sparse_keys(n: int, seed: int = 7) -> list[int]:
    """Clusters separated by huge gaps, up to near the bigint maximum."""
    rnd = random.Random(seed)
    keys: set[int] = set()
    base = 1
    while len(keys) < n:
        keys.update(range(base, base + rnd.randint(1, 300)))
        base += rnd.choice([1, 10, 10**6, 10**12, 10**15])
    return sorted(keys)[:n]


def create_schema(conn: psycopg.Connection, parents: int, children: int, leaves: int) -> list[int]:
    """Tables as `start` leaves them: shadow columns with a default for new keys, NULL elsewhere."""
    keys = sparse_keys(parents)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(q(SCHEMA)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {p} ({k} bigint PRIMARY KEY, {pid} bigint REFERENCES {p}, name text);"
            "CREATE TABLE {c} (id integer PRIMARY KEY, {cp} bigint REFERENCES {p}, note text);"
            "CREATE TABLE {l} (pid bigint REFERENCES {p}, v int); CREATE INDEX ON {l} (pid);"
        ).format(
            p=PARENT.ident, k=q("select"), pid=q("Parent Id"), c=CHILD.ident, cp=q("Parent"), l=LEAF.ident
        )
    )
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT k, CASE WHEN i %% 3 = 0 THEN (%s::bigint[])[1 + i / 2] END, "
                "'p' || i FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(k, i)"
            ).format(PARENT.ident),
            (keys, keys),
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT i * 7919, CASE WHEN i %% 5 <> 0 THEN "
                "(%s::bigint[])[1 + (i * 31) %% %s] END, 'c' FROM generate_series(1, %s) i"
            ).format(CHILD.ident),
            (keys, len(keys), children),
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT (%s::bigint[])[1 + (i * 17) %% %s], i FROM generate_series(1, %s) i"
            ).format(LEAF.ident),
            (keys, len(keys), leaves),
        )
    for t, col in (
        (PARENT, shadow_column("select")),
        (PARENT, shadow_column("Parent Id")),
        (CHILD, shadow_column("Parent")),
        (LEAF, shadow_column("pid")),
    ):
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} uuid").format(t.ident, q(col)))
    conn.execute(
        sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT gen_random_uuid()").format(
            PARENT.ident, q(shadow_column("select"))
        )
    )
    conn.execute("ANALYZE")
    return keys


def add_fk_triggers(conn: psycopg.Connection) -> None:
    """What `start` installs: a new or changed child row gets its parent's UUID."""
    for t, col in ((PARENT, "Parent Id"), (CHILD, "Parent"), (LEAF, "pid")):
        fn = sql.Identifier(SCHEMA, f"sync_{t.name}_{col}")
        shadow = q(shadow_column(col))
        self_ref: sql.Composable = sql.SQL("")
        if t == PARENT:
            self_ref = sql.SQL("ELSIF NEW.{c} = NEW.{k} THEN NEW.{s} := NEW.{ks}; ").format(
                c=q(col), k=q("select"), s=shadow, ks=q(shadow_column("select"))
            )
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
                "IF NEW.{c} IS NULL THEN NEW.{s} := NULL; {self_ref}"
                "ELSE NEW.{s} := (SELECT p.{ks} FROM {p} p WHERE p.{k} = NEW.{c}); END IF; "
                "RETURN NEW; END $f$; "
                "CREATE TRIGGER {tg} BEFORE INSERT OR UPDATE OF {c} ON {t} "
                "FOR EACH ROW EXECUTE FUNCTION {fn}()"
            ).format(
                fn=fn,
                c=q(col),
                s=shadow,
                self_ref=self_ref,
                ks=q(shadow_column("select")),
                p=PARENT.ident,
                k=q("select"),
                tg=q(f"sync_{col}"),
                t=t.ident,
            )
        )


def create_migration(conn: psycopg.Connection, plan: Plan | None = None) -> Plan:
    plan = plan or make_plan()
    state.ensure_schema(conn)
    state.create(conn, MID, plan, {})
    state.move(conn, MID, Phase.EXPANDING, Phase.EXPANDED)
    return plan


def scalar(conn: psycopg.Connection, query: sql.Composable | str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def problems(conn: psycopg.Connection) -> dict[str, int]:
    """Rows whose shadow is wrong; all zero when the backfill is complete and correct."""
    base = {"p": PARENT.ident, "k": q("select"), "ks": q(shadow_column("select"))}
    fk_check = sql.SQL(
        "SELECT count(*) FROM {t} c LEFT JOIN {p} p ON p.{k} = c.{fk} WHERE c.{fs} IS DISTINCT FROM p.{ks}"
    )
    checks = {
        "key_null": sql.SQL("SELECT count(*) FROM {p} WHERE {ks} IS NULL").format(**base),
        "key_dupe": sql.SQL("SELECT count(*) - count(DISTINCT {ks}) FROM {p}").format(**base),
        "self_bad": fk_check.format(
            t=PARENT.ident, fk=q("Parent Id"), fs=q(shadow_column("Parent Id")), **base
        ),
        "order_bad": fk_check.format(t=CHILD.ident, fk=q("Parent"), fs=q(shadow_column("Parent")), **base),
        "leaf_bad": fk_check.format(t=LEAF.ident, fk=q("pid"), fs=q(shadow_column("pid")), **base),
    }
    return {name: int(scalar(conn, query)) for name, query in checks.items()}


def key_uuids(conn: psycopg.Connection) -> dict[int, str]:
    rows = conn.execute(
        sql.SQL("SELECT {}, {}::text FROM {} WHERE {} IS NOT NULL").format(
            q("select"), q(shadow_column("select")), PARENT.ident, q(shadow_column("select"))
        )
    ).fetchall()
    return dict(rows)


def jobs(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    return {j["job_id"]: j for j in status.status(conn, MID)["jobs"]}


class Recorder:
    """A Progress that keeps every snapshot."""

    def __init__(self) -> None:
        self.snaps: list[JobProgress] = []
        self.notes: list[str] = []
        self.lock = threading.Lock()

    def job(self, snap: JobProgress) -> None:
        with self.lock:
            self.snaps.append(snap)

    def note(self, message: str, **fields: Any) -> None:
        with self.lock:
            self.notes.append(message)

    def close(self) -> None:
        pass


ALL_ZERO = {"key_null": 0, "key_dupe": 0, "self_bad": 0, "order_bad": 0, "leaf_bad": 0}


class Running:
    """A backfill in a thread, with its metrics, so a test can steer it from another session."""

    def __init__(self, dsn: str, settings: BackfillSettings, take_lock: bool = False) -> None:
        self.take_lock = take_lock
        self.metrics = Metrics(MID)
        self.stop = threading.Event()
        self.result: BackfillResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(dsn, settings), daemon=True)

    def _run(self, dsn: str, settings: BackfillSettings) -> None:
        try:
            self.result = run_backfill(
                dsn, MID, settings, metrics=self.metrics, stop=self.stop, take_lock=self.take_lock
            )
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)

    def join(self, timeout: float = 120) -> BackfillResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "backfill did not finish"
        if self.error:
            raise self.error
        assert self.result is not None
        return self.result

    def gauge(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def rows_done(conn: psycopg.Connection) -> int:
    return int(scalar(conn, "SELECT coalesce(sum(rows_done), 0) FROM online_uuid.backfill"))


SLOW = BackfillSettings(
    initial_batch_size=100,
    min_batch_size=100,
    max_batch_size=100,
    vacuum_every_pct=0,
    max_rows_per_second=2000,
)


def setup_big(conn: psycopg.Connection) -> None:
    """A parent big enough that a paced backfill runs for several seconds."""
    create_schema(conn, parents=40_000, children=500, leaves=500)
    create_migration(conn)
