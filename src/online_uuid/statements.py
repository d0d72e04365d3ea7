"""Pure builders of every statement the phases run, as psycopg.sql.Composed: the home of inline SQL."""

from __future__ import annotations

from psycopg import sql

from . import naming
from .model import (
    ACTION_SQL,
    DependentView,
    ForeignKeyConversion,
    IndexTwin,
    KeyConversion,
    MaterializedView,
    MatViewIndex,
    Plan,
    Side,
    TableRef,
)
from .naming import STATE_SCHEMA
from .templates import render

Query = sql.SQL | sql.Composed  # what Connection.execute accepts


def col_on(item: KeyConversion | ForeignKeyConversion, side: Side) -> str:
    """The column name of `item` on `side` while the other side is live under the original name."""
    return item.shadow if side == "shadow" else item.retired


def _fn(table: TableRef, trigger: str) -> sql.Identifier:
    return sql.Identifier(STATE_SCHEMA, naming.function_name(table, trigger))


V7_FUNCTION = sql.Identifier(STATE_SCHEMA, "uuid_v7")


def uses_v7_function(plan: Plan) -> bool:
    """v7 before PostgreSQL 18 needs the tool's own uuid_v7() in the state schema."""
    return plan.uuid_version == "v7" and plan.server_version < 180000


def generator_expr(uuid_version: str, server_version: int) -> sql.Composed:
    """SQL expression for new UUIDs: core gen_random_uuid() for v4, never uuid-ossp."""
    if uuid_version == "v7":
        if server_version >= 180000:
            return sql.SQL("pg_catalog.uuidv7()").format()
        return sql.SQL("{}()").format(V7_FUNCTION)
    return sql.SQL("pg_catalog.gen_random_uuid()").format()


def generator(plan: Plan) -> sql.Composed:
    """The generator of new keys, built from the plan's settings (never from stored SQL text)."""
    return generator_expr(plan.uuid_version, plan.server_version)


# --- start ------------------------------------------------------------------------------------


def build_add_column(table: TableRef, column: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} uuid").format(
        table.ident, sql.Identifier(column)
    )


def build_set_default(table: TableRef, column: str, expr: sql.Composable) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
        table.ident, sql.Identifier(column), expr
    )


def build_uuid_v7_function() -> sql.Composed:
    return render("uuid_v7_function.sql", function=V7_FUNCTION)


def build_drop_uuid_v7_function() -> sql.Composed:
    return sql.SQL("DROP FUNCTION IF EXISTS {}()").format(V7_FUNCTION)


def build_grant_generator_usage() -> sql.Composed:
    """Every role that inserts calls the v7 generator (the column default): it needs the schema."""
    return sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(sql.Identifier(STATE_SCHEMA))


def build_key_triggers(plan: Plan, k: KeyConversion) -> list[sql.Composed]:
    """The shadow key is filled on insert and when a row without one changes key; never changed once set."""
    trig = naming.key_trigger(k.table, k.column)
    keep = trig + "_keep"
    shadow = sql.Identifier(k.shadow)
    gen: sql.Composable = generator(plan)
    when: sql.Composable = sql.SQL(" WHEN (NEW.{} IS NULL)").format(shadow)
    if k.adopt:  # the new key is the adopted column's value, on every insert (the default is for later)
        gen = sql.SQL("COALESCE(NEW.{}, {})").format(sql.Identifier(k.adopt), gen)
        when = sql.SQL("")
    return [
        render("keep_key_function.sql", function=_fn(k.table, trig), shadow=shadow, generator=gen),
        sql.SQL("CREATE TRIGGER {} BEFORE INSERT ON {} FOR EACH ROW{} EXECUTE FUNCTION {}()").format(
            sql.Identifier(naming.fires_last(trig)), k.table.ident, when, _fn(k.table, trig)
        ),
        # Not `UPDATE OF`: a row the key backfill has not reached gets its UUID when its key changes
        # (it may move behind the cursor). The backfill's own update (NULL to a value) does not fire it.
        sql.SQL(
            "CREATE TRIGGER {} BEFORE UPDATE ON {} FOR EACH ROW "
            "WHEN ((OLD.{s} IS NOT NULL AND NEW.{s} IS DISTINCT FROM OLD.{s}) "
            "OR (NEW.{s} IS NULL AND NEW.{k} IS DISTINCT FROM OLD.{k})) EXECUTE FUNCTION {}()"
        ).format(
            sql.Identifier(naming.fires_last(keep)),
            k.table.ident,
            _fn(k.table, trig),
            s=shadow,
            k=sql.Identifier(k.column),
        ),
    ]


