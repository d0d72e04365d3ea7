"""The test harness itself: a real server, one database per test, a working standby."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from conftest import _drop_database
from online_uuid.embedded import EmbeddedPgError, PgServer, TempCluster, find_pg_bin
from support.clusters import StandbyCluster, add_standby

_seen_databases: list[str] = []


def test_server_answers_and_reports_its_version(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn) as conn:
        num = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
    assert num == pg_server.server_version_num
    assert num >= 100000
    print(f"server_version_num={num} bin_dir={pg_server.bin_dir}")


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_its_own_empty_database(
    conn: psycopg.Connection[tuple[object, ...]], run: int
) -> None:
    name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    assert str(name).startswith("test_")
    assert name not in _seen_databases
    _seen_databases.append(str(name))
    tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)
    conn.execute("CREATE TABLE leftover (id int)")  # must not be visible to the next run


def test_database_is_dropped_afterwards(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn) as admin:
        rows = admin.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (_seen_databases,))
        assert rows.fetchall() == []


def test_drop_terminates_leftover_sessions(pg_server: PgServer, dsn: str) -> None:
    """A test may leave sessions behind (or a killed worker): teardown must still drop."""
    name = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(dsn, autocommit=True) as lingering:
        lingering.execute("SELECT 1")
        with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
            _drop_database(admin, name)
            gone = admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
            assert gone.fetchone() == (0,)
        with pytest.raises(psycopg.OperationalError):
            lingering.execute("SELECT 1")


@pytest.mark.pg(10)
def test_pg_marker_runs_on_new_enough_server(pg_server: PgServer) -> None:
    assert pg_server.server_version_num >= 100000


@pytest.mark.pg(99)
def test_pg_marker_skips_on_older_server() -> None:
    pytest.fail("must have been skipped")


@pytest.fixture(scope="module")
def local_bin(pg_server: PgServer) -> Path:
    """The session server's binaries, else any found here (an external DSN has none)."""
    bin_dir = pg_server.bin_dir or find_pg_bin()
    if bin_dir is None:
        pytest.skip("needs local server binaries to build a primary/standby pair")
    return bin_dir


@pytest.fixture(scope="module")
def primary(local_bin: Path) -> Iterator[TempCluster]:
    with TempCluster(local_bin, settings={"application_name": "ouuid-harness"}) as cluster:
        yield cluster


def test_temp_cluster_settings_apply(primary: TempCluster) -> None:
    with psycopg.connect(primary.dsn) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SHOW wal_level").fetchone() == ("replica",)
        assert conn.execute("SHOW application_name").fetchone() != ("",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)


def check_standby(primary: TempCluster, standby: StandbyCluster) -> None:
    """Rows replicate; paused replay and a stopped standby lag, then catch up."""
    assert standby.port != primary.port
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS replicated")
        conn.execute("CREATE TABLE replicated (id int PRIMARY KEY)")
        conn.execute("INSERT INTO replicated VALUES (1)")
    standby.wait_caught_up()
    with psycopg.connect(standby.dsn) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert conn.execute("SELECT id FROM replicated").fetchall() == [(1,)]

    standby.pause_replay()
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO replicated VALUES (2)")
    assert standby.replay_lag_bytes() > 0
    with psycopg.connect(standby.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM replicated").fetchone() == (1,)
    standby.resume_replay()
    standby.wait_caught_up()
    assert standby.replay_lag_bytes() == 0

    standby.stop_server()
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO replicated VALUES (3)")
    standby.start()
    standby.wait_caught_up()
    with psycopg.connect(standby.dsn) as conn:
        assert conn.execute("SELECT id FROM replicated ORDER BY id").fetchall() == [(1,), (2,), (3,)]


def assert_no_slots_left(primary: TempCluster) -> None:
    with psycopg.connect(primary.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)


def test_standby_replicates_and_can_lag(primary: TempCluster) -> None:
    standby = add_standby(primary)
    try:
        check_standby(primary, standby)
    finally:
        standby.stop()
    assert_no_slots_left(primary)


def test_standby_without_pg_basebackup(primary: TempCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file-copy clone used with binaries that ship no pg_basebackup (the npm builds)."""
    monkeypatch.setattr(StandbyCluster, "basebackup_program", lambda self: None)
    with add_standby(primary) as standby:
        check_standby(primary, standby)
    assert_no_slots_left(primary)


def test_stopping_the_primary_stops_its_standby(local_bin: Path) -> None:
    with TempCluster(local_bin) as cluster:
        standby = add_standby(cluster)
        standby_dir = standby.data_dir.parent
        primary_dir = cluster.data_dir.parent
    assert not standby.running
    assert not standby_dir.exists()
    assert not primary_dir.exists()


def test_start_failure_explains_and_cleans_up(local_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(prefix: str, dir: str) -> str:
        made.append(Path(real_mkdtemp(prefix=prefix, dir=dir)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cluster = TempCluster(local_bin, port=taken.getsockname()[1])
        with pytest.raises(EmbeddedPgError, match=r"(?s)PostgreSQL start failed.*last lines of"):
            cluster.start()
    assert not cluster.running
    assert len(made) == 1
    assert not made[0].exists()
