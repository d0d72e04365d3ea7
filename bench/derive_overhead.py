"""Child INSERT cost of the dual-write triggers, derived vs lookup, on durable settings.

Targets (issue 12): a child INSERT through the triggers, as a ratio of the same INSERT into the
same table without them,
- bulk (`INSERT ... SELECT` of 200k rows, one statement): derived >= 0.75 x;
- single-row statements (pgbench, prepared, 2 clients, one row per transaction, 6 s rounds): derived >= 0.78 x.
The lookup trigger (`--uuid-source random`) is measured alongside, in the same rounds.
On a shared machine wall time is at the mercy of other load, so the bulk INSERT is also measured
in CPU seconds of its backend (`bulk_cpu`: /proc utime + stime), which other load can't inflate.

In derived mode the finished backfill adds the invariant's CHECK constraints, so each INSERT
computes derive() twice (trigger and CHECK) until the swap; `--without-invariant` drops them to
measure the triggers alone, as while the backfill runs (`derive_overhead_without_invariant.json`).

Durable settings: fsync, synchronous_commit and full_page_writes ON (the bench cluster turns them
off for the other benches). Three databases hold identical copies of parent (1M rows) and child:
`none` (no migration), `derived` and `lookup` (each started and backfilled in its mode). Rounds
alternate between the three, so each ratio compares rounds that saw the same background load; the
verdict is the median of the per-round ratios. A bulk round's rows are deleted and vacuumed
afterwards so every round starts from the same table.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import common
from psycopg import sql

from online_uuid import api
from online_uuid.settings import BackfillSettings, StartSettings

PARENTS = 1_000_000
BULK = 200_000
CLIENTS = 2
ROUNDS = 6
TARGETS = {"bulk": 0.75, "bulk_cpu": 0.75, "single": 0.78}
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
MODES = ("none", "derived", "lookup")

CHILD_SCRIPT = """\\set pid random(1, :np)
INSERT INTO app.child (parent_id, payload) VALUES (:pid, 'inserted by pgbench');
"""


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a backend has used: unlike wall time, other load can't inflate it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bulk_round(dsn: str, parents: int, rows: int) -> tuple[float, float]:
    """(wall s, backend CPU s) of one INSERT ... SELECT of `rows` children; rows removed afterwards."""
    with common.connect(dsn) as conn:
        common.wait_vacuum_idle(conn)
        common.checkpoint(conn)
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        cpu0, t0 = _cpu_s(int(row[0])), time.monotonic()
        conn.execute(
            "INSERT INTO app.child (parent_id, payload) "
            "SELECT 1 + mod(g * 7919, %s), 'bulk' FROM generate_series(1, %s) g",
            (parents, rows),
        )
        elapsed, cpu = time.monotonic() - t0, _cpu_s(int(row[0])) - cpu0
        conn.execute("DELETE FROM app.child WHERE payload = 'bulk'")
        conn.execute("VACUUM app.child")
    return elapsed, cpu


def single_round(cluster: Any, db: str, seconds: int, parents: int) -> tuple[float, float]:
    """(tps, cores other processes used meanwhile) of one pgbench round."""
    common.settle(cluster.dsn_for(db))
    with common.CpuMeter(cluster) as cpu:
        r = common.pgbench(
            cluster, CHILD_SCRIPT, clients=CLIENTS, seconds=seconds, defines={"np": parents}, db=db
        )
    return float(r["tps"]), cpu.result["other_cores"]


def prepare(cluster: Any, parents: int) -> dict[str, str]:
    dsns: dict[str, str] = {}
    for mode in MODES:
        dsn = common.create_database(cluster, f"bench_{mode}")
        with common.connect(dsn) as conn:
            common.create_pair(conn, "app", parents, 10_000)
            common.vacuum_analyze(conn, "app")
        if mode != "none":
            source = "derived" if mode == "derived" else "random"
            api.start(
                dsn,
                ["app.parent"],
                migration="bench",
                settings=StartSettings(uuid_source=source),
                backfill_settings=BackfillSettings(max_batch_size=50_000, initial_batch_size=10_000),
            )
            with common.connect(dsn) as conn:
                common.vacuum_analyze(conn, "app")
        dsns[mode] = dsn
        print(f"  {mode}: ready", flush=True)
    return dsns


def drop_invariant(dsn: str) -> None:
    """The derived tables as they are while the backfill runs: the triggers, not yet the invariant's
    CHECKs (phases/invariant.py), which the finished backfill adds and which cost one more derive()."""
    with common.connect(dsn) as conn:
        for schema, table, name in conn.execute(
            "SELECT n.nspname, c.relname, k.conname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE k.contype = 'c' AND k.conname LIKE 'ou\\_%\\_dv'"
        ).fetchall():
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(schema, table), sql.Identifier(name)
                )
            )


def check(dsns: dict[str, str]) -> int:
    """Children written through the triggers carry their parent's UUID."""
    wrong = 0
    for mode in ("derived", "lookup"):
        with common.connect(dsns[mode]) as conn:
            row = conn.execute(
                "SELECT count(*) FROM app.child c JOIN app.parent p ON p.id = c.parent_id "
                "WHERE c.parent_id_uuid IS DISTINCT FROM p.id_uuid"
            ).fetchone()
            wrong += int(row[0]) if row else 0
    return wrong