def build_drop_key_triggers(k: KeyConversion) -> list[sql.Composed]:
    trig = naming.key_trigger(k.table, k.column)
    names = [naming.fires_last(trig), naming.fires_last(trig + "_keep"), trig, trig + "_keep"]  # + legacy
    return [
        *(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(n), k.table.ident) for n in names),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_fn(k.table, trig)),
    ]


DEFINER = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp"


# The value a shadow FK holds while its parent is invisible to the BEFORE trigger: never a real
# key (random and v7 UUIDs are never nil; an integer key at the smallint minimum is not expected),
# so the fix-up is queued for exactly those rows, and NOT NULL proofs stay satisfied.
MISSING_UUID = sql.SQL("'00000000-0000-0000-0000-000000000000'::pg_catalog.uuid")
MISSING_INT = sql.SQL("(-32768)")


def missing_marker(side: Side) -> sql.SQL:
    return MISSING_UUID if side == "shadow" else MISSING_INT


def build_fk_triggers(plan: Plan, f: ForeignKeyConversion, side: Side) -> list[sql.Composed]:
    """Keep the FK's `side` column equal to the parent's `side` key, looked up by the live FK.

    The BEFORE triggers fire after every application trigger (names sort last), and on UPDATE they
    fire when the FK changed, whoever changed it (not `UPDATE OF`, which sees only the SET list).
    """
    parent = plan.key_for(f.ref_table)
    assert parent is not None
    trig = naming.fk_trigger(f.table, f.column)
    column, shadow = sql.Identifier(f.column), sql.Identifier(col_on(f, side))
    ref_shadow = sql.Identifier(col_on(parent, side))
    missing = missing_marker(side)
    self_ref: sql.Composable = sql.SQL("")
    self_ref_end: sql.Composable = sql.SQL("")
    if f.table == f.ref_table:  # a row referencing itself is not in the table yet: use its own key
        self_ref = sql.SQL(
            "IF NEW.{} OPERATOR(pg_catalog.=) NEW.{} AND NEW.{} IS NOT NULL THEN\n"
            "        NEW.{} := NEW.{};\n    ELSE\n    "
        ).format(column, sql.Identifier(parent.column), ref_shadow, shadow, ref_shadow)
        self_ref_end = sql.SQL("END IF;\n    ")
    fix = naming.fk_fixup_trigger(f.table, f.column)
    return [
        render(
            "sync_fk_function.sql",
            function=_fn(f.table, trig),
            column=column,
            shadow=shadow,
            ref_table=f.ref_table.ident,
            ref_column=sql.Identifier(parent.column),
            ref_shadow=ref_shadow,
            missing=missing,
            self_ref=self_ref,
            self_ref_end=self_ref_end,
            security=sql.SQL(DEFINER if f.definer else "SECURITY INVOKER"),
        ),
        sql.SQL("CREATE TRIGGER {} BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
            sql.Identifier(naming.fires_last(trig)), f.table.ident, _fn(f.table, trig)
        ),
        sql.SQL(
            "CREATE TRIGGER {} BEFORE UPDATE ON {} FOR EACH ROW WHEN (NEW.{} IS DISTINCT FROM OLD.{}) "
            "EXECUTE FUNCTION {}()"
        ).format(
            sql.Identifier(naming.fires_last(trig + "_upd")),
            f.table.ident,
            column,
            column,
            _fn(f.table, trig),
        ),
        render(
            "fixup_fk_function.sql",
            function=_fn(f.table, fix),
            table=f.table.ident,
            column=column,
            shadow=shadow,
            ref_table=f.ref_table.ident,
            ref_column=sql.Identifier(parent.column),
            ref_shadow=ref_shadow,
            missing=missing,
        ),
        # Every FK, but queued only for a row marked missing, so ordinary writes pay nothing. Any
        # UPDATE, not only of the FK: a later update of another column in the same transaction makes
        # a new row version, and the fix-up must find that one (it looks rows up by ctid). It runs
        # when the FK's own checks run (end of statement for a NOT DEFERRABLE FK, which SET
        # CONSTRAINTS cannot move either; commit for a deferrable one), and before them.
        sql.SQL(
            "CREATE CONSTRAINT TRIGGER {} AFTER INSERT OR UPDATE ON {} {}FOR EACH ROW "
            "WHEN (NEW.{} = {}) EXECUTE FUNCTION {}()"
        ).format(sql.Identifier(fix), f.table.ident, _check_timing(f), shadow, missing, _fn(f.table, fix)),
    ]


