"""A live application workload on the demo tables that addresses rows by natural keys only."""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from types import TracebackType
from typing import Any, LiteralString, Self

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.types.json import Jsonb

APPLICATION_NAME = "demo-workload"
MAX_MESSAGES = 20

# Every statement names rows by natural keys (connector/server name, token hash, tool name) and
# never reads or returns an `id`, so it means the same before and after the keys turn into UUIDs.
# No `SELECT *`, no RETURNING, no prepared statements: nothing whose result type a key swap changes.
# Joins list the child table first, the order in which the statement and its FK checks lock.
_SQL: dict[str, LiteralString] = {
    "read_server": """
        SELECT s.name, s.url, s.transport, s.config, s.status, c.name, c.kind
        FROM {s}.mcp_servers AS s JOIN {s}.mcp_connectors AS c ON c.id = s.connector_id
        WHERE s.name = %s""",
    "list_tools": """
        SELECT t.tool_name, t.enabled
        FROM {s}.mcp_server_tools AS t JOIN {s}.mcp_servers AS s ON s.id = t.mcp_server_id
        WHERE s.name = %s ORDER BY t.tool_name""",
    "check_access": """
        SELECT a.role
        FROM {s}.connector_access AS a JOIN {s}.mcp_connectors AS c ON c.id = a.connector_id
        WHERE c.name = %s AND a.user_id = %s""",
    "auth_token": """
        SELECT s.name, t.scopes
        FROM {s}.mcp_server_tokens AS t JOIN {s}.mcp_servers AS s ON s.id = t.mcp_server_id
        WHERE t.token_hash = %s AND (t.expires_at IS NULL OR t.expires_at > now())""",
    "connector_servers": """
        SELECT s.name, s.status
        FROM {s}.mcp_servers AS s JOIN {s}.mcp_connectors AS c ON c.id = s.connector_id
        WHERE c.name = %s ORDER BY s.name LIMIT 50""",
    "update_server": """
        UPDATE {s}.mcp_servers SET config = config || %s, updated_at = now() WHERE name = %s""",
    "touch_token": """
        UPDATE {s}.mcp_server_tokens SET last_used_at = now() WHERE token_hash = %s""",
    "insert_token": """
        INSERT INTO {s}.mcp_server_tokens (mcp_server_id, token_hash, label, scopes)
        SELECT s.id, %s, %s, %s FROM {s}.mcp_servers AS s WHERE s.name = %s""",
    "insert_tool": """
        INSERT INTO {s}.mcp_server_tools (mcp_server_id, tool_name, description, input_schema)
        SELECT s.id, %s, %s, %s FROM {s}.mcp_servers AS s WHERE s.name = %s""",
    "insert_server": """
        INSERT INTO {s}.mcp_servers (connector_id, name, url, transport, config)
        SELECT c.id, %s, %s, %s, %s FROM {s}.mcp_connectors AS c WHERE c.name = %s""",
    "insert_connector": """
        INSERT INTO {s}.mcp_connectors (name, kind, config, user_id) VALUES (%s, %s, %s, %s)""",
    "grant_access": """
        INSERT INTO {s}.connector_access (connector_id, user_id, role)
        SELECT c.id, %s, %s FROM {s}.mcp_connectors AS c WHERE c.name = %s""",
    "delete_token": """
        DELETE FROM {s}.mcp_server_tokens WHERE token_hash = %s""",
    "delete_tool": """
        DELETE FROM {s}.mcp_server_tools AS t USING {s}.mcp_servers AS s
        WHERE s.id = t.mcp_server_id AND s.name = %s AND t.tool_name = %s""",
}

# 60% reads, 40% writes.
WEIGHTS: dict[str, int] = {
    "read_server": 22,
    "list_tools": 12,
    "check_access": 10,
    "auth_token": 10,
    "connector_servers": 6,
    "update_server": 9,
    "touch_token": 6,
    "insert_token": 7,
    "insert_tool": 5,
    "insert_server": 4,
    "insert_connector": 2,
    "grant_access": 3,
    "delete_token": 3,
    "delete_tool": 1,
}
KINDS: tuple[str, ...] = tuple(WEIGHTS)

