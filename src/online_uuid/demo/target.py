"""Where the demo runs: a throwaway cluster, or a scratch schema of an existing database."""

from __future__ import annotations

import atexit
import contextlib
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from rich.console import Console

from .. import api, state
from ..embedded import TempCluster, find_pg_bin
from ..model import Phase
from ..naming import STATE_SCHEMA
from ..settings import redact
from .schema import drop_schema

DATABASE = "online_uuid_demo"
SCHEMA_PREFIX = "online_uuid_demo_"


@dataclass(frozen=True)
class Target:
    """The database the demo works in, the schema of its five tables and its migration's name."""

    dsn: str
    schema: str
    migration: str


@contextmanager
def demo_target(dsn: str | None, keep: bool, console: Console) -> Iterator[Target]:
    """Yield a place to run the demo; afterwards remove it, or (keep) say how to reach it."""
    run_id = secrets.token_hex(4)
    if dsn is None:
        with _throwaway(run_id, keep, console) as target:
            yield target
    else:
        with _scratch_schema(dsn, run_id, keep, console) as target:
            yield target


@contextmanager
def _throwaway(run_id: str, keep: bool, console: Console) -> Iterator[Target]:
    local = find_pg_bin()
    origin = f"local binaries in {local}" if local else "the embedded server of the pgserver package"
    console.print(f"Starting a throwaway PostgreSQL from {origin} ...")
    cluster = TempCluster()
    with warnings.catch_warnings():
        # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset (containers, sudo): harmless.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        cluster.start()
    try:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
            version = conn.info.parameter_status("server_version") or "?"
        console.print(f"PostgreSQL {version} is up; the demo uses database {DATABASE}, schema public.")
        yield Target(cluster.dsn_for(DATABASE), "public", f"demo_{run_id}")
    finally:
        if keep:
            _leave_running(cluster, console)
        else:
            cluster.stop()
            console.print("Throwaway server stopped and deleted.")


def _leave_running(cluster: TempCluster, console: Console) -> None:
    """--keep: nothing stops the server at exit; print how to connect and how to stop it."""
    atexit.unregister(cluster.stop)
    pgserver = getattr(cluster, "_pgserver", None)  # TempCluster has no public "detach" yet
    data_dir = cluster.data_dir
    if pgserver is not None:
        pgserver.cleanup_mode = None  # pgserver's own atexit hook would stop it otherwise
        data_dir = Path(pgserver.pgdata)
    stop = f"kill -INT $(head -1 {data_dir}/postmaster.pid) && rm -rf {data_dir.parent}"
    text = f"Kept the server running. Explore it with:\n  psql '{cluster.dsn_for(DATABASE)}'\n"
    text += f"Stop and delete it with:\n  {stop}"
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _scratch_schema(dsn: str, run_id: str, keep: bool, console: Console) -> Iterator[Target]:
    target = Target(dsn, SCHEMA_PREFIX + run_id, f"demo_{run_id}")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        had_state = state.schema_exists(conn)
        version = conn.info.parameter_status("server_version") or "?"
    console.print(f"Using PostgreSQL {version} at {redact(dsn)}, in a new schema {target.schema}.")
    try:
        yield target
    finally:
        if keep:
            console.print(
                f"Kept schema {target.schema} (migration {target.migration}) in {redact(dsn)}; "
                f"drop it with: DROP SCHEMA {target.schema} CASCADE",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        else:
            _drop_scratch(target, had_state)
            console.print(f"Dropped schema {target.schema}.")


def _drop_scratch(target: Target, had_state: bool) -> None:
    """Undo an unfinished migration, drop the tables, and forget the migration's state."""
    with psycopg.connect(target.dsn, autocommit=True, connect_timeout=10) as conn:
        if not state.schema_exists(conn):
            drop_schema(conn, target.schema, cascade=True)
            return
        migrations = {m.id: m.phase for m in state.list_migrations(conn)}
        if migrations.get(target.migration, Phase.FINALIZED) not in (Phase.FINALIZED, Phase.ROLLED_BACK):
            # Trigger functions live in the state schema, outside the scratch schema: remove them.
            with contextlib.suppress(Exception):
                api.rollback(target.dsn, target.migration)
        drop_schema(conn, target.schema, cascade=True)
        state_schema = sql.Identifier(STATE_SCHEMA)
        conn.execute(
            sql.SQL("DELETE FROM {}.migrations WHERE id = %s").format(state_schema), (target.migration,)
        )
        if not had_state and set(migrations) <= {target.migration}:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(state_schema))