def _check_timing(f: ForeignKeyConversion) -> sql.SQL:
    """When the fix-up and the prepared FK check: with the original FK, deferrable ones at commit."""
    return sql.SQL("DEFERRABLE INITIALLY DEFERRED " if f.deferrable else "NOT DEFERRABLE ")


def build_fk_move_trigger(f: ForeignKeyConversion) -> list[sql.Composed]:
    """For a child walked by ctid ranges: fill a missing shadow on any UPDATE, not only of the FK.

    An UPDATE of another column may move an unfilled row into a block the walk has passed; this
    trigger fills it on the way (the dual-write function, called when the shadow is still NULL).
    A partitioned child always gets it: any partition, also one attached later, may be walked so.
    """
    if f.batch_column != "ctid" and not f.partitioned:
        return []
    trig = naming.fk_trigger(f.table, f.column)
    return [
        sql.SQL(
            "CREATE TRIGGER {} BEFORE UPDATE ON {} FOR EACH ROW "
            "WHEN (NEW.{} IS NULL AND NEW.{} IS NOT NULL) EXECUTE FUNCTION {}()"
        ).format(
            sql.Identifier(naming.fires_last(naming.fk_move_trigger(f.table, f.column))),
            f.table.ident,
            sql.Identifier(f.shadow),
            sql.Identifier(f.column),
            _fn(f.table, trig),
        )
    ]


def build_drop_fk_triggers(f: ForeignKeyConversion) -> list[sql.Composed]:
    trig = naming.fk_trigger(f.table, f.column)
    fix = naming.fk_fixup_trigger(f.table, f.column)
    move = naming.fk_move_trigger(f.table, f.column)
    legacy_fix = naming.legacy_fk_fixup_trigger(f.table, f.column)
    names = [naming.fires_last(move), move, naming.fires_last(trig), naming.fires_last(trig + "_upd")]
    names += [fix, trig, legacy_fix]
    return [
        *(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(n), f.table.ident) for n in names),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_fn(f.table, trig)),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_fn(f.table, fix)),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_fn(f.table, legacy_fix)),
    ]


def build_enable_always_triggers(tables: list[TableRef]) -> sql.Composed:
    """The tool's triggers on these tables fire also for session_replication_role = replica writes.

    Appended after the trigger builders (start's steps, the swap), so it covers whatever they create.
    """
    names = [t.ident.as_string(None) for t in tables]
    return render("enable_always_triggers.sql", tables=sql.Literal(names))


# --- derived UUIDs (uuid_source "derived") ------------------------------------------------------

SECRET_PLACEHOLDER = sql.SQL(":'online_uuid_secret' /* 32 random bytes in hex, chosen by start */")


def derive_fn(table: TableRef, column: str) -> sql.Identifier:
    return sql.Identifier(STATE_SCHEMA, naming.derive_function(table, column))


def derive_bytes_fn(table: TableRef, column: str) -> sql.Identifier:
    return sql.Identifier(STATE_SCHEMA, naming.derive_bytes_function(table, column))


def derived_mismatch(
    shadow: sql.Composable, table: TableRef, column: str, source: sql.Composable
) -> sql.Composed:
    """`shadow` differs from derive(`source`) (`table`.`column` names the derive function).

    Compared as bytes: uuid_send(shadow) against the bytes function skips the hex text a uuid is
    parsed from, about a third of derive()'s cost per row.
    """
    return sql.SQL("pg_catalog.uuid_send({s}) IS DISTINCT FROM {b}({x})").format(
        s=shadow, b=derive_bytes_fn(table, column), x=source
    )


def derive_label(table: TableRef) -> bytes:
    """The table's name as fixed in the plan, quoted so that no two tables share a label."""
    return table.ident.as_string(None).encode()


