"""Shared helpers of the benchmarks: a tuned throwaway cluster, test tables, timing, results.

Every bench starts its own `TempCluster`, so results do not depend on whatever server is around.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
sys.path.insert(0, str(ROOT / "src"))

from online_uuid.embedded import DEFAULT_SETTINGS, TempCluster  # noqa: E402

# On top of TempCluster's defaults (fsync, synchronous_commit and full_page_writes are OFF there:
# a throwaway cluster; the results say so). Sized for a 2-core / 24 GiB machine.
BENCH_SETTINGS: dict[str, str] = {
    "shared_buffers": "1GB",
    "max_wal_size": "4GB",
    "min_wal_size": "1GB",
    "checkpoint_timeout": "30min",
    "maintenance_work_mem": "512MB",
    "work_mem": "32MB",
    "effective_cache_size": "16GB",
    "jit": "off",
    "log_min_messages": "warning",
}


def quiet_logs() -> None:
    """online-uuid logs every batch at info; a bench wants warnings only."""
    from online_uuid.log import configure

    configure("console", "warning")


def parse_args(description: str, extra: Sequence[tuple[str, dict[str, Any]]] = ()) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--scale", type=float, default=1.0, help="1 = the sizes of the targets; 0.01 = smoke")
    ap.add_argument("--out", type=Path, default=None, help="JSON results file (default bench/results/)")
    for flag, kw in extra:
        ap.add_argument(flag, **kw)
    return ap.parse_args()


def scaled(n: int, scale: float, minimum: int = 1000) -> int:
    return max(minimum, int(n * scale))


@contextmanager
def bench_cluster(extra: dict[str, str] | None = None) -> Iterator[TempCluster]:
    with TempCluster(settings={**BENCH_SETTINGS, **(extra or {})}) as cluster:
        yield cluster


def connect(dsn: str, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, **kw)


def server_settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    skip = {"listen_addresses", "logging_collector"}
    names = sorted({*DEFAULT_SETTINGS, *BENCH_SETTINGS, "autovacuum"} - skip)
    rows = conn.execute(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name", (names,)
    ).fetchall()
    return {str(n): str(v) for n, v in rows}


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def loadavg() -> list[float]:
    """1/5/15-minute load: other work on this (shared, 2-core) machine skews every number."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def git_state() -> dict[str, Any]:
    """The commit measured, and whether src/ differed from it (others work in this tree too)."""

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "src_dirty": bool(git("status", "--porcelain", "--", "src"))}


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, list[int]] | None:
    """(ppid, [utime, stime, cutime, cstime]) in clock ticks, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), [int(x) for x in fields[11:15]]


def _tree_ticks(roots: Sequence[int]) -> int:
    """CPU ticks of the roots (with their reaped children) and of their live descendants."""
    stats: dict[int, tuple[int, list[int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _proc_stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _t) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [r for r in roots if r in stats]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += sum(stats[pid][1])  # cutime/cstime: children already reaped (backends, pgbench)
        todo += children.get(pid, [])
    return total


def _busy_ticks() -> int:
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return user + nice + system + irq + softirq + steal


def _io_stall_us() -> int | None:
    """Microseconds in which some task waited on I/O (Linux PSI), machine-wide; None without PSI."""
    try:
        some = Path("/proc/pressure/io").read_text().splitlines()[0]
    except OSError:
        return None
    return int(some.rsplit("total=", 1)[1])


class CpuMeter:
    """How many cores *other* work on the machine used during a measurement (it is shared), and the
    share of the time some task waited on I/O (`io_stalled`: ours and others', a shared disk shows
    there and nowhere in the CPU figures)."""

    def __init__(self, cluster: TempCluster) -> None:
        pidfile = cluster.data_dir / "postmaster.pid"
        self.roots = [os.getpid(), int(pidfile.read_text().split()[0])]
        self.t0 = self.busy0 = self.ours0 = 0.0
        self.io0: int | None = None

    def __enter__(self) -> CpuMeter:
        self.t0, self.busy0, self.ours0 = time.monotonic(), _busy_ticks(), _tree_ticks(self.roots)
        self.io0 = _io_stall_us()
        self.result: dict[str, float] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(1e-6, time.monotonic() - self.t0)
        busy = (_busy_ticks() - self.busy0) / _TICK
        ours = (_tree_ticks(self.roots) - self.ours0) / _TICK
        self.result = {
            "bench_cores": round(ours / wall, 2),
            "other_cores": round(max(0.0, busy - ours) / wall, 2),
        }
        io = _io_stall_us()
        if io is not None and self.io0 is not None:
            self.result["io_stalled"] = round((io - self.io0) / 1e6 / wall, 3)


def header(cluster: TempCluster) -> dict[str, Any]:
    with connect(cluster.dsn) as conn:
        row = conn.execute("SELECT version()").fetchone()
        assert row is not None
        return {
            "machine": machine_info(),
            "server": str(row[0]),
            "settings": server_settings(conn),
            "loadavg_at_start": loadavg(),
            "git": git_state(),
        }


def mode_header(bench: str, args: argparse.Namespace, cluster: TempCluster) -> dict[str, Any]:
    """Name and header of a bench run with `--uuid-source` and `--durable`: the results file is named
    after the mode (`<bench>[_derived][_durable]`), so the random-mode, cheap-settings run keeps the
    plain name."""
    name = bench + ("" if args.uuid_source == "random" else f"_{args.uuid_source}")
    name += "_durable" if args.durable else ""
    return {
        "bench": name,
        "scale": args.scale,
        "uuid_source": args.uuid_source,
        "durable": args.durable,
        **header(cluster),
    }


def write_results(name: str, doc: dict[str, Any], out: Path | None = None) -> Path:
    """bench/results/<name>.json at full scale; smaller scales go to results/scale-<s>/ so that a
    smoke run never overwrites the committed numbers."""
    scale = float(doc.get("scale", 1.0))
    path = out or (RESULTS_DIR if scale >= 1 else RESULTS_DIR / f"scale-{scale:g}") / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.setdefault("loadavg_at_end", loadavg())
    worst = max(_find(doc, "other_cores"), default=0.0)
    doc["max_other_cores"] = worst
    doc["noisy"] = worst > NOISY_OTHER_CORES
    if doc["noisy"]:
        print(
            f"WARNING: other processes used up to {worst:.2f} of the {os.cpu_count()} cores during a "
            "measurement of this run: its numbers are unreliable, rerun on a quiet machine",
            flush=True,
        )
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


NOISY_OTHER_CORES = 0.25  # other work on the machine above this during a measurement: unreliable


def _find(doc: Any, key: str) -> Iterator[float]:
    """Every numeric value stored under `key` anywhere in a nested document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == key and isinstance(v, (int, float)):
                yield float(v)
            else:
                yield from _find(v, key)
    elif isinstance(doc, list):
        for v in doc:
            yield from _find(v, key)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- data -------------------------------------------------------------------------------------


