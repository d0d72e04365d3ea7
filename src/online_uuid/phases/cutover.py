"""Cutover: online preparation, then one short transaction that swaps keys, FKs and names.

The same code swaps back (rollback after cutover): `side` names the columns coming in, "shadow"
(uuid, forward) or "retired" (integer, reverse). Under the lock only the catalog changes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .. import catalog, db, naming, partitions, sessions, state
from .. import statements as s
from ..errors import LockTimeoutError, OnlineUuidError, StateError, TriggersChangedError, VerifyError
from ..executor import DDL, ONLINE, Executor, Step, with_lock_retries
from ..metrics import Metrics
from ..model import ForeignKeyConversion, IndexTwin, KeyConversion, PartitionNode, Phase, Plan, Side, TableRef
from ..settings import CutoverSettings, LockSettings
from ..statements import Query
from . import invariant, metadata
from .verify import TriggerGuard, check_guard

log = structlog.get_logger("online_uuid")

STANDBY_LAG_S = 5.0  # `cutover --check` names standbys lagging more than this

FORWARD: Side = "shadow"
REVERSE: Side = "retired"


def _items(plan: Plan) -> list[KeyConversion | ForeignKeyConversion]:
    """Every converted column: keys, then foreign keys."""
    return [*plan.keys, *plan.foreign_keys]


def other(side: Side) -> Side:
    return REVERSE if side == FORWARD else FORWARD


def prepare_steps(plan: Plan, side: Side) -> list[Step]:
    """Everything slow, done online before any strong lock: indexes, proofs of NOT NULL, FKs."""
    p = f"prepare:{side}"
    steps: list[Step] = []
    for k in plan.keys:
        uq = naming.unique_index(k.table, k.column)
        steps.append(
            Step(
                f"{p}:uq:{k.key}",
                (s.build_unique_index(k, side),),
                (k.table,),
                ONLINE,
                f"unique index {uq}",
                index=(k.table, uq),
            )
        )
        if side == FORWARD:
            steps += _not_null_steps(
                p, k.table, s.col_on(k, side), naming.not_null_check(k.table, k.column), k.key
            )
        if side == FORWARD and k.app_assigned:
            steps.append(
                Step(
                    f"{p}:seq:{k.key}",
                    tuple(s.build_retired_sequence(k)),
                    description=f"sequence for {k.table}.{k.retired} (the application assigns its ids)",
                )
            )
    for f in plan.foreign_keys:
        if f.not_null:
            steps += _not_null_steps(
                p, f.table, s.col_on(f, side), naming.not_null_check(f.table, f.column), f.key
            )
    for ix in plan.indexes:
        if ix.partitioned:
            steps += _partitioned_twin_steps(plan, ix, side, p)
            continue
        steps.append(
            Step(
                f"{p}:twin:{ix.table}:{ix.name}",
                (s.build_twin_index(plan, ix, side),),
                (ix.table,),
                ONLINE,
                f"twin of index {ix.name}",
                index=(ix.table, ix.twin),
            )
        )
    for f in plan.foreign_keys:
        if f.partitioned:
            steps += _partitioned_fk_steps(plan, f, side, p)
            continue
        name = naming.shadow_fk(f.name)
        add = s.build_foreign_key(plan, f, side, name, s.prepared_fk_actions(f, side))
        steps.append(
            Step(
                f"{p}:fk:{f.key}",
                (s.build_drop_constraint(f.table, name, if_exists=True), add),
                (f.table, f.ref_table),
                DDL,
                f"foreign key {name} NOT VALID",
            )
        )
        steps.append(
            Step(
                f"{p}:fkvalid:{f.key}",
                (s.build_validate(f.table, name),),
                (f.table,),
                ONLINE,
                f"validate {name}",
            )
        )
    return steps


def _partitioned_twin_steps(plan: Plan, ix: IndexTwin, side: Side, p: str) -> list[Step]:
    """A partitioned index's twin: `ON ONLY` on each partitioned table (catalog only), built
    concurrently on each leaf partition, then attached level by level (which makes them valid)."""
    twins = {ix.name: TableRef(ix.table.schema, ix.twin)}
    twins.update({part.name: TableRef(part.table.schema, part.twin) for part in ix.partitions})
    steps = [
        Step(
            f"{p}:twin:{ix.table}:{ix.name}",
            (s.build_twin_index(plan, ix, side),),
            (ix.table,),
            DDL,
            f"twin of partitioned index {ix.name} (ON ONLY)",
        )
    ]
    for part in sorted(ix.partitions, key=lambda x: (x.level, x.table)):
        if part.leaf:
            steps.append(
                Step(
                    f"{p}:twin:{ix.table}:{ix.name}@{part.table}",
                    (s.build_twin_index(plan, ix, side, part.table, part.twin),),
                    (part.table,),
                    ONLINE,
                    f"twin of index {part.name} on partition {part.table}",
                    index=(part.table, part.twin),
                )
            )
            continue
        level = dataclasses.replace(ix, table=part.table, twin=part.twin, root=ix.root or ix.table)
        steps.append(
            Step(
                f"{p}:twin:{ix.table}:{ix.name}@{part.table}",
                (s.build_twin_index(plan, level, side),),
                (part.table,),
                DDL,
                f"twin of partitioned index {part.name} (ON ONLY)",
            )
        )
    for part in sorted(ix.partitions, key=lambda x: (-x.level, x.table)):  # the deepest first
        parent = twins[part.parent]
        steps.append(
            Step(
                f"{p}:attach:{ix.table}:{ix.name}@{part.table}",
                (s.build_attach_index(parent, twins[part.name]),),
                (part.table,),
                DDL,
                f"attach {twins[part.name].name} to {parent.name}",
            )
        )
    return steps


def incoming_fk(n: PartitionNode, side: Side) -> str:
    """The partition's foreign key on the `side` column, as read from the catalog (or "")."""
    return n.shadow_constraint if side == FORWARD else n.retired_constraint