def build_derive_function(k: KeyConversion, secret: bytes | None) -> sql.Composed:
    """uuid = first 16 bytes of sha256(secret || label || int8send(id)), version 4, variant RFC 9562.

    `secret` None renders a psql variable instead (`plan --sql`: start chooses the secret).
    """
    return render(
        "derive_function.sql",
        function=derive_fn(k.table, k.column),
        bytes_function=derive_bytes_fn(k.table, k.column),
        secret=SECRET_PLACEHOLDER if secret is None else sql.Literal(secret.hex()),
        label=sql.Literal(derive_label(k.table).hex()),
    )


def retired_sequence(k: KeyConversion) -> sql.Identifier:
    return sql.Identifier(STATE_SCHEMA, naming.retired_sequence(k.table, k.column))


def build_retired_sequence(k: KeyConversion) -> list[sql.Composed]:
    """For an application-assigned key: the sequence the retired column takes its default from."""
    seq = retired_sequence(k)
    return [
        sql.SQL("CREATE SEQUENCE IF NOT EXISTS {} AS {}").format(seq, sql.SQL(k.type)),
        sql.SQL("GRANT USAGE ON SEQUENCE {} TO PUBLIC").format(seq),
    ]


def build_retired_default(k: KeyConversion, column: str) -> list[sql.Composed]:
    """In the swap: number new rows above every id so far (one index probe for max), as a default."""
    seq = sql.Literal(retired_sequence(k).as_string(None))
    col = sql.Identifier(column)
    return [
        sql.SQL(
            "SELECT pg_catalog.setval({s}, GREATEST((SELECT pg_catalog.max({c}) FROM {t}), 0) + 1, false)"
        ).format(s=seq, c=col, t=k.table.ident),
        sql.SQL(
            "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT pg_catalog.nextval({}::pg_catalog.regclass)"
        ).format(k.table.ident, col, seq),
    ]


def build_drop_retired_default(k: KeyConversion) -> sql.Composed:
    """A revert gives the key back exactly as it was: no default."""
    return sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(
        k.table.ident, sql.Identifier(k.column)
    )


def build_drop_retired_sequence(k: KeyConversion) -> sql.Composed:
    return sql.SQL("DROP SEQUENCE IF EXISTS {}").format(retired_sequence(k))


def build_drop_derive_function(k: KeyConversion) -> list[sql.Composed]:
    return [
        sql.SQL("DROP FUNCTION IF EXISTS {}(bigint)").format(fn(k.table, k.column))
        for fn in (derive_fn, derive_bytes_fn)
    ]


def build_grant_derive_usage(plan: Plan) -> list[sql.Composed]:
    """Every role that writes a converted table runs derive() in the invoker trigger: it needs the
    schema and EXECUTE (granted explicitly, in case default privileges revoke it from PUBLIC)."""
    return [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(sql.Identifier(STATE_SCHEMA)),
        *(
            sql.SQL("GRANT EXECUTE ON FUNCTION {}(bigint) TO PUBLIC").format(fn(k.table, k.column))
            for k in plan.keys
            for fn in (derive_fn, derive_bytes_fn)
        ),
    ]


def _derive_trigger(
    table: TableRef, trig: str, shadow: str, column: str, derive: sql.Identifier
) -> list[sql.Composed]:
    return [
        render(
            "derive_shadow_function.sql",
            function=_fn(table, trig),
            shadow=sql.Identifier(shadow),
            column=sql.Identifier(column),
            derive=derive,
        ),
        sql.SQL("CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
            sql.Identifier(naming.fires_last(trig)), table.ident, _fn(table, trig)
        ),  # named to fire after the application's BEFORE triggers (naming.fires_last)
    ]


def build_derived_key_triggers(k: KeyConversion) -> list[sql.Composed]:
    """Before cutover the shadow key is always derive(key): on every insert and update."""
    trig = naming.key_trigger(k.table, k.column)
    return _derive_trigger(k.table, trig, k.shadow, k.column, derive_fn(k.table, k.column))


def build_derived_fk_triggers(plan: Plan, f: ForeignKeyConversion) -> list[sql.Composed]:
    """The shadow FK is derive_parent(fk), from the child's own row: the parent is never read."""
    parent = plan.key_for(f.ref_table)
    assert parent is not None
    trig = naming.fk_trigger(f.table, f.column)
    return _derive_trigger(f.table, trig, f.shadow, f.column, derive_fn(parent.table, parent.column))


def build_drop_column(table: TableRef, column: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(table.ident, sql.Identifier(column))


# --- cutover preparation (online) -------------------------------------------------------------


def build_unique_index(k: KeyConversion, side: Side) -> sql.Composed:
    return sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})").format(
        sql.Identifier(naming.unique_index(k.table, k.column)), k.table.ident, sql.Identifier(col_on(k, side))
    )


