"""Every object name the tool derives, in one place, each checked against PostgreSQL's 63-byte limit."""

from __future__ import annotations

import hashlib

from .model import TableRef

NAMEDATALEN = 63  # bytes PostgreSQL keeps of an identifier
STATE_SCHEMA = "online_uuid"
SHADOW_SUFFIX = "_uuid"
RETIRED_SUFFIX = "_int"


def fit(name: str, salt: str = "") -> str:
    """Return `name` if it fits in 63 bytes, else a truncation ending in a short stable hash.

    PostgreSQL silently truncates long identifiers, which would make two derived names collide
    or make a later lookup miss; we shorten deterministically instead.
    """
    if len(name.encode()) <= NAMEDATALEN:
        return name
    digest = hashlib.sha1((salt + name).encode()).hexdigest()[:8]
    head = name.encode()[: NAMEDATALEN - 9].decode("utf-8", errors="ignore")
    return f"{head}_{digest}"


def shadow_column(column: str) -> str:
    return fit(column + SHADOW_SUFFIX)


def retired_column(column: str) -> str:
    return fit(column + RETIRED_SUFFIX)


def _object(table: TableRef, column: str, tag: str) -> str:
    return fit(f"ou_{table.name}_{column}_{tag}", salt=f"{table.schema}.{table.name}.{column}")


def key_trigger(table: TableRef, column: str) -> str:
    """Trigger that keeps a key's shadow immutable once set (and filled on insert)."""
    return _object(table, column, "key")


def fk_trigger(table: TableRef, column: str) -> str:
    """Trigger that keeps a foreign key's shadow equal to the referenced row's other key."""
    return _object(table, column, "fk")


def fk_fixup_trigger(table: TableRef, column: str) -> str:
    """Constraint trigger that fills a shadow FK whose parent the BEFORE trigger could not see.

    Upper-case `OU_`: triggers of one event fire in byte order of their names, and this one must fire
    before the RI checks (`RI_ConstraintTrigger_c_<oid>`) of the FK built on the shadow column.
    """
    return fit(f"OU_{table.name}_{column}_fkfix", salt=f"{table.schema}.{table.name}.{column}")


# Our BEFORE ROW triggers must see the row as every application trigger left it. Triggers of one
# event fire in byte order of their names, so theirs begin with `~`, which sorts after letters,
# digits and `_`; `plan` warns about any application BEFORE trigger that still sorts after ours.
FIRES_LAST = "~"


def fires_last(trigger: str) -> str:
    """The name a BEFORE ROW trigger of ours gets in the catalog (its function keeps `trigger`)."""
    return fit(FIRES_LAST + trigger)


def legacy_fk_fixup_trigger(table: TableRef, column: str) -> str:
    """The fix-up trigger's name in earlier versions (dropped too, so their migrations roll back)."""
    return _object(table, column, "fkfix")


def fk_move_trigger(table: TableRef, column: str) -> str:
    """Trigger that fills a shadow FK on any update of a child walked by ctid (a moved row)."""
    return _object(table, column, "fkmv")


def function_name(table: TableRef, trigger: str) -> str:
    """Trigger functions live in the state schema, never in the user's schemas.

    They all share that one schema, so the table's schema is part of the name (`a.t` and `b.t`
    must not share a function).
    """
    return fit(f"{table.schema}_{trigger}_fn", salt=f"{table.schema}.{table.name}")


def derive_function(table: TableRef, column: str) -> str:
    """The function that derives a pre-cutover UUID of `table` from its integer key (derived mode)."""
    salt = f"{table.schema}.{table.name}.{column}"
    return fit(f"{table.schema}_ou_{table.name}_{column}_derive", salt=salt)


def derive_bytes_function(table: TableRef, column: str) -> str:
    """derive()'s 16 bytes as bytea: what the invariant's CHECK compares, with no text parse."""
    salt = f"{table.schema}.{table.name}.{column}"
    return fit(f"{table.schema}_ou_{table.name}_{column}_derive_bytes", salt=salt)


def retired_sequence(table: TableRef, column: str) -> str:
    """Sequence (in the state schema) that numbers the retired column of an application-assigned key
    while the migration is cut over, so rows the application inserts then still get an integer."""
    salt = f"{table.schema}.{table.name}.{column}"
    return fit(f"{table.schema}_ou_{table.name}_{column}_int_seq", salt=salt)


def unique_index(table: TableRef, column: str) -> str:
    """Unique index on a key's shadow column, built concurrently; becomes the primary key."""
    return _object(table, column, "uq")


def not_null_check(table: TableRef, column: str) -> str:
    return _object(table, column, "nn")


def not_null_name(table: TableRef, column: str) -> str:
    """The name PostgreSQL 18 gives a column's NOT NULL constraint."""
    return fit(f"{table.name}_{column}_not_null")


def derived_check(table: TableRef, column: str) -> str:
    """CHECK (shadow = derive(column)) that holds from the end of the backfill to the swap (derived mode)."""
    return _object(table, column, "dv")


def twin_index(index: str) -> str:
    return fit(f"{index}_ou", salt=index)


def shadow_fk(constraint: str) -> str:
    return fit(f"{constraint}_ou", salt=constraint)


def advisory_key(migration: str) -> str:
    """Text hashed by hashtext() for the migration's advisory lock."""
    return f"{STATE_SCHEMA}:{migration}"


def application_name(migration: str, role: str) -> str:
    """application_name so DBAs can spot and cancel our sessions in pg_stat_activity (64 bytes max)."""
    return f"online-uuid/{migration}/{role}"[:63]


def matview_rebuild(name: str) -> str:
    """Temporary name of a materialized view rebuilt at finalize, until it is swapped in."""
    return fit(f"{name}_ou_new", salt=name)