def main() -> None:
    args = common.parse_args(
        __doc__ or "",
        [
            ("--rounds", {"type": int, "default": ROUNDS, "help": "alternating rounds"}),
            (
                "--without-invariant",
                {"action": "store_true", "help": "derived as while the backfill runs: no invariant CHECKs"},
            ),
        ],
    )
    name = "derive_overhead" + ("_without_invariant" if args.without_invariant else "")
    common.quiet_logs()
    parents = common.scaled(PARENTS, args.scale, 10_000)
    bulk = common.scaled(BULK, args.scale, 2_000)
    seconds = max(3, round(6 * min(1.0, args.scale**0.5)))
    t_start = time.monotonic()
    with common.bench_cluster(DURABLE) as cluster:
        doc: dict[str, Any] = {"bench": name, "scale": args.scale, **common.header(cluster)}
        dsns = prepare(cluster, parents)
        if args.without_invariant:
            drop_invariant(dsns["derived"])
        doc["invariant"] = not args.without_invariant
        rounds: dict[str, list[dict[str, float]]] = {"bulk": [], "bulk_cpu": [], "single": []}
        other: list[dict[str, float]] = []
        for i in range(args.rounds):
            order = MODES if i % 2 == 0 else tuple(reversed(MODES))
            b = {m: bulk_round(dsns[m], parents, bulk) for m in order}
            s = {m: single_round(cluster, f"bench_{m}", seconds, parents) for m in order}
            rounds["bulk"].append({m: round(b[m][0], 3) for m in MODES})
            rounds["bulk_cpu"].append({m: round(b[m][1], 3) for m in MODES})
            rounds["single"].append({m: round(s[m][0], 1) for m in MODES})
            other.append({m: s[m][1] for m in MODES})
            print(
                f"  round {i + 1}: bulk s "
                + ", ".join(f"{m} {b[m][0]:.2f} (cpu {b[m][1]:.2f})" for m in MODES)
                + "; single tps "
                + ", ".join(f"{m} {s[m][0]:.0f} (others {s[m][1]:.2f} cores)" for m in MODES),
                flush=True,
            )
        wrong = check(dsns)
    targets: dict[str, Any] = {}
    for kind, rs in rounds.items():
        for mode in ("derived", "lookup"):
            # bulk: seconds (lower is better) -> speed ratio none/mode; single: tps ratio mode/none
            ratios = [(r["none"] / r[mode]) if kind != "single" else (r[mode] / r["none"]) for r in rs]
            med = statistics.median(ratios)
            entry: dict[str, Any] = {"ratios": [round(x, 3) for x in ratios], "median_ratio": round(med, 3)}
            if kind == "single":
                # rounds in which no mode's pgbench round saw other load above the noisy threshold
                quiet = [
                    x
                    for x, o in zip(ratios, other, strict=True)
                    if max(o.values()) <= common.NOISY_OTHER_CORES
                ]
                entry["quiet_rounds"] = len(quiet)
                entry["median_ratio_quiet_rounds"] = round(statistics.median(quiet), 3) if quiet else None
            if mode == "derived" and kind in TARGETS:
                entry["target"] = (
                    f"{kind} child INSERT through the derive trigger >= {TARGETS[kind]} x without"
                )
                entry["verdict"] = common.verdict(med >= TARGETS[kind])
            targets[f"{kind}_{mode}"] = entry
    doc.update(
        {
            "settings_durable": DURABLE,
            "parents": parents,
            "bulk_rows": bulk,
            "clients": CLIENTS,
            "seconds_per_single_round": seconds,
            "rounds": rounds,
            "single_other_cores": other,
            # under the key common.write_results scans, so that a noisy run is flagged
            "single_rounds_cpu": [{"other_cores": max(o.values())} for o in other],
            "targets": targets,
            "check_children_with_wrong_shadow": wrong,
            "wall_s": round(time.monotonic() - t_start, 1),
        }
    )
    path = common.write_results(name, doc, args.out)
    for key, v in targets.items():
        print(f"{key:15s} median ratio {v['median_ratio']:.3f} {v.get('verdict', '')}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