def build_drop_index_concurrently(table: TableRef, index: str) -> sql.Composed:
    return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(table.schema, index))


def build_not_null_check(table: TableRef, column: str, name: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID").format(
        table.ident, sql.Identifier(name), sql.Identifier(column)
    )


def build_derived_check(
    table: TableRef, shadow: str, column: str, source: tuple[TableRef, str], name: str
) -> sql.Composed:
    """NOT VALID: enforced for new rows at once; VALIDATE then proves the rows already there."""
    wrong = derived_mismatch(sql.Identifier(shadow), *source, sql.Identifier(column))
    return sql.SQL("ALTER TABLE {t} ADD CONSTRAINT {n} CHECK (NOT ({w})) NOT VALID").format(
        t=table.ident, n=sql.Identifier(name), w=wrong
    )


def build_validate(table: TableRef, constraint: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(table.ident, sql.Identifier(constraint))


def build_drop_constraint(table: TableRef, constraint: str, if_exists: bool = False) -> sql.Composed:
    q = "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}" if if_exists else "ALTER TABLE {} DROP CONSTRAINT {}"
    return sql.SQL(q).format(table.ident, sql.Identifier(constraint))


def renamed(plan: Plan, table: TableRef, column: str, side: Side) -> str:
    """A column of `table` as named on `side`: converted ones get their shadow/retired name."""
    k = plan.key_for(table)
    if k is not None and k.column == column:
        return col_on(k, side)
    for f in plan.foreign_keys:
        if f.table == table and f.column == column:
            return col_on(f, side)
    return column


def build_twin_index(
    plan: Plan, ix: IndexTwin, side: Side, table: TableRef | None = None, name: str | None = None
) -> sql.Composed:
    """The same index on the `side` columns, built concurrently (unique ones stay unique).

    A partitioned index's twin: `ix.table` gets it `ON ONLY` (invalid until every partition's twin,
    built concurrently on `table` as `name`, is attached to it).
    """
    owner = ix.root or ix.table  # the table whose columns are converted (a partition's root)
    parts: list[sql.Composable] = []
    for i, c in enumerate(ix.columns):
        piece: list[sql.Composable] = [sql.Identifier(renamed(plan, owner, c, side))]
        if ix.collations and ix.collations[i]:
            piece.append(sql.SQL("COLLATE {}").format(sql.SQL(ix.collations[i] or "")))
        if ix.opclasses and ix.opclasses[i]:
            piece.append(sql.SQL(ix.opclasses[i] or ""))
        if ix.descending and ix.descending[i]:
            piece.append(sql.SQL("DESC"))
        if ix.nulls_first and ix.descending and ix.nulls_first[i] != ix.descending[i]:
            piece.append(sql.SQL("NULLS FIRST" if ix.nulls_first[i] else "NULLS LAST"))
        parts.append(sql.SQL(" ").join(piece))
    only = ix.partitioned and table is None
    q = sql.SQL("CREATE {}INDEX {}IF NOT EXISTS {} ON {}{} USING {} ({})").format(
        sql.SQL("UNIQUE " if ix.unique else ""),
        sql.SQL("" if only else "CONCURRENTLY "),
        sql.Identifier(name or ix.twin),
        sql.SQL("ONLY " if only else ""),
        (table or ix.table).ident,
        sql.SQL(ix.method),
        sql.SQL(", ").join(parts),
    )
    if ix.include:
        q = sql.SQL("{} INCLUDE ({})").format(
            q, sql.SQL(", ").join(sql.Identifier(renamed(plan, owner, c, side)) for c in ix.include)
        )
    if ix.predicate:
        q = sql.SQL("{} WHERE {}").format(q, sql.SQL(ix.predicate))  # server-deparsed, no converted column
    return q


def build_attach_index(parent: TableRef, index: TableRef) -> sql.Composed:
    """A partition's index becomes part of its partitioned table's index (catalog only).

    Both are named by their table's schema and the index name.
    """
    return sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(parent.ident, index.ident)


def fk_actions(f: ForeignKeyConversion, side: Side) -> tuple[str, str]:
    """(on_delete, on_update) the FK on `side` gets: final ones on the uuid side, original otherwise."""
    return (f.final_on_delete or f.on_delete, f.on_update) if side == "shadow" else (f.on_delete, f.on_update)


def prepared_fk_actions(f: ForeignKeyConversion, side: Side) -> tuple[str, str]:
    """Actions of the FK built before the swap: always the original ones.

    The old and the new FK's RI action triggers fire in name order, and the names carry OIDs that
    compare as text, so either may fire first: only identical actions give the same result in both
    orders (a NO ACTION twin of an ON DELETE SET NULL FK failed parent DELETEs). Final actions that
    differ are set in the swap (NOT VALID, catalog only) and validated online after it.
    """
    return (f.on_delete, f.on_update)


def build_foreign_key(
    plan: Plan,
    f: ForeignKeyConversion,
    side: Side,
    name: str,
    actions: tuple[str, str],
    *,
    live: bool = False,
    table: TableRef | None = None,
    valid: bool = False,
) -> sql.Composed:
    """FK on the `side` columns NOT VALID (validated online afterwards); `live` uses the original names.

    Built before the swap (not `live`) its checks run when the fix-up of a shadow marked missing
    runs, and after it: NOT DEFERRABLE like a NOT DEFERRABLE original, else INITIALLY DEFERRED like
    the fix-up (`SET CONSTRAINTS ALL` moves both, naming the original neither); the swap then gives
    it the original timing (`build_fk_timing`).
    """
    parent = plan.key_for(f.ref_table)
    assert parent is not None
    child_col = f.column if live else col_on(f, side)
    parent_col = parent.column if live else col_on(parent, side)
    prepared = sql.SQL(" DEFERRABLE INITIALLY DEFERRED" if f.deferrable else "")
    deferrable = fk_timing(f) if live else prepared
    return sql.SQL(
        "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE {} ON UPDATE {}{}{}"
    ).format(
        (table or f.table).ident,
        sql.Identifier(name),
        sql.Identifier(child_col),
        f.ref_table.ident,
        sql.Identifier(parent_col),
        sql.SQL(ACTION_SQL[actions[0]]),
        sql.SQL(ACTION_SQL[actions[1]]),
        deferrable,
        # valid: a partitioned table's, which attaches its partitions' validated ones (no scan)
        sql.SQL("" if valid else " NOT VALID"),
    )


def fk_timing(f: ForeignKeyConversion) -> sql.SQL:
    """The original FK's deferrability clause (empty for NOT DEFERRABLE)."""
    if not f.deferrable:
        return sql.SQL("")
    return sql.SQL(" DEFERRABLE INITIALLY DEFERRED" if f.initially_deferred else " DEFERRABLE")


def build_fk_timing(f: ForeignKeyConversion) -> sql.Composed | None:
    """The swap gives the prepared FK the original FK's timing; None when it has it already."""
    if not f.deferrable or f.initially_deferred:
        return None
    return sql.SQL("ALTER TABLE {} ALTER CONSTRAINT {} DEFERRABLE INITIALLY IMMEDIATE").format(
        f.table.ident, sql.Identifier(f.name)
    )


# --- the swap (inside one transaction) --------------------------------------------------------


def build_set_local(setting: str, value: str) -> sql.Composed:
    """SET LOCAL of a server setting for the rest of the transaction (DDL can't take parameters)."""
    return sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(setting), sql.Literal(value))


