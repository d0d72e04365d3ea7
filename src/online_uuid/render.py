"""Human output for the terminal: the plan as tables in dependency order, reports as short lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from .model import ACTION_SQL, ForeignKeyConversion, Plan

if TYPE_CHECKING:
    from .phases.verify import VerifyReport

# Rough rates measured on a 2-core machine (bench/); only for the plan's estimate.
KEY_ROWS_PER_S = 60_000
FK_ROWS_PER_S = 40_000


SOURCE_TEXT = {
    "derived": "derived (each existing row's UUID is a keyed hash of its table and integer key; "
    "child rows compute their parent's UUID without reading it; the key is destroyed at finalize)",
    "random": "random (existing rows get generated UUIDs; child rows look their parent's up)",
}


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_seconds(s: float) -> str:
    s = int(s)
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{s // 60} min"
    return f"{s // 3600} h {(s % 3600) // 60} min"


def estimate_backfill_s(plan: Plan) -> float:
    keys = sum(k.rows for k in plan.keys) / KEY_ROWS_PER_S
    fks = sum(f.table_rows for f in plan.foreign_keys) / FK_ROWS_PER_S
    return keys + fks


def plan_json(plan: Plan) -> dict[str, Any]:
    doc = plan.to_json()
    doc["order"] = [str(k.table) for k in plan.keys]
    doc["estimated_backfill_seconds"] = round(estimate_backfill_s(plan), 1)
    doc["backfill_fires"] = [t.describe() for t in plan.backfill_side_effects()]
    return doc


def print_plan(plan: Plan, console: Console) -> None:
    keys = Table(title="Keys to convert (dependency order)", title_justify="left")
    for col in ("#", "table", "key", "type", "rows", "size", "primary key", "default"):
        keys.add_column(col)
    for i, k in enumerate(plan.keys, 1):
        indent = "  " * k.level + ("└ " if k.level else "")
        default = "identity" if k.identity else (k.default or "-")
        keys.add_row(
            str(i),
            indent + str(k.table),
            k.column,
            k.type,
            f"{k.rows:,}",
            human_bytes(k.bytes),
            k.constraint,
            default,
        )
    console.print(keys)
    fks = Table(title="Foreign key columns that follow", title_justify="left")
    for col in ("constraint", "column", "references", "on delete", "after cutover", "deferrable", "not null"):
        fks.add_column(col)
    for f in plan.foreign_keys:
        fks.add_row(
            _fk_name(f),
            f"{f.table}.{f.column}",
            f"{f.ref_table}.{f.ref_column}",
            ACTION_SQL[f.on_delete],
            ACTION_SQL[f.final_on_delete or f.on_delete],
            "yes" if f.deferrable else "no",
            "yes" if f.not_null else "no",
        )
    console.print(fks if plan.foreign_keys else "No foreign key references these keys.")
    if plan.indexes:
        idx = Table(title="Indexes and constraints rebuilt on the new columns", title_justify="left")
        for col in ("table", "index", "columns", "kind"):
            idx.add_column(col)
        for ix in plan.indexes:
            kind = {"p": "primary key", "u": "unique constraint"}.get(
                ix.constraint_type, "unique index" if ix.unique else "index"
            )
            if ix.partitioned:
                n = sum(1 for p in ix.partitions if p.leaf)
                kind = f"partitioned {kind} ({n} partition{'s' if n != 1 else ''})"
            idx.add_row(str(ix.table), ix.name, ", ".join(ix.columns), kind)
        console.print(idx)
    for k in plan.keys:
        if k.adopt:
            console.print(f"{k.table}.{k.column}: the new key takes the values of {k.adopt} (--key-from)")
    for m in plan.matviews:
        console.print(f"materialized view {m.view} stays on the integer columns until finalize rebuilds it")
    for v in plan.views:
        console.print(f"view {v.view} is recreated in the cutover transaction (grants and options kept)")
    fired = plan.backfill_side_effects()
    if plan.backfill_replica:
        console.print(
            "backfill sessions run as session_replication_role = replica: user triggers and rules "
            "do not fire on its UPDATEs",
            markup=False,
        )
    else:
        console.print("backfill sessions run as origin: this user may not SET session_replication_role")
    for t in fired:
        console.print(
            f"warning: the backfill fires {t.describe()}; start refuses without --allow-trigger-side-effects",
            markup=False,
        )
    for w in plan.warnings:
        console.print(f"[yellow]warning[/yellow]: {w.object}: {w.message}")
    print_surroundings(plan, console)
    console.print(f"UUID source: {SOURCE_TEXT.get(plan.uuid_source, plan.uuid_source)}")
    console.print(
        f"UUIDs: {plan.uuid_version} ({plan.generator}); "
        f"cascade deletes: {'yes, every converted FK' if plan.cascade_deletes else 'no, actions kept'}; "
        f"estimated backfill: {human_seconds(estimate_backfill_s(plan))}"
    )


def print_status(doc: dict[str, Any], console: Console) -> None:
    """The `status` report: phase, a table of jobs, throttle, cutover, dead tuples, last error."""
    prog = doc.get("progress") or {}
    paused = " (paused)" if doc.get("paused") else ""
    console.print(
        f"migration {doc.get('migration')}: phase {doc.get('phase')}{paused}, "
        f"{prog.get('percent', 0):.1f}% backfilled",
        markup=False,
    )
    if doc.get("uuid_source"):
        console.print(f"uuid source: {doc['uuid_source']}", markup=False)
    jobs = sorted(doc.get("jobs") or [], key=lambda j: (j.get("kind") != "key", str(j.get("label"))))
    if jobs:
        t = Table()
        for c in ("column", "state", "progress", "rows done", "remaining", "rate", "eta"):
            t.add_column(c)
        for j in jobs:
            eta = j.get("eta_s")
            t.add_row(
                str(j.get("label")),
                str(j.get("state")),
                f"{j.get('percent', 0):.1f}%",
                f"{j.get('rows_done', 0):,}",
                f"{j.get('rows_remaining', 0):,}",
                f"{j['rate']:,.0f}/s" if j.get("rate") else "-",
                human_seconds(eta) if eta else "-",
            )
        console.print(t)
    th = doc.get("throttle") or {}
    reasons = ", ".join(th.get("reasons") or []) or "none"
    console.print(
        f"throttled: {'yes' if th.get('throttled') else 'no'} (reasons: {reasons}); "
        f"runtime overrides: {th.get('overrides') or 'none'}",
        markup=False,
    )
    if th.get("latency_budget"):
        console.print(latency_line(th["latency_budget"]), markup=False)
    cut = doc.get("cutover") or {}
    if cut.get("lock_held_s") is not None:
        held_ms = 1000 * float(cut["lock_held_s"])
        console.print(f"cutover: lock held {held_ms:.1f} ms after {cut.get('attempts')} attempt(s)")
    dead = doc.get("dead_tuples") or {}
    if dead:
        console.print("dead tuples: " + ", ".join(f"{k} {v:,}" for k, v in dead.items()), markup=False)
    for tx in th.get("long_transactions") or []:
        console.print(f"long transaction holding back vacuum: {tx}", markup=False)
    if doc.get("last_error"):
        console.print(f"last error: {doc['last_error']}", markup=False)


def latency_line(b: dict[str, Any]) -> str:
    """`--max-latency-impact` in `status`: F, the canary's p99 against its idle one, the rate allowed."""

    def ms(v: Any) -> str:
        return "-" if v is None else f"{v:.2f} ms"

    ratio = "-" if b.get("ratio") is None else f"{b['ratio']:.2f}x"
    measuring = " (measuring the idle baseline)" if b.get("measuring_baseline") else ""
    return (
        f"latency budget: F {b.get('factor')}, canary p99 {ms(b.get('canary_p99_ms'))} = {ratio} "
        f"its idle {ms(b.get('baseline_p99_ms'))}; allowed {b.get('allowed_rows_per_s') or 0:,.0f} rows/s"
        f"{measuring}"
    )