_SAMPLES: dict[str, LiteralString] = {
    "connectors": "SELECT name FROM {s}.mcp_connectors ORDER BY random() LIMIT 500",
    "servers": "SELECT name FROM {s}.mcp_servers ORDER BY random() LIMIT 2000",
    "tokens": "SELECT token_hash FROM {s}.mcp_server_tokens ORDER BY random() LIMIT 2000",
    "access": """
        SELECT c.name, a.user_id
        FROM {s}.connector_access AS a JOIN {s}.mcp_connectors AS c ON c.id = a.connector_id
        ORDER BY random() LIMIT 1000""",
}


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list; 0.0 when empty."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _worst(
    starts: array[float], latencies: array[float], t0: float, t1: float, in_flight: list[float], now: float
) -> float:
    worst = 0.0
    for start, latency in zip(starts, latencies, strict=True):
        if start <= t1 and start + latency >= t0 and latency > worst:
            worst = latency
    for start in in_flight:
        if start <= t1:
            worst = max(worst, now - start)
    return worst * 1000.0


@dataclass(frozen=True)
class WorkloadReport:
    """What the workload saw: operations, errors, latencies (ms) and the marks set during the run."""

    operations: int
    errors: int
    error_messages: tuple[str, ...]
    duration_s: float
    latencies_ms: list[float] = field(repr=False)
    start_times: array[float] = field(repr=False)  # time.monotonic() of each operation's start
    error_times: array[float] = field(repr=False)
    ops_by_kind: dict[str, int] = field(default_factory=dict)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    marks: tuple[tuple[str, float], ...] = ()

    @cached_property
    def _sorted(self) -> list[float]:
        return sorted(self.latencies_ms)

    @property
    def p50_ms(self) -> float:
        return _percentile(self._sorted, 0.50)

    @property
    def p99_ms(self) -> float:
        return _percentile(self._sorted, 0.99)

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ms, default=0.0)

    @property
    def worst_stall_ms(self) -> float:
        """The longest any single operation waited (same as max_ms)."""
        return self.max_ms

    @property
    def ops_per_s(self) -> float:
        return self.operations / self.duration_s if self.duration_s > 0 else 0.0

    def stall_between(self, t0: float, t1: float) -> float:
        """Longest latency (ms) of an operation that overlapped the monotonic window [t0, t1]."""
        latencies = array("d", (ms / 1000.0 for ms in self.latencies_ms))
        return _worst(self.start_times, latencies, t0, t1, [], t1)

    def errors_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in self.error_times if t0 <= t <= t1)

    def mark(self, label: str) -> float:
        """Time of the first mark called `label`."""
        for name, t in self.marks:
            if name == label:
                return t
        raise KeyError(label)

    def summary(self) -> str:
        return (
            f"{self.operations} ops in {self.duration_s:.1f}s ({self.ops_per_s:.0f}/s), "
            f"{self.errors} errors, p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, "
            f"worst stall {self.max_ms:.0f} ms"
        )