def create_pair(conn: psycopg.Connection[Any], schema: str, parents: int, children: int) -> None:
    """parent(id bigint identity PK, name unique) and child(id PK, parent_id FK + index).

    Loaded without indexes, which are built afterwards (much faster); the data are a pure
    function of the sizes, so two schemas created alike are identical copies.
    """
    s = sql.Identifier(schema)
    # Each stage's statements are independent of one another and run in parallel sessions.
    stages: list[list[list[str]]] = [  # stage -> sessions -> statements
        [
            [
                "CREATE SCHEMA {s}",
                "CREATE TABLE {s}.parent (id bigint GENERATED BY DEFAULT AS IDENTITY, name text NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now())",
                "CREATE TABLE {s}.child (id bigint GENERATED BY DEFAULT AS IDENTITY, "
                "parent_id bigint NOT NULL, payload text NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now())",
            ]
        ],
        [
            [
                "INSERT INTO {s}.parent (name, created_at) SELECT 'parent-' || g, "
                "timestamptz '2024-01-01' + make_interval(secs => g) "
                "FROM generate_series(1::bigint, %(np)s) g"
            ],
            [
                "INSERT INTO {s}.child (parent_id, payload, created_at) "
                "SELECT 1 + mod(g * 7919, %(np)s), 'payload of child ' || g, "
                "timestamptz '2024-01-01' + make_interval(secs => g) "
                "FROM generate_series(1::bigint, %(nc)s) g"
            ],
        ],
        [
            [
                "ALTER TABLE {s}.parent ADD CONSTRAINT parent_pkey PRIMARY KEY (id)",
                "ALTER TABLE {s}.parent ADD CONSTRAINT parent_name_key UNIQUE (name)",
            ],
            [
                "ALTER TABLE {s}.child ADD CONSTRAINT child_pkey PRIMARY KEY (id)",
                "CREATE INDEX child_parent_id_idx ON {s}.child (parent_id)",
            ],
        ],
        [
            [
                "ALTER TABLE {s}.child ADD CONSTRAINT child_parent_id_fkey FOREIGN KEY (parent_id) "
                "REFERENCES {s}.parent (id)",
                "SELECT setval(pg_get_serial_sequence('{q}.parent', 'id'), %(np)s)",
                "SELECT setval(pg_get_serial_sequence('{q}.child', 'id'), greatest(%(nc)s, 1))",
            ]
        ],
    ]
    params = {"np": parents, "nc": children}
    dsn = conn.info.dsn

    def session(statements: list[str], c: psycopg.Connection[Any]) -> None:
        for st in statements:
            q = sql.SQL(st.replace("{q}", schema)).format(s=s)  # type: ignore[arg-type]
            c.execute(q, params if "%(" in st else None)

    for stage in stages:
        if len(stage) == 1:
            session(stage[0], conn)
        else:
            parallel(dsn, [lambda c, st=st: session(st, c) for st in stage])