def print_verify(report: VerifyReport, console: Console) -> None:
    """One line per checked column (after what a repair fixed)."""
    if report.repaired is not None:
        for column, rows in report.repaired.items():
            console.print(f"repaired {column}: {rows:,} rows", markup=False)
        if not report.repaired:
            console.print("nothing to repair", markup=False)
    for c in report.checks:
        mark = "ok" if c.ok else "FAIL"
        held = (
            f"every row, held by validated CHECK {c.enforced_by}"
            if c.enforced_by
            else f"{c.rows:,} rows checked"
        )
        console.print(f"{mark:4} {c.table}.{c.column}: {held}", markup=False)


def print_surroundings(plan: Plan, console: Console) -> None:
    """Database/role timeouts online-uuid overrides for itself, and logical replication around it."""
    for st in plan.session_settings:
        console.print(
            f"setting: {st.name} = {st.value} ({st.scope}): online-uuid overrides it for its own "
            "sessions only (each sets the timeouts its work needs); the application keeps it",
            markup=False,
        )
    for pub in plan.publications:
        tables = ", ".join(t.display() for t in pub.tables)
        console.print(
            f"[yellow]publication[/yellow] {pub.name} ({pub.scope}) carries {tables}: its subscribers "
            "need the shadow columns before `start` (start shows the DDL; --subscribers-prepared)"
        )
    for sub in plan.subscriptions:
        console.print(
            f"[yellow]subscription[/yellow] {sub} writes into this database: a converted table it "
            "receives needs the same change on its publisher first"
        )


def print_cutover_check(problems: list[str], at_risk: list[dict[str, Any]], console: Console) -> None:
    """What blocks a cutover, then the sessions whose prepared statements the swap would break."""
    console.print("\n".join(problems) or "nothing blocks a cutover now", markup=False)
    apps: dict[tuple[str, str], list[int]] = {}
    for s in at_risk:
        apps.setdefault((s["application_name"] or "-", s["role"] or "-"), []).append(s["pid"])
    for (app, role), pids in sorted(apps.items()):
        fix = f"--reset-sessions {app}" if app != "-" else "no application_name: set one to reset them"
        console.print(
            f"at risk after the swap: application {app} (role {role}), pids "
            f"{', '.join(map(str, pids))}: prepared statements fail until the session resets ({fix})",
            markup=False,
        )


def _fk_name(f: ForeignKeyConversion) -> str:
    """The constraint, or for a partitioned child those of its partitions (n partitions)."""
    if not f.partitioned:
        return f.name
    own = sorted({p.constraint for p in f.partitions if p.constraint and not p.inherited and p.level > 0})
    leaves = len(f.leaves())
    parts = f"{leaves} partition{'s' if leaves != 1 else ''}"
    if f.name:
        return f"{f.name} ({parts})"
    return f"{', '.join(own)} (declared on partitions; {parts})"