class _Stats:
    """Thread-safe samples: compact arrays, so hours of load stay a few tens of MB."""

    def __init__(self, writers: int) -> None:
        self.lock = threading.Lock()
        self.starts: array[float] = array("d")
        self.latencies: array[float] = array("d")
        self.by_kind: Counter[str] = Counter()
        self.errors_by_kind: Counter[str] = Counter()
        self.errors = 0
        self.error_times: array[float] = array("d")
        self.messages: list[str] = []
        self.in_flight: list[float | None] = [None] * writers
        self.marks: list[tuple[str, float]] = []

    def begin(self, writer: int, start: float) -> None:
        self.in_flight[writer] = start

    def end(self, writer: int, kind: str, start: float, latency: float, error: str | None) -> None:
        with self.lock:
            self.in_flight[writer] = None
            self.starts.append(start)
            self.latencies.append(latency)
            self.by_kind[kind] += 1
            if error is not None:
                self._error(kind, error)

    def error(self, kind: str, message: str) -> None:
        with self.lock:
            self._error(kind, message)

    def _error(self, kind: str, message: str) -> None:
        self.errors += 1
        self.error_times.append(time.monotonic())
        self.errors_by_kind[kind] += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(f"{kind}: {message}")


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class _Writer:
    """One application session: its own connection, random stream and names it created."""

    def __init__(self, wl: Workload, index: int, pools: dict[str, list[Any]]) -> None:
        self.wl = wl
        self.index = index
        self.rng = random.Random(wl.seed * 1000 + index)
        self.conn: psycopg.Connection[Any] | None = None
        self.connectors: list[str] = list(pools["connectors"])
        self.servers: list[str] = list(pools["servers"])
        self.tokens: list[str] = list(pools["tokens"])
        self.access: list[tuple[str, int]] = list(pools["access"])
        self.my_tokens: list[str] = []
        self.my_tools: list[tuple[str, str]] = []
        self.counter = 0
        self.queries: dict[str, bytes] = {}

    def _unique(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.wl.run_id}-{self.index}-{self.counter}"

    def connect(self) -> psycopg.Connection[Any]:
        conn = self.wl.connect()
        self.queries = {kind: self.wl.statements[kind].as_bytes(conn) for kind in KINDS}
        self.conn = conn
        return conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def params(self, kind: str) -> tuple[Any, ...]:
        """Arguments for one operation; falls back to creating rows when the tables are empty."""
        rng = self.rng
        if kind == "read_server" or kind == "list_tools":
            return (rng.choice(self.servers),)
        if kind == "check_access":
            name, user = rng.choice(self.access)
            return (name, user)
        if kind == "auth_token" or kind == "touch_token":
            return (rng.choice(self.tokens),)
        if kind == "connector_servers":
            return (rng.choice(self.connectors),)
        if kind == "update_server":
            patch = {"last_seen_writer": self.index, "health": rng.choice(["ok", "degraded", "ok"])}
            return (Jsonb(patch), rng.choice(self.servers))
        if kind == "insert_token":
            token = hashlib.sha256(self._unique("token").encode()).hexdigest()
            self.my_tokens.append(token)
            self.tokens.append(token)
            return (token, f"wl-{self.index}", ["tools:read"], rng.choice(self.servers))
        if kind == "insert_tool":
            server, tool = rng.choice(self.servers), self._unique("wl_tool")
            self.my_tools.append((server, tool))
            schema = {"type": "object", "properties": {"q": {"type": "string"}}}
            return (tool, "added by the demo workload", Jsonb(schema), server)
        if kind == "insert_server":
            name = self._unique("wl-server")
            self.servers.append(name)
            url = f"https://{name}.example.internal/mcp"
            return (
                name,
                url,
                rng.choice(["http", "sse"]),
                Jsonb({"max_concurrency": 4}),
                rng.choice(self.connectors),
            )
        if kind == "insert_connector":
            name = self._unique("wl-connector")
            self.connectors.append(name)
            return (
                name,
                rng.choice(["github", "slack", "s3"]),
                Jsonb({"retries": 3}),
                rng.randrange(1, 100000),
            )
        if kind == "grant_access":
            name, user = rng.choice(self.connectors), rng.randrange(10**12, 10**15)
            self.access.append((name, user))
            return (user, rng.choice(["viewer", "editor"]), name)
        if kind == "delete_token":
            token = self.my_tokens.pop() if self.my_tokens else rng.choice(self.tokens)
            return (token,)
        if kind == "delete_tool":
            return self.my_tools.pop(rng.randrange(len(self.my_tools)))
        raise ValueError(kind)

    def choose(self) -> str:
        kind = self.rng.choices(KINDS, weights=self.wl.weights)[0]
        # Ops that need an existing row fall back to creating its parent first.
        if not self.connectors:
            return "insert_connector"
        if kind == "check_access" and not self.access:
            return "grant_access"
        if kind in ("read_server", "list_tools", "update_server", "insert_token", "insert_tool") and not (
            self.servers
        ):
            return "insert_server"
        if kind in ("auth_token", "touch_token", "delete_token") and not self.tokens:
            return "insert_token" if self.servers else "insert_server"
        if kind == "delete_tool" and not self.my_tools:
            return "insert_tool" if self.servers else "insert_server"
        return kind

    def run(self) -> None:
        wl, stats = self.wl, self.wl.stats
        interval = 1.0 / wl.rate_per_writer if wl.rate_per_writer else 0.0
        next_at = time.monotonic()
        while not wl.stopping.is_set():
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0 and wl.stopping.wait(delay):
                    break
                if delay < -1.0:  # far behind (a long stall): do not burst to catch up
                    next_at = time.monotonic()
            conn = self.conn
            if conn is None or conn.closed:
                try:
                    conn = self.connect()
                except psycopg.Error as exc:
                    stats.error("connect", _message(exc))
                    wl.stopping.wait(0.2)
                    continue
            kind = self.choose()
            args = self.params(kind)
            start = time.monotonic()
            stats.begin(self.index, start)
            error: str | None = None
            try:
                conn.execute(self.queries[kind], args)
            except psycopg.Error as exc:
                if wl.stopping.is_set() and isinstance(exc, pgerrors.QueryCanceled):
                    # Cancelled by stop(): keep the wait it had, but it is no application error.
                    stats.end(self.index, kind, start, time.monotonic() - start, None)
                    break
                error = _message(exc)
                if conn.closed or conn.broken:
                    self.close()
            stats.end(self.index, kind, start, time.monotonic() - start, error)
        self.close()