def create_database(cluster: TempCluster, name: str) -> str:
    """A database of its own per migrated pair: its own catalogs and `online_uuid` state schema."""
    with connect(cluster.dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return cluster.dsn_for(name)


def parallel(dsn: str, work: Sequence[Callable[[psycopg.Connection[Any]], Any]]) -> None:
    """Run each function in a session of its own, all at once (2 cores: two at a time is the point)."""
    errors: list[BaseException] = []

    def run(fn: Callable[[psycopg.Connection[Any]], Any]) -> None:
        try:
            with connect(dsn) as conn:
                fn(conn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def run_sql(stmt: sql.Composable, params: Any = None) -> Callable[[psycopg.Connection[Any]], Any]:
    """A unit of work for `parallel`: one statement."""
    return lambda conn: conn.execute(stmt, params)


def vacuum_analyze(conn: psycopg.Connection[Any], schema: str) -> None:
    for t in ("parent", "child"):
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, t)))


def total_size(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    row = conn.execute("SELECT pg_total_relation_size(to_regclass(%s))", (f"{schema}.{table}",)).fetchone()
    assert row is not None
    return int(row[0])


def checkpoint(conn: psycopg.Connection[Any]) -> None:
    """CHECKPOINT, then flush the OS's dirty pages: with fsync off the kernel would otherwise
    write them back during the next measurement window (seen: an idle p99 of 31 ms)."""
    conn.execute("CHECKPOINT")
    os.sync()


def settle(dsn: str) -> None:
    """Before a timed run: autovacuum finished, a checkpoint taken, the OS's dirty pages written."""
    with connect(dsn) as conn:
        wait_vacuum_idle(conn)
        checkpoint(conn)


def warm_up(cluster: TempCluster, rows: int) -> float:
    """Write, rewrite and drop a throwaway table of `rows` rows, then CHECKPOINT; seconds taken.

    A fresh cluster has no WAL segments to recycle and, on a VM, page-cache memory its host has
    not backed yet: the first bulk writer pays for both. A server in service has neither cost, so
    latency benches warm their cluster once first (measured here: the OLTP probe's p99 during the
    first backfill of a fresh cluster was 3.6-4.9 x idle, in a warmed one 2.1-2.6 x).
    """
    t0 = time.monotonic()
    with connect(create_database(cluster, "warm_up")) as conn:
        conn.execute("CREATE TABLE w AS SELECT g, md5(g::text) AS m FROM generate_series(1, %s) g", (rows,))
        conn.execute("UPDATE w SET m = md5(m)")
        conn.execute("UPDATE w SET m = md5(m)")
        conn.execute("DROP TABLE w")
        checkpoint(conn)
    return time.monotonic() - t0


@contextmanager
def busy_backend(dsn: str) -> Iterator[None]:
    """One backend spinning on pure CPU (no I/O, no locks) for the duration of the block.

    The least any single-session backfill costs the machine: it is the physical floor that
    latency ratios are read against.
    """
    conn = connect(dsn, application_name="bench-busy")
    pid = conn.info.backend_pid

    def spin() -> None:
        with suppress(psycopg.Error):  # cancelled at the end of the block
            conn.execute("SELECT count(*) FROM generate_series(1, 1000000000000)")

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    time.sleep(0.3)
    try:
        yield
    finally:
        with connect(dsn) as other:
            other.execute("SELECT pg_cancel_backend(%s)", (pid,))
        thread.join(timeout=30)
        conn.close()


def wait_vacuum_idle(conn: psycopg.Connection[Any], timeout_s: float = 120.0) -> float:
    """Wait until no (auto)vacuum runs, so it does not land inside a timing; seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        row = conn.execute("SELECT count(*) FROM pg_stat_progress_vacuum").fetchone()
        if row is None or row[0] == 0:
            break
        time.sleep(0.5)
    return time.monotonic() - t0


# --- numbers ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def latency_summary(values_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {"count": 0}
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def pg_bin(cluster: TempCluster, name: str) -> str:
    assert cluster.bin_dir is not None
    return str(cluster.bin_dir / name)


def pgbench(
    cluster: TempCluster,
    script: str,
    *,
    clients: int,
    seconds: int,
    defines: dict[str, Any] | None = None,
    prepared: bool = True,
    db: str = "postgres",
) -> dict[str, Any]:
    """Run pgbench with a custom script against the cluster; returns tps and latency."""
    fd, name = tempfile.mkstemp(prefix="ouuid-pgbench-", suffix=".sql")
    script_path = Path(name)
    with os.fdopen(fd, "w") as f:
        f.write(script)
    cmd = [
        pg_bin(cluster, "pgbench"),
        "-n",
        "-c",
        str(clients),
        "-j",
        str(clients),
        "-T",
        str(seconds),
        "-h",
        "127.0.0.1",
        "-p",
        str(cluster.port),
        "-U",
        "postgres",
        "-M",
        "prepared" if prepared else "simple",
        "-f",
        str(script_path),
    ]
    for k, v in (defines or {}).items():
        cmd += ["-D", f"{k}={v}"]
    cmd.append(db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=seconds + 120)
    finally:
        script_path.unlink(missing_ok=True)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = {"clients": clients, "seconds": seconds}
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("tps =") and ("without" in line or "tps" not in result):
            result["tps"] = float(line.split("=")[1].split()[0])
        elif line.startswith("latency average"):
            result["latency_avg_ms"] = float(line.split("=")[1].split()[0])
        elif line.startswith("number of transactions actually processed"):
            result["transactions"] = int(line.split(":")[1].split("/")[0])
        elif line.startswith("number of failed transactions"):
            result["failed"] = int(line.split(":")[1].split()[0])
    if "tps" not in result:
        raise RuntimeError(f"no tps in pgbench output:\n{out.stdout}")
    return result


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
