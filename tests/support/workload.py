"""A concurrent application workload: a writer thread and what it touched."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from support.schema import ROLES, Names, Table, insert


@dataclass
class Writer:
    """A thread running `op(conn, rng)` in a loop on its own connection, timing every call.

    Errors are collected (the test asserts there are none); latencies are kept with the monotonic
    time each call started, so a test can look at a window (e.g. while `start` was blocked).
    """

    dsn: str
    op: Callable[[psycopg.Connection, random.Random], None]
    name: str = "test-writer"
    pause_s: float = 0.002
    autocommit: bool = True
    seed: int = 7
    calls: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (started monotonic, seconds)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError(f"writer {self.name} did not connect")
        return self

    def _run(self) -> None:
        rng = random.Random(self.seed)
        try:
            conn = psycopg.connect(self.dsn, autocommit=self.autocommit, application_name=self.name)
        except Exception as exc:
            self.errors.append(f"connect: {exc}")
            self._ready.set()
            return
        self._ready.set()
        with conn:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    self.op(conn, rng)
                    if not self.autocommit:
                        conn.commit()
                except Exception as exc:
                    self.errors.append(
                        f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
                    )
                    with suppress(Exception):
                        conn.rollback()
                self.latencies.append((t0, time.monotonic() - t0))
                self.calls += 1
                if self.pause_s:
                    time.sleep(self.pause_s)

    def stop(self) -> Writer:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        return self

    def calls_since(self, t: float) -> int:
        return sum(1 for started, _ in self.latencies if started >= t)

    def max_latency(self, since: float = 0.0, until: float = float("inf")) -> float:
        window = [s for started, s in self.latencies if since <= started <= until]
        return max(window, default=0.0)


@contextmanager
def writing(dsn: str, op: Callable[[psycopg.Connection, random.Random], None], **kw: Any) -> Iterator[Writer]:
    """Run a Writer for the duration of the block."""
    w = Writer(dsn, op, **kw).start()
    try:
        yield w
    finally:
        w.stop()


Touched = list[tuple[float, str, int, bool]]  # (monotonic time the write started, role, key, inserted)


def app_workload(
    n: Names, touched: Touched | None = None
) -> Callable[[psycopg.Connection, random.Random], None]:
    """What an application does to the four tables: inserts, FK moves, NULL FKs, deletes of leaves.

    It never mentions a shadow column (an application knows nothing about the migration). Each row
    it inserts or whose FK it sets is appended to `touched`, so a test can check exactly those.
    It changes and deletes only its own and seeded rows: a test's rows stay as the test left them.
    """
    p, c, nd, d = n.parent, n.child, n.node, n.dchild
    assert c.fk and nd.fk and d.fk
    log: Touched = touched if touched is not None else []

    def pick(conn: psycopg.Connection, t: Table, movable: bool = False) -> int | None:
        """A random row to reference (any but the reserved ones) or to change (its own or seeded)."""
        where = "note LIKE 'writer%' OR note LIKE 'seed%'" if movable else "note IS DISTINCT FROM 'reserved'"
        row = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY random() LIMIT 1").format(
                t.i(t.pk),
                t.ident,
                sql.SQL(where),
            )
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def op(conn: psycopg.Connection, rng: random.Random) -> None:
        t0 = time.monotonic()
        k = rng.randrange(10)
        if k <= 1:
            log.append((t0, "parent", insert(conn, p, note="writer"), True))
        elif k == 2:
            log.append((t0, "child", insert(conn, c, fk=pick(conn, p), note="writer"), True))
        elif k == 3:
            log.append((t0, "child", insert(conn, c, fk=None, note="writer"), True))
        elif k == 4:
            log.append((t0, "node", insert(conn, nd, fk=pick(conn, nd), note="writer"), True))
        elif k == 5:
            log.append((t0, "dchild", insert(conn, d, fk=pick(conn, p), note="writer"), True))
        elif k == 6:
            row = conn.execute(
                sql.SQL("UPDATE {} SET {} = %s WHERE {} = %s RETURNING {}").format(
                    c.ident, c.i(c.fk or ""), c.i(c.pk), c.i(c.pk)
                ),
                (pick(conn, p) if rng.random() < 0.8 else None, pick(conn, c, movable=True)),
            ).fetchone()
            if row:
                log.append((t0, "child", int(row[0]), False))
        elif k == 7:
            with conn.transaction():
                pid = insert(conn, p, note="writer tx")
                cid = insert(conn, c, fk=pid, note="writer tx")
            log.extend([(t0, "parent", pid, True), (t0, "child", cid, True)])
        elif k == 8:
            conn.execute(
                sql.SQL("UPDATE {} SET note = 'touched' WHERE {} = %s").format(p.ident, p.i(p.pk)),
                (pick(conn, p),),
            )
        else:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE {} = (SELECT max({}) FROM {} WHERE note = 'writer')").format(
                    d.ident, d.i(d.pk), d.i(d.pk), d.ident
                )
            )

    return op


def touched_since(touched: Touched, since: float) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """(written, inserted): keys per role of the rows the workload wrote / inserted after `since`."""
    written: dict[str, set[int]] = {r: set() for r in ROLES}
    inserted: dict[str, set[int]] = {r: set() for r in ROLES}
    for t0, role, key, new in list(touched):
        if t0 >= since:
            written[role].add(key)
            if new:
                inserted[role].add(key)
    return written, inserted