def _partitioned_fk_steps(plan: Plan, f: ForeignKeyConversion, side: Side, p: str) -> list[Step]:
    """The foreign key on the `side` column of a partitioned child, without a scan under a lock.

    PostgreSQL (before 18) refuses NOT VALID foreign keys on partitioned tables. So each leaf that
    has the original constraint gets its own NOT VALID and validated online (SHARE UPDATE EXCLUSIVE);
    then each partitioned table that has it, the deepest first, gets it as a valid constraint,
    which attaches its partitions' validated ones instead of checking rows again (catalog only,
    under lock_timeout with retries). A partition whose constraint exists already (made by an
    earlier attempt, or cloned to a partition created since) is left as it is.
    """
    steps: list[Step] = []
    actions = s.prepared_fk_actions(f, side)
    for n in sorted(f.partitions, key=lambda x: (-x.level, x.table)):
        if not n.constraint:
            continue
        name = incoming_fk(n, side) or naming.shadow_fk(n.constraint)
        if not incoming_fk(n, side):
            add = s.build_foreign_key(plan, f, side, name, actions, table=n.table, valid=not n.leaf)
            what = "NOT VALID" if n.leaf else "(attaches its partitions')"
            steps.append(
                Step(
                    f"{p}:fk:{f.key}@{n.key}",
                    (add,),
                    (n.table, f.ref_table),
                    DDL,
                    f"foreign key {name} on {n.table} {what}",
                )
            )
        if n.leaf:
            steps.append(
                Step(
                    f"{p}:fkvalid:{f.key}@{n.key}",
                    (s.build_validate(n.table, name),),
                    (n.table,),
                    ONLINE,
                    f"validate {name} on {n.table}",
                )
            )
    return steps