def build_lock(tables: list[TableRef]) -> sql.Composed:
    return sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        sql.SQL(", ").join(t.ident for t in tables)
    )


def build_rename_column(table: TableRef, old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
        table.ident, sql.Identifier(old), sql.Identifier(new)
    )


def build_set_not_null(table: TableRef, column: str, on: bool = True) -> sql.Composed:
    q = (
        "ALTER TABLE {} ALTER COLUMN {} SET NOT NULL"
        if on
        else "ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL"
    )
    return sql.SQL(q).format(table.ident, sql.Identifier(column))


def build_primary_key_using(table: TableRef, constraint: str, index: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
        table.ident, sql.Identifier(constraint), sql.Identifier(index)
    )


def build_constraint_using(ix: IndexTwin) -> sql.Composed:
    kind = "PRIMARY KEY" if ix.constraint_type == "p" else "UNIQUE"
    deferrable = ""
    if ix.deferrable:
        deferrable = " DEFERRABLE INITIALLY DEFERRED" if ix.initially_deferred else " DEFERRABLE"
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} USING INDEX {}{}").format(
        ix.table.ident,
        sql.Identifier(ix.constraint or ix.name),
        sql.SQL(kind),
        sql.Identifier(ix.twin),
        sql.SQL(deferrable),
    )


