"""A connection that stalls without closing (a TCP proxy that stops forwarding): commands give up
within their timeouts with a clear message, and the state stays intact."""

from __future__ import annotations

import time

import psycopg
import pytest
from backfill_schema import ALL_ZERO, MID, Running, create_migration, create_schema, jobs, problems, scalar
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from online_uuid.errors import BackfillError
from online_uuid.settings import BackfillSettings
from support.cli import error_lines, run_cli
from support.proxy import StallingProxy
from support.schema import PUBLIC
from support.schema import create_schema as create_test_schema
from support.sessions import backends, wait_for


def _via(dsn: str, proxy: StallingProxy) -> str:
    return make_conninfo(dsn, port=str(proxy.port), connect_timeout="2")


def _port(dsn: str) -> int:
    return int(conninfo_to_dict(dsn)["port"])  # type: ignore[arg-type]


def test_a_command_on_a_stalled_path_gives_up_at_its_connect_timeout(
    dsn: str, conn: psycopg.Connection
) -> None:
    create_test_schema(conn, PUBLIC, rows=10)
    assert run_cli("start", "--dsn", dsn, "-t", "parent").returncode == 0
    with StallingProxy(_port(dsn)) as proxy:
        assert run_cli("status", "--dsn", _via(dsn, proxy)).returncode == 0  # the path works
        proxy.stall()
        t0 = time.monotonic()
        done = run_cli("status", "--dsn", _via(dsn, proxy), timeout=60)
        took = time.monotonic() - t0
    assert done.returncode == 1 and took < 15, (took, done.stderr)
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "cannot connect" in lines[0] and "timeout" in lines[0], done.stderr


@pytest.mark.slow
def test_a_backfill_whose_connection_stalls_gives_up_and_resumes(dsn: str, conn: psycopg.Connection) -> None:
    keys = create_schema(conn, parents=20_000, children=2_000, leaves=2_000)
    create_migration(conn)
    settings = BackfillSettings(
        vacuum_every_pct=0,
        initial_batch_size=500,
        max_batch_size=500,
        max_rows_per_second=4_000,
        retry_for_s=5,
        stall_timeout_s=2,
    )
    with StallingProxy(_port(dsn)) as proxy:
        run = Running(_via(dsn, proxy), settings, take_lock=True)  # its lock session stalls too
        with run:
            wait_for(
                lambda: scalar(conn, "SELECT coalesce(sum(rows_done), 0) FROM online_uuid.backfill") > 2000
            )
            proxy.stall()
            t0 = time.monotonic()
            with pytest.raises(BackfillError) as exc:
                run.join(120)
            took = time.monotonic() - t0
        # batch statement timeout (10 s) + stall timeout (2 s) + retries for 5 s (connects time out at 2 s)
        assert took < 40, took
        assert "stopped" in str(exc.value) and "online-uuid backfill" in str(exc.value)
        assert run.gauge("online_uuid_errors_total", kind="stalled") >= 1
    # the proxy is gone: the server sees the run's sessions end; nothing was half-written
    wait_for(lambda: not backends(conn, f"online-uuid/{MID}/"), 40, "the stalled sessions to end")
    done = jobs(conn)["key:App Data.Parent.select"]["rows_done"]
    filled = scalar(conn, 'SELECT count(*) FROM "App Data"."Parent" WHERE select_uuid IS NOT NULL')
    assert done == filled  # each batch's rows and its cursor committed together, or neither
    with Running(dsn, BackfillSettings(vacuum_every_pct=0), take_lock=True) as again:
        again.join(120)
    assert problems(conn) == ALL_ZERO
    assert jobs(conn)["key:App Data.Parent.select"]["rows_done"] == len(keys)