def _partitioned_fk_swap(f: ForeignKeyConversion, side: Side, strict: bool) -> list[Query]:
    """The prepared constraints take the original names, on the root and on every partition.

    `strict` (the swap itself): each must exist now; else (`plan --sql`) the names preparation gives.
    """
    st: list[Query] = []
    for n in sorted(f.partitions, key=lambda x: (x.level, x.table)):
        if not n.constraint:
            continue
        incoming = incoming_fk(n, side) or ("" if strict else naming.shadow_fk(n.constraint))
        if not incoming:
            raise StateError(
                f"partition {n.table} of {f.table} has no foreign key on {s.col_on(f, side)} yet (it joined "
                "during cutover preparation); nothing was swapped: run the command again"
            )
        if incoming != n.constraint:
            st.append(s.build_rename_constraint(n.table, incoming, n.constraint))
        if not n.inherited:
            timing = s.build_fk_timing(dataclasses.replace(f, table=n.table, name=n.constraint))
            st += [timing] if timing else []
    return st


def _drop_fk(f: ForeignKeyConversion) -> list[Query]:
    """The outgoing foreign key: a partitioned child's, where it is declared (its clones go with it)."""
    if not f.partitioned:
        return [s.build_drop_constraint(f.table, f.name)]
    return [
        s.build_drop_constraint(n.table, n.constraint)
        for n in sorted(f.partitions, key=lambda x: (x.level, x.table))
        if n.constraint and not n.inherited
    ]


def _index_renames(ix: IndexTwin) -> list[Query]:
    st: list[Query] = [s.build_rename_index(ix.table, ix.twin, ix.name)]
    st += [s.build_rename_index(p.table, p.twin, p.name) for p in ix.partitions if p.twin != p.name]
    return st


def _not_null_steps(prefix: str, table: TableRef, column: str, check: str, key: str) -> list[Step]:
    return [
        Step(
            f"{prefix}:nn:{key}",
            (
                s.build_drop_constraint(table, check, if_exists=True),
                s.build_not_null_check(table, column, check),
            ),
            (table,),
            DDL,
            f"NOT NULL proof on {table}.{column}",
        ),
        Step(
            f"{prefix}:nnvalid:{key}",
            (s.build_validate(table, check),),
            (table,),
            ONLINE,
            f"validate {check}",
        ),
    ]


def swap_statements(
    plan: Plan,
    side: Side,
    view_defs: dict[TableRef, str],
    not_null_renames: list[Query] | None = None,
    carried: list[Query] | None = None,
    strict: bool = False,
) -> list[Query]:
    """The body of the swap transaction, after LOCK: catalog changes only, never a table scan.

    `carried` (phases/metadata.py, read under the lock) carries privileges and comments over; with
    it, views take their ACL from there rather than from the plan.
    """
    out = other(side)
    st: list[Query] = []
    for v in sorted(plan.views, key=lambda v: -v.depth):
        st.append(s.build_drop_view(v.view))
    for f in plan.foreign_keys:
        st += s.build_drop_fk_triggers(f)
    if side == FORWARD:
        for k in plan.keys:
            st += s.build_drop_key_triggers(k)
        st += invariant.drop_statements(plan)  # rows made from now on get generated UUIDs
    for f in plan.foreign_keys:
        st += _drop_fk(f)
    for ix in plan.indexes:
        st.append(
            s.build_drop_constraint(ix.table, ix.constraint)
            if ix.constraint
            else s.build_drop_index(ix.table, ix.name)
        )
    for k in plan.keys:
        st.append(s.build_drop_constraint(k.table, k.constraint))
    for item in _items(plan):
        st.append(s.build_rename_column(item.table, item.column, s.col_on(item, out)))
        st.append(s.build_rename_column(item.table, s.col_on(item, side), item.column))
    st += not_null_renames or []
    for k in plan.keys:
        st.append(s.build_set_not_null(k.table, k.column))
        if side == FORWARD:
            st.append(s.build_drop_constraint(k.table, naming.not_null_check(k.table, k.column)))
        else:  # the uuid side is a nullable shadow again, exactly as start made it
            st.append(s.build_set_not_null(k.table, s.col_on(k, out), on=False))
    for f in plan.foreign_keys:
        if f.not_null:
            st.append(s.build_set_not_null(f.table, f.column))
            st.append(s.build_drop_constraint(f.table, naming.not_null_check(f.table, f.column)))
            st.append(s.build_set_not_null(f.table, s.col_on(f, out), on=False))
    for k in plan.keys:
        st.append(s.build_primary_key_using(k.table, k.constraint, naming.unique_index(k.table, k.column)))
        if k.app_assigned:  # rows inserted while cut over still get an integer, so rollback keeps them
            st += (
                s.build_retired_default(k, k.retired)
                if side == FORWARD
                else [s.build_drop_retired_default(k)]
            )
    for ix in plan.indexes:
        st += [s.build_constraint_using(ix)] if ix.constraint else _index_renames(ix)
    for f in plan.foreign_keys:
        st += _partitioned_fk_swap(f, side, strict) if f.partitioned else _final_fk(plan, f, side)
    for v in sorted(plan.views, key=lambda v: v.depth):
        made = dataclasses.replace(v, acl=()) if carried is not None else v
        st += s.build_create_view(made, view_defs.get(v.view, v.definition))
    for f in plan.foreign_keys:
        st += s.build_fk_triggers(plan, f, out)
        if out == "shadow":
            st += s.build_fk_move_trigger(f)
    if side == REVERSE:
        for k in plan.keys:
            st += s.build_key_triggers(plan, k)
    st += carried or []
    tables = plan.tables() + [t for f in plan.foreign_keys if f.partitioned for t in f.fk_tables()]
    st.append(s.build_enable_always_triggers(list(dict.fromkeys(tables))))
    return st