def build_drop_index(table: TableRef, index: str) -> sql.Composed:
    return sql.SQL("DROP INDEX {}").format(sql.Identifier(table.schema, index))


def build_rename_index(table: TableRef, old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER INDEX {} RENAME TO {}").format(
        sql.Identifier(table.schema, old), sql.Identifier(new)
    )


def build_rename_constraint(table: TableRef, old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
        table.ident, sql.Identifier(old), sql.Identifier(new)
    )


def build_drop_view(view: TableRef) -> sql.Composed:
    return sql.SQL("DROP VIEW {}").format(view.ident)


def build_create_view(v: DependentView, definition: str) -> list[sql.Composed]:
    """Recreate a view from its captured text, with its options, owner and grants."""
    opts: sql.Composable = sql.SQL("")
    if v.options:
        opts = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(o) for o in v.options))
    stmts = [
        sql.SQL("CREATE VIEW {}{} AS {}").format(
            v.view.ident, opts, sql.SQL(definition.rstrip().rstrip(";"))
        ),
        sql.SQL("ALTER VIEW {} OWNER TO {}").format(v.view.ident, sql.Identifier(v.owner)),
    ]
    stmts += [build_grant(v.view, item) for item in v.acl]
    return stmts


_PRIVS = {
    "a": "INSERT",
    "r": "SELECT",
    "w": "UPDATE",
    "d": "DELETE",
    "D": "TRUNCATE",
    "x": "REFERENCES",
    "t": "TRIGGER",
    "m": "MAINTAIN",
}


def build_grant(view: TableRef, aclitem: str) -> sql.Composed:
    """GRANT from one aclitem text such as `app=arw/owner` (an empty grantee means PUBLIC)."""
    grantee, _, rest = aclitem.partition("=")
    privs = rest.split("/")[0]
    names = [_PRIVS[c] for c in privs if c in _PRIVS]
    who: sql.Composable = sql.SQL("PUBLIC") if not grantee else sql.Identifier(grantee.strip('"'))
    return sql.SQL("GRANT {} ON {} TO {}").format(
        sql.SQL(", ").join(sql.SQL(n) for n in names), view.ident, who
    )


# --- metadata the swap carries over (privileges, comments, defaults, triggers, rules) ------------


def build_privilege(
    rel: TableRef,
    privilege: str,
    grantee: str | None,
    grantable: bool,
    column: str | None = None,
    *,
    revoke: bool = False,
) -> sql.Composed:
    """GRANT (or REVOKE) one privilege, on a relation or one of its columns; grantee None is PUBLIC."""
    who: sql.Composable = sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee)
    what: sql.Composable = sql.SQL(privilege)  # a keyword from aclexplode, never user text
    if column is not None:
        what = sql.SQL("{} ({})").format(what, sql.Identifier(column))
    if revoke:
        return sql.SQL("REVOKE {} ON {} FROM {} CASCADE").format(what, rel.ident, who)
    option = sql.SQL(" WITH GRANT OPTION" if grantable else "")
    return sql.SQL("GRANT {} ON {} TO {}{}").format(what, rel.ident, who, option)


def build_comment(kind: str, target: sql.Composable, text: str | None) -> sql.Composed:
    """COMMENT ON <kind> <target> IS '...' (or IS NULL); kind is a fixed keyword such as COLUMN."""
    return sql.SQL("COMMENT ON {} {} IS {}").format(sql.SQL(kind), target, sql.Literal(text))


def build_column_comment(table: TableRef, column: str, text: str | None) -> sql.Composed:
    return build_comment("COLUMN", sql.Identifier(table.schema, table.name, column), text)


def build_constraint_comment(table: TableRef, constraint: str, text: str | None) -> sql.Composed:
    target = sql.SQL("{} ON {}").format(sql.Identifier(constraint), table.ident)
    return build_comment("CONSTRAINT", target, text)


def build_view_column_default(view: TableRef, column: str, expr: str) -> sql.Composed:
    """A view column's default (used by inserts through the view), as the server printed it."""
    return sql.SQL("ALTER VIEW {} ALTER COLUMN {} SET DEFAULT {}").format(
        view.ident, sql.Identifier(column), sql.SQL(expr)
    )


