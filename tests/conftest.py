"""Shared fixtures: one PostgreSQL server per session, a fresh database per test, marker rules."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from online_uuid.embedded import PgServer, TempCluster, find_pg_bin, pgserver_available

TESTS_DIR = Path(__file__).resolve().parent
INTEGRATION_DIRS = (TESTS_DIR / "integration", TESTS_DIR / "e2e")
NO_SERVER_HELP = (
    "no PostgreSQL server for the integration tests: install server binaries "
    "(apt install postgresql), or set ONLINE_UUID_PG_BIN to a bin dir with initdb/pg_ctl/postgres, "
    "or ONLINE_UUID_TEST_DSN to a server where this user may CREATE DATABASE"
)


@dataclass(frozen=True)
class ExternalServer:
    """A server someone else runs (ONLINE_UUID_TEST_DSN or a container); no binaries at hand."""

    dsn: str
    server_version_num: int
    bin_dir: Path | None = None

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.dsn, dbname=dbname)


def _external(dsn: str) -> ExternalServer:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        return ExternalServer(dsn=dsn, server_version_num=conn.info.server_version)


def _docker_answers() -> bool:
    """testcontainers needs a live engine; a docker CLI alone is not enough."""
    try:
        import docker  # type: ignore[import-untyped,import-not-found,unused-ignore]

        client = docker.from_env()
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure means "no engine here"
        return False


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """ONLINE_UUID_TEST_DSN, else a throwaway cluster, else a container, else skip."""
    external_dsn = os.environ.get("ONLINE_UUID_TEST_DSN")
    if external_dsn:
        yield _external(external_dsn)
        return
    if find_pg_bin() is not None or pgserver_available():
        with TempCluster() as cluster:
            yield cluster
        return
    try:
        from testcontainers.postgres import PostgresContainer
    except ImportError:
        pytest.skip(NO_SERVER_HELP)
    if not _docker_answers():
        pytest.skip(NO_SERVER_HELP + " (testcontainers is installed but no Docker engine answers)")
    with PostgresContainer("postgres:16-alpine", username="postgres", password="postgres") as pg:
        dsn = make_conninfo(
            host=pg.get_container_host_ip(),
            port=int(pg.get_exposed_port(5432)),
            user="postgres",
            password="postgres",
            dbname="postgres",
        )
        yield _external(dsn)


@pytest.fixture
def pg_bin(pg_server: PgServer) -> Path:
    """Directory of the server's programs (pg_dump, pg_basebackup...) for tests that shell out."""
    if pg_server.bin_dir is None:
        pytest.skip("the test server has no local binaries (external DSN or container)")
    if not (pg_server.bin_dir / "pg_dump").exists():
        pytest.skip(f"no pg_dump next to the server in {pg_server.bin_dir} (the npm builds ship none)")
    return pg_server.bin_dir


def _drop_database(admin: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    """Terminate leftovers first: a test may leave sessions (or a killed worker) behind."""
    ident = sql.Identifier(name)
    if admin.info.server_version >= 130000:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        return
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))


@pytest.fixture
def dsn(pg_server: PgServer) -> Iterator[str]:
    """A brand-new empty database for this test; dropped afterwards, whatever the test did."""
    name = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield pg_server.dsn_for(name)
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
            _drop_database(admin, name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """Autocommit connection to this test's database."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture(autouse=True)
def _pg_version_gate(request: pytest.FixtureRequest) -> None:
    """@pytest.mark.pg(15) skips on servers older than 15 (the server starts only if needed)."""
    marker = request.node.get_closest_marker("pg")
    if marker is None:
        return
    wanted = int(marker.args[0])
    wanted_num = wanted * 10000 if wanted < 1000 else wanted
    server: PgServer = request.getfixturevalue("pg_server")
    if server.server_version_num < wanted_num:
        pytest.skip(f"needs PostgreSQL >= {wanted}, server is {server.server_version_num}")


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark integration tests by folder; leave out slow tests unless -m or ONLINE_UUID_SLOW=1."""
    for item in items:
        if _under(Path(item.path).resolve(), INTEGRATION_DIRS):
            item.add_marker(pytest.mark.integration)
    if config.getoption("markexpr") or os.environ.get("ONLINE_UUID_SLOW") == "1":
        return
    kept = [item for item in items if item.get_closest_marker("slow") is None]
    deselected = [item for item in items if item.get_closest_marker("slow") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