def _final_fk(plan: Plan, f: Any, side: Side) -> list[Query]:
    prepared = naming.shadow_fk(f.name)
    if s.prepared_fk_actions(f, side) == s.fk_actions(f, side):
        timing = s.build_fk_timing(f)  # prepared deferred; the original's timing from now on
        return [s.build_rename_constraint(f.table, prepared, f.name), *([timing] if timing else [])]
    return [
        s.build_drop_constraint(f.table, prepared),
        s.build_foreign_key(plan, f, side, f.name, s.fk_actions(f, side), live=True),
    ]


def post_steps(plan: Plan, side: Side) -> list[Step]:
    """FKs recreated NOT VALID in the swap (their actions changed) are validated online after it."""
    return [
        Step(
            f"post:{side}:fkvalid:{f.key}",
            (s.build_validate(f.table, f.name),),
            (f.table,),
            ONLINE,
            f"validate {f.name}",
        )
        for f in plan.foreign_keys
        if s.prepared_fk_actions(f, side) != s.fk_actions(f, side)
    ]


@dataclass
class SwapResult:
    lock_held_s: float
    attempts: int
    blockers_terminated: list[int] = field(default_factory=list)
    sessions_reset: list[int] = field(default_factory=list)


def _not_null_renames(conn: psycopg.Connection, plan: Plan, side: Side) -> list[Query]:
    """PostgreSQL 18 names NOT NULL constraints after their column: carry the names through the renames.

    Without this the new key's constraint would be `<table>_<col>_not_null1` and the retired column
    would keep the original name; a temporary name frees the original first.
    """
    if conn.info.server_version < 180000:
        return []
    out_side = other(side)
    first: list[Query] = []
    then: list[Query] = []
    for i, item in enumerate(_items(plan)):
        oid = catalog.read_table_ref(conn, item.table)
        names = (
            {} if oid is None else catalog.read_not_null_names(conn, oid, [item.column, s.col_on(item, side)])
        )
        live, incoming = names.get(item.column), names.get(s.col_on(item, side))
        if isinstance(item, ForeignKeyConversion) and item.partitioned and not _same_names(conn, item, names):
            continue  # a rename recurses by name: a partition named otherwise keeps PostgreSQL's names
        tmp = naming.fit(f"ou_nn_{i}")
        if live:  # now on the outgoing column
            first.append(s.build_rename_constraint(item.table, live, tmp))
            then.append(
                s.build_rename_constraint(
                    item.table, tmp, naming.not_null_name(item.table, s.col_on(item, out_side))
                )
            )
        if incoming:  # now on the live column
            first.append(
                s.build_rename_constraint(item.table, incoming, naming.not_null_name(item.table, item.column))
            )
    return first + then