def build_trigger_state(rel: TableRef, trigger: str, enabled: str) -> sql.Composed | None:
    """ALTER TABLE ... ENABLE REPLICA / ALWAYS / DISABLE TRIGGER for a non-default tgenabled."""
    mode = {"D": "DISABLE", "R": "ENABLE REPLICA", "A": "ENABLE ALWAYS"}.get(enabled)
    if mode is None:
        return None
    return sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(rel.ident, sql.SQL(mode), sql.Identifier(trigger))


def build_statistics_target(table: TableRef, column: str, target: int | None) -> sql.Composed:
    """ALTER COLUMN SET STATISTICS; None puts back the default (-1)."""
    return sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
        table.ident, sql.Identifier(column), sql.SQL(str(-1 if target is None else int(target)))
    )


def build_index_options(index: TableRef, options: list[str]) -> sql.Composed:
    """ALTER INDEX ... SET (reloptions as the server printed them, e.g. fillfactor=70)."""
    return sql.SQL("ALTER INDEX {} SET ({})").format(
        index.ident, sql.SQL(", ").join(sql.SQL(o) for o in options)
    )


# --- materialized views (rebuilt on the uuid columns at finalize) -------------------------------


def build_create_matview(mv: MaterializedView, name: str) -> sql.Composed:
    """The view's plan-time query (its names are the uuid columns now) under a temporary name."""
    opts: sql.Composable = sql.SQL("")
    if mv.options:
        opts = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(o) for o in mv.options))
    return sql.SQL("CREATE MATERIALIZED VIEW {}{} AS {} WITH {}").format(
        sql.Identifier(mv.view.schema, name),
        opts,
        sql.SQL(mv.definition.rstrip().rstrip(";")),
        sql.SQL("DATA" if mv.populated else "NO DATA"),
    )


def build_matview_index(mv: MaterializedView, ix: MatViewIndex, name: str) -> sql.Composed:
    """A copy of one of its indexes, on the rebuilt view (pg_get_indexdef's text from USING on)."""
    return sql.SQL("CREATE {}INDEX {} ON {} USING {}").format(
        sql.SQL("UNIQUE " if ix.unique else ""),
        sql.Identifier(naming.matview_rebuild(ix.name)),
        sql.Identifier(mv.view.schema, name),
        sql.SQL(ix.tail),
    )


def build_drop_matview(view: TableRef, if_exists: bool = False) -> sql.Composed:
    q = "DROP MATERIALIZED VIEW IF EXISTS {}" if if_exists else "DROP MATERIALIZED VIEW {}"
    return sql.SQL(q).format(view.ident)


def build_matview_swap(mv: MaterializedView) -> list[sql.Composed]:
    """Old out, rebuilt in under the old name with the old indexes' names, owner, grants, comments."""
    v = mv.view
    temp = TableRef(v.schema, naming.matview_rebuild(v.name))
    stmts = [
        build_drop_matview(v),
        sql.SQL("ALTER MATERIALIZED VIEW {} RENAME TO {}").format(temp.ident, sql.Identifier(v.name)),
    ]
    stmts += [build_rename_index(v, naming.matview_rebuild(ix.name), ix.name) for ix in mv.indexes]
    stmts.append(sql.SQL("ALTER MATERIALIZED VIEW {} OWNER TO {}").format(v.ident, sql.Identifier(mv.owner)))
    stmts += [build_grant(v, item) for item in mv.acl if not _own_acl(item, mv.owner)]
    if mv.comment is not None:
        stmts.append(
            sql.SQL("COMMENT ON MATERIALIZED VIEW {} IS {}").format(v.ident, sql.Literal(mv.comment))
        )
    for column, text in mv.column_comments:
        stmts.append(
            sql.SQL("COMMENT ON COLUMN {} IS {}").format(
                sql.Identifier(v.schema, v.name, column), sql.Literal(text)
            )
        )
    for ix in mv.indexes:
        if ix.comment is not None:
            stmts.append(
                sql.SQL("COMMENT ON INDEX {} IS {}").format(
                    sql.Identifier(v.schema, ix.name), sql.Literal(ix.comment)
                )
            )
    return stmts


def _own_acl(aclitem: str, owner: str) -> bool:
    """The owner's own default privileges: the new owner has them already."""
    grantee = aclitem.partition("=")[0].strip('"')
    return grantee == owner and aclitem.endswith("/" + owner)