class Workload:
    """Application sessions hitting the demo tables in background threads until `stop()`."""

    def __init__(
        self,
        dsn: str,
        schema: str = "public",
        writers: int = 3,
        rate_per_writer: float | None = None,
        *,
        seed: int = 0,
        statement_timeout_ms: int | None = 30_000,
        weights: dict[str, int] | None = None,
    ) -> None:
        if writers < 1:
            raise ValueError("writers must be >= 1")
        self.dsn = dsn
        self.schema = schema
        self.writers = writers
        self.rate_per_writer = rate_per_writer
        self.seed = seed
        self.statement_timeout_ms = statement_timeout_ms
        self.weights = [(weights or WEIGHTS).get(kind, 0) for kind in KINDS]
        self.run_id = secrets.token_hex(3)
        s = sql.Identifier(schema)
        self.statements = {kind: sql.SQL(_SQL[kind]).format(s=s) for kind in KINDS}
        self.stats = _Stats(writers)
        self.stopping = threading.Event()
        self._writers: list[_Writer] = []
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self.report: WorkloadReport | None = None

    def connect(self) -> psycopg.Connection[Any]:
        """An application session: autocommit, no server-side prepared statements."""
        conn = psycopg.connect(
            self.dsn,
            autocommit=True,
            application_name=APPLICATION_NAME,
            prepare_threshold=None,
            connect_timeout=10,
        )
        if self.statement_timeout_ms is not None:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", (str(self.statement_timeout_ms),)
            )
        return conn

    def _sample(self) -> dict[str, list[Any]]:
        s = sql.Identifier(self.schema)
        with self.connect() as conn:
            pools: dict[str, list[Any]] = {}
            for pool, query in _SAMPLES.items():
                rows = conn.execute(sql.SQL(query).format(s=s)).fetchall()
                pools[pool] = [row[0] if len(row) == 1 else tuple(row) for row in rows]
            return pools

    def start(self) -> Self:
        """Sample existing natural keys, then start the writer threads."""
        if self._threads:
            raise RuntimeError("workload already started")
        pools = self._sample()
        self._started = time.monotonic()
        self.mark("start")
        for index in range(self.writers):
            writer = _Writer(self, index, pools)
            thread = threading.Thread(target=writer.run, name=f"demo-workload-{index}", daemon=True)
            self._writers.append(writer)
            self._threads.append(thread)
            thread.start()
        return self

    def mark(self, label: str) -> float:
        """Record an event (e.g. "cutover") at time.monotonic(); returns that time."""
        now = time.monotonic()
        with self.stats.lock:
            self.stats.marks.append((label, now))
        return now

    def stall_between(self, t0: float, t1: float) -> float:
        """Longest latency (ms) of any operation overlapping [t0, t1], counting ones still running."""
        with self.stats.lock:
            starts, latencies = array("d", self.stats.starts), array("d", self.stats.latencies)
            in_flight = [t for t in self.stats.in_flight if t is not None]
        return _worst(starts, latencies, t0, t1, in_flight, time.monotonic())

    def errors_between(self, t0: float, t1: float) -> int:
        """How many errors happened in the monotonic window [t0, t1]."""
        with self.stats.lock:
            return sum(1 for t in self.stats.error_times if t0 <= t <= t1)

    @property
    def operations(self) -> int:
        return len(self.stats.latencies)

    @property
    def errors(self) -> int:
        return self.stats.errors

    def stop(self, grace_s: float = 5.0) -> WorkloadReport:
        """Stop the writers (cancelling a statement still blocked after `grace_s`) and report."""
        if self.report is not None:
            return self.report
        self.stopping.set()
        self.mark("stop")
        deadline = time.monotonic() + grace_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for writer, thread in zip(self._writers, self._threads, strict=True):
            if thread.is_alive() and writer.conn is not None:
                writer.conn.cancel_safe()
            thread.join(grace_s)
        stats = self.stats
        with stats.lock:
            self.report = WorkloadReport(
                operations=len(stats.latencies),
                errors=stats.errors,
                error_messages=tuple(stats.messages),
                duration_s=time.monotonic() - self._started if self._started else 0.0,
                latencies_ms=[latency * 1000.0 for latency in stats.latencies],
                start_times=array("d", stats.starts),
                error_times=array("d", stats.error_times),
                ops_by_kind=dict(stats.by_kind),
                errors_by_kind=dict(stats.errors_by_kind),
                marks=tuple(stats.marks),
            )
        return self.report

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