def _same_names(conn: psycopg.Connection, f: ForeignKeyConversion, names: dict[str, str]) -> bool:
    """Every partition's NOT NULL constraints of the two columns carry the root's names (PostgreSQL 18
    gives a partition its parent's; a table attached as a partition keeps its own)."""
    for n in f.partitions:
        oid = catalog.read_table_ref(conn, n.table)
        if n.level == 0 or oid is None:
            continue
        if catalog.read_not_null_names(conn, oid, list(names)) != names:
            return False
    return True


def _capture_views(conn: psycopg.Connection, plan: Plan) -> dict[TableRef, str]:
    defs: dict[TableRef, str] = {}
    for v in plan.views:
        oid = catalog.read_table_ref(conn, v.view)
        definition = None if oid is None else catalog.read_view_definition(conn, oid)
        if definition is None:
            raise StateError(f"view {v.view} disappeared since the plan was made; recreate it or roll back")
        defs[v.view] = definition
    return defs


def run_swap(
    conn: psycopg.Connection,
    mid: str,
    plan: Plan,
    side: Side,
    settings: CutoverSettings,
    src: Phase,
    dst: Phase,
    metrics: Metrics | None = None,
    *,
    guard: TriggerGuard | None = None,
) -> SwapResult:
    """One transaction: lock all tables in a fixed order, swap, move the phase; retried on lock timeout."""

    def busy(exc: Exception) -> None:
        if metrics:
            outcome = "deadlock" if isinstance(exc, pgerrors.DeadlockDetected) else "lock_timeout"
            metrics.cutover_attempts.labels(outcome=outcome).inc()

    terminated: list[int] = []
    held, attempts = with_lock_retries(
        conn,
        settings.lock,
        plan.tables(),
        lambda: _swap_once(conn, mid, plan, side, settings.lock, src, dst, guard),
        what="cutover swap",
        gave_up="cutover gave up",
        hint=", or use --terminate-blockers",
        terminate=settings.terminate_blockers,
        terminated=terminated,
        on_busy=busy,
    )
    reset = sessions.reset(conn, settings.reset_sessions)
    reset += sessions.reset(conn, settings.reset_idle_sessions, idle_only=True)
    if metrics:
        metrics.cutover_attempts.labels(outcome="success").inc()
        metrics.lock_held.set(held)
    return SwapResult(
        lock_held_s=held, attempts=attempts, blockers_terminated=terminated, sessions_reset=reset
    )


class _ReleaseProbe:
    """A second session queued behind the swap's lock: it is granted when the application would be.

    PostgreSQL removes dropped index files after releasing locks, so the time COMMIT takes to return
    grows with table size while the lock does not; this measures the lock itself.
    """

    def __init__(self, conn: psycopg.Connection, table: TableRef, name: str) -> None:
        self.released_at: float | None = None
        self._thread: threading.Thread | None = None
        try:
            dsn = make_conninfo(conn.info.dsn, password=conn.info.password or None)
            self._conn: psycopg.Connection | None = db.connect(dsn, name, autocommit=False)
        except (psycopg.Error, OnlineUuidError):
            self._conn = None  # measuring is best effort; the swap never depends on it
        self._table = table

    def arm(self) -> None:
        if self._conn is not None:
            self._thread = threading.Thread(target=self._wait, name="lock-probe", daemon=True)
            self._thread.start()

    def _wait(self) -> None:
        assert self._conn is not None
        try:
            self._conn.execute("SET lock_timeout = '60s'")
            self._conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(self._table.ident))
            self.released_at = time.monotonic()
        except psycopg.Error:
            pass
        finally:
            self._conn.rollback()

    def close(self, timeout: float = 10.0) -> float | None:
        if self._thread is not None:
            self._thread.join(timeout)
        if self._conn is not None:
            self._conn.close()
        return self.released_at


def swap_prologue(plan: Plan, lock: LockSettings) -> list[Query]:
    """The swap's first round trip: its timeouts, then LOCK of every table in a fixed order."""
    return [
        s.build_set_local("lock_timeout", f"{lock.lock_timeout_ms}ms"),
        s.build_set_local("statement_timeout", f"{lock.statement_timeout_ms}ms"),
        s.build_lock(plan.tables()),
    ]


def swap_body(conn: psycopg.Connection, plan: Plan, side: Side, strict: bool = False) -> list[Query]:
    """What the swap sends once its locks are held: views as defined now, PG 18 NOT NULL names kept,
    partitions as they are now."""
    plan = partitions.refresh(conn, plan)
    carried = metadata.statements(plan, side, metadata.capture(conn, plan, side))
    return swap_statements(
        plan, side, _capture_views(conn, plan), _not_null_renames(conn, plan, side), carried, strict
    )


def _swap_once(
    conn: psycopg.Connection,
    mid: str,
    plan: Plan,
    side: Side,
    lock: LockSettings,
    src: Phase,
    dst: Phase,
    guard: TriggerGuard | None = None,
) -> float:
    """Lock, then send the whole swap in one round trip: the lock is held for catalog work only."""
    probe = _ReleaseProbe(conn, plan.tables()[0], naming.application_name(mid, "lock-probe"))
    try:
        with conn.transaction():
            conn.execute(sql.SQL("; ").join(swap_prologue(plan, lock)))
            locked_at = time.monotonic()
            if guard is not None:  # no write can pass the triggers from here on: check the ones before
                check_guard(conn, guard)
            probe.arm()
            conn.execute(sql.SQL(";\n").join(swap_body(conn, plan, side, strict=True)))
            state.move(conn, mid, src, dst)
            state.forget_steps(conn, mid, f"prepare:{side}:")
            commit_sent = time.monotonic()
        committed = time.monotonic()
    finally:
        released = probe.close()
    # The probe is granted when the locks go; without it, count the whole COMMIT (an upper bound).
    if released is not None and commit_sent <= released <= committed + 0.001:
        return released - locked_at
    return committed - locked_at


def run_cutover(
    conn: psycopg.Connection,
    mid: str,
    plan: Plan,
    settings: CutoverSettings,
    metrics: Metrics | None = None,
    *,
    guard: TriggerGuard | None = None,
) -> SwapResult:
    """Prepare online, swap under a short lock, then validate what the swap recreated."""
    m = state.load(conn, mid)
    if m.phase == Phase.CUT_OVER:
        raise StateError(f"migration {mid} is already cut over; `online-uuid finalize` or `rollback` next")
    if m.phase == Phase.BACKFILLED:
        state.move(conn, mid, Phase.BACKFILLED, Phase.PREPARING)
    elif m.phase != Phase.PREPARING:
        raise StateError(
            f"migration {mid} is {m.phase}; cutover needs a finished backfill (`online-uuid backfill`)"
        )
    ex = Executor(conn, mid, settings.lock, terminate_blockers=settings.terminate_blockers)
    try:
        _refuse_detached(conn, mid, plan)
        _prepare(conn, ex, mid, partitions.refresh(conn, plan))
        result = run_swap(
            conn, mid, plan, FORWARD, settings, Phase.PREPARING, Phase.CUT_OVER, metrics, guard=guard
        )
    except (LockTimeoutError, TriggersChangedError, StateError) as exc:
        state.move(conn, mid, Phase.PREPARING, Phase.BACKFILLED)  # nothing swapped; done steps stay recorded
        if isinstance(exc, TriggersChangedError):
            state.event(conn, mid, "cutover_refused", {"reason": str(exc)})
        raise
    result.blockers_terminated = ex.terminated + result.blockers_terminated
    state.update(conn, mid, cutover={"lock_held_s": result.lock_held_s, "attempts": result.attempts})
    state.event(conn, mid, "cutover", {"lock_held_s": result.lock_held_s, "attempts": result.attempts})
    ex.run_all(post_steps(partitions.refresh(conn, plan), FORWARD))
    return result


def _refuse_detached(conn: psycopg.Connection, mid: str, plan: Plan) -> None:
    """A partition detached since the plan keeps a shadow column no trigger maintains: refuse."""
    problems = partitions.detached(
        conn, plan, partitions.refresh(conn, plan), partitions.registered(conn, mid)
    )
    if problems:
        raise StateError(problems[0])


def _prepare(conn: psycopg.Connection, ex: Executor, mid: str, plan: Plan) -> None:
    """The online preparation; a unique index that meets duplicate UUIDs stops the cutover cleanly.

    Verify does not look for duplicates in derived mode: this index build is the proof. On a
    duplicate the INVALID index is dropped and the migration goes back to `backfilled`.
    """
    for step in prepare_steps(plan, FORWARD):
        try:
            ex.run(step)
        except pgerrors.UniqueViolation as exc:
            if step.index is None:
                raise
            table, index = step.index
            conn.execute(s.build_drop_index_concurrently(table, index))
            state.move(conn, mid, Phase.PREPARING, Phase.BACKFILLED)
            detail = (exc.diag.message_detail or "duplicate values").strip().rstrip(".")
            fix = (
                "`online-uuid rollback` and start again (a new secret derives new UUIDs)"
                if plan.derived
                else "give those rows distinct UUIDs, then cutover again"
            )
            what: dict[str, object] = {"table": str(table), "index": index, "detail": detail}
            state.event(conn, mid, "cutover_duplicate", what)
            raise VerifyError(
                f"cutover stopped: {table} has duplicate UUIDs ({detail}), so unique index {index} cannot "
                f"be built; nothing was swapped, the migration is back in backfilled: {fix}",
                what,
            ) from None


def run_revert(conn: psycopg.Connection, mid: str, plan: Plan, settings: CutoverSettings) -> SwapResult:
    """Rollback after cutover: integer keys back with their original values and names, online."""
    m = state.load(conn, mid)
    if m.phase == Phase.CUT_OVER:
        state.move(conn, mid, Phase.CUT_OVER, Phase.REVERTING)
    ex = Executor(conn, mid, settings.lock, terminate_blockers=settings.terminate_blockers)
    ex.run_all(prepare_steps(partitions.refresh(conn, plan), REVERSE))
    result = run_swap(conn, mid, plan, REVERSE, settings, Phase.REVERTING, Phase.BACKFILLED)
    state.forget_steps(conn, mid, "post:")
    state.event(conn, mid, "revert", {"lock_held_s": result.lock_held_s, "attempts": result.attempts})
    return result


def check(conn: psycopg.Connection, mid: str, plan: Plan, settings: CutoverSettings) -> list[str]:
    """What would block a cutover now; locks nothing."""
    problems: list[str] = []
    m = state.load(conn, mid)
    if m.phase not in (Phase.BACKFILLED, Phase.PREPARING):
        problems.append(f"phase is {m.phase}: the backfill has not finished")
    for k in plan.keys:
        for name in [naming.unique_index(k.table, k.column)] + [
            i.twin for i in plan.indexes if i.table == k.table
        ]:
            oid = catalog.read_table_ref(conn, TableRef(k.table.schema, name))
            if oid is not None and catalog.read_index_invalid(conn, oid):
                problems.append(f"index {name} is INVALID (an interrupted build); cutover rebuilds it")
    lag = catalog.read_lagging_standbys(conn, STANDBY_LAG_S)
    problems += [f"standby {name} lags {secs:.1f} s" for name, secs in lag]
    problems += [
        f"publication {pub.name} carries {', '.join(t.display() for t in pub.tables)}: the swap renames "
        "and retypes replicated columns, so its subscribers stop applying until they get the same swap "
        "(docs/replication.md)"
        for pub in plan.publications
    ]
    oids = [o for t in plan.tables() if (o := catalog.read_table_ref(conn, t)) is not None]
    problems += [
        f"pid {h.pid} ({h.application_name or '-'}) holds a lock on the tables in a transaction "
        f"{h.age_s:.0f} s old"
        for h in catalog.read_old_lock_holders(conn, oids, settings.max_transaction_age_s)
    ]
    return problems
