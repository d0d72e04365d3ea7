"""Throwaway PostgreSQL clusters for `online-uuid demo`; tests/support adds standbys for the tests."""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from .errors import OnlineUuidError

BIN_ENV_VARS = ("ONLINE_UUID_TEST_PG_BIN", "ONLINE_UUID_PG_BIN")
SYSTEM_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
DEFAULT_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_wal_senders": "5",
    "max_replication_slots": "5",
    "hot_standby": "on",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "logging_collector": "off",
}
HOW_TO_GET_BINARIES = (
    "no PostgreSQL server binaries found: install them (apt install postgresql), "
    "or set ONLINE_UUID_PG_BIN to a directory holding initdb, pg_ctl and postgres, "
    "or pip install 'online-uuid[embedded]' for pgserver"
)
_REQUIRED = ("initdb", "pg_ctl", "postgres")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_STOP_ARGS = ("-w", "-t", "60", "stop")
_SOCKET_PATH_MAX = 90  # sun_path is 108 bytes; leave room for "/.s.PGSQL.NNNNN"


class EmbeddedPgError(OnlineUuidError):
    """A throwaway cluster could not be found, created, started or stopped."""


class PgServer(Protocol):
    """What tests and the demo need from any server, embedded or external."""

    @property
    def dsn(self) -> str: ...

    def dsn_for(self, dbname: str) -> str: ...

    @property
    def server_version_num(self) -> int: ...

    @property
    def bin_dir(self) -> Path | None: ...


def is_bin_dir(path: Path) -> bool:
    """A directory is usable when it holds the three programs a cluster needs."""
    return all(os.access(path / name, os.X_OK) and (path / name).is_file() for name in _REQUIRED)


def _as_bin_dir(value: str, origin: str) -> Path:
    """An explicit choice that is wrong must fail loudly, never fall back to another version."""
    path = Path(value).expanduser()
    if path.is_file() and path.name in _REQUIRED:
        path = path.resolve().parent
    if not is_bin_dir(path):
        raise EmbeddedPgError(f"{origin}={value!r} is not a directory with initdb, pg_ctl, postgres")
    return path


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key: the numbers in the versioned part of the path, so 16 > 9.6."""
    return tuple(int(n) for n in re.findall(r"\d+", str(path)))


def _pg_config_bindir() -> Path | None:
    """`pg_config --bindir`, when pg_config exists and answers."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def find_pg_bin(explicit: str | None = None) -> Path | None:
    """Directory of initdb/pg_ctl/postgres: argument, env, PATH, pg_config, then system dirs."""
    if explicit:
        return _as_bin_dir(explicit, "bin_dir")
    for var in BIN_ENV_VARS:
        value = os.environ.get(var)
        if value:
            return _as_bin_dir(value, var)
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidate = Path(on_path).resolve().parent
        if is_bin_dir(candidate):
            return candidate
    candidate_or_none = _pg_config_bindir()
    if candidate_or_none is not None and is_bin_dir(candidate_or_none):
        return candidate_or_none
    found = [Path(match) for pattern in SYSTEM_BIN_GLOBS for match in glob.glob(pattern)]
    usable = [path for path in found if is_bin_dir(path)]
    return max(usable, key=_version_key) if usable else None


def pgserver_available() -> bool:
    """The optional `pgserver` wheel ships its own binaries; used when nothing else is found."""
    try:
        import pgserver  # noqa: F401
    except ImportError:
        return False
    return True


def free_port() -> int:
    """A port the kernel just handed out; racy, so callers retry on a bind failure."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bin_version(bin_dir: Path) -> str:
    """The version string `postgres --version` prints, e.g. "16.14"."""
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=_tool_env(bin_dir),
    ).stdout
    match = re.search(r"(\d+(?:\.\d+)?)", out)
    return match.group(1) if match else out.strip()


def _tool_env(bin_dir: Path | None, home: str | None = None) -> dict[str, str]:
    """Environment for PG programs: no PG* leaking in, C locale, bundled libs first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    if home is not None:
        env.update(HOME=home, USER="postgres", LOGNAME="postgres")
    if bin_dir is not None:
        lib = bin_dir.parent / "lib"
        if lib.is_dir() and any(lib.glob("libpq.so*")):
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p
            )
    return env


@dataclass(frozen=True)
class _RunAs:
    """initdb and postgres refuse to run as root: as root we drop to the postgres OS user."""

    uid: int
    gid: int
    home: str

    @staticmethod
    def current() -> _RunAs | None:
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise EmbeddedPgError(
                "running as root and there is no 'postgres' OS user to run PostgreSQL as: "
                "create one (useradd -r postgres) or run as a normal user"
            ) from None
        return _RunAs(pw.pw_uid, pw.pw_gid, pw.pw_dir)


def _temp_base(run_as: _RunAs | None) -> str:
    """A short path the server's user can reach (socket paths are limited to ~107 bytes)."""
    base = tempfile.gettempdir()
    if len(base) > _SOCKET_PATH_MAX - 30:
        base = "/tmp"
    if run_as is not None:
        path = Path(base).resolve()
        for part in (path, *path.parents):
            if not part.stat().st_mode & 0o001:
                return "/tmp"
    return base


def _quote_setting(name: str, value: str) -> str:
    """One postgresql.conf line; names are checked so a value cannot smuggle in another line."""
    if not _SETTING_NAME.match(name) or "\n" in value or "\r" in value:
        raise EmbeddedPgError(f"bad server setting {name!r} = {value!r}")
    return "{} = '{}'".format(name, value.replace("\\", "\\\\").replace("'", "''"))


def _log_tail(path: Path, lines: int = 40) -> str:
    """Last lines of the server log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


class TempCluster:
    """A private PostgreSQL cluster in a temp dir, on 127.0.0.1 and a free port, trust auth."""

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._bin_dir = bin_dir
        self._fixed_port = port
        self._port: int | None = port
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._tmp: Path | None = None
        self._running = False
        self._version_num: int | None = None
        self._pgserver: Any = None
        self._pgserver_dsn: str | None = None
        self._standbys: list[TempCluster] = []
        self._run_as: _RunAs | None = None

    # -- public surface -------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path | None:
        """Directory of the server programs (None only for a pgserver without a known path)."""
        return self._bin_dir

    @property
    def data_dir(self) -> Path:
        return self._require_tmp() / "data"

    @property
    def log_path(self) -> Path:
        return self._require_tmp() / "postgres.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPgError("cluster not started")
        return self._port

    @property
    def running(self) -> bool:
        return self._running

    @property
    def dsn(self) -> str:
        """libpq DSN for database "postgres" as superuser postgres, no password."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        from psycopg.conninfo import make_conninfo

        if self._pgserver_dsn is not None:
            return make_conninfo(self._pgserver_dsn, dbname=dbname)
        return make_conninfo(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, connect_timeout=10
        )

    @property
    def server_version_num(self) -> int:
        """e.g. 150020; read from the running server once."""
        if self._version_num is None:
            import psycopg

            with psycopg.connect(self.dsn) as conn:
                self._version_num = conn.info.server_version
        return self._version_num

    def start(self) -> Self:
        """Create and start the cluster; on any failure the temp dir is gone again."""
        if self._running:
            return self
        try:
            if self._tmp is None:
                self._create()
            else:
                self._pg_ctl_start()
        except BaseException:
            self._cleanup()
            raise
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stop the server (and its standbys) and delete every file it had; idempotent."""
        atexit.unregister(self.stop)
        for standby in list(self._standbys):
            standby.stop()
        self._standbys.clear()
        self._cleanup()

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server but keep its data, e.g. to let a standby fall behind; see start().

        `mode` is pg_ctl's: "fast" (sessions are terminated), "immediate" (a crash: no checkpoint,
        clients see the connection drop, the next start recovers from WAL).
        """
        if self._running and self._pgserver is None:
            if mode == "fast":
                self._pg_ctl_stop()
                return
            self._run(
                [str(self._program("pg_ctl")), "-D", str(self.data_dir), "-m", mode, *_STOP_ARGS],
                what="PostgreSQL stop",
                timeout=90,
            )
            self._running = False

    def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart -m MODE`: every session ends, the server comes back on the same port."""
        if not self._running or self._pgserver is not None:
            raise EmbeddedPgError("restart needs a started, binary-based cluster")
        self.stop_server(mode)
        self._pg_ctl_start()

    def attach(self, standby: TempCluster) -> None:
        """Stop `standby` (e.g. tests/support's StandbyCluster) when this cluster stops."""
        if not self._running or self._pgserver is not None:
            raise EmbeddedPgError("a standby needs a started, binary-based cluster")
        self._standbys.append(standby)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port}" if self._running else "stopped"
        return f"<{type(self).__name__} {self._bin_dir} {state}>"

    # -- creation ---------------------------------------------------------------------------

    def _create(self) -> None:
        if self._bin_dir is None:
            self._bin_dir = find_pg_bin()
        if self._bin_dir is None:
            if pgserver_available():
                self._start_pgserver()
                return
            raise EmbeddedPgError(HOW_TO_GET_BINARIES)
        self._run_as = _RunAs.current()
        self._tmp = Path(tempfile.mkdtemp(prefix="ouuid-pg-", dir=_temp_base(self._run_as)))
        if self._run_as is not None:
            os.chown(self._tmp, self._run_as.uid, self._run_as.gid)
        self._check_runnable()
        self._init_data_dir()
        self._start_with_port_retry()

    def _init_data_dir(self) -> None:
        self._run(
            [
                str(self._program("initdb")),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            what="initdb",
            timeout=180,
        )

    def _start_with_port_retry(self) -> None:
        """Free ports are racy: another process may grab ours before the server binds it."""
        attempts = 1 if self._fixed_port is not None else 3
        for attempt in range(attempts):
            self._port = self._fixed_port or free_port()
            self._append_conf(
                {
                    **self._settings,
                    "port": str(self._port),
                    "unix_socket_directories": str(self._require_tmp()),
                }
            )
            try:
                self._pg_ctl_start()
                return
            except EmbeddedPgError:
                if attempt + 1 == attempts or "could not bind" not in _log_tail(self.log_path):
                    raise

    def _append_conf(self, settings: Mapping[str, str]) -> None:
        """Later lines win in postgresql.conf, so appending is enough to override."""
        lines = [_quote_setting(k, v) for k, v in settings.items()]
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# online-uuid TempCluster\n" + "\n".join(lines) + "\n")

    def _start_pgserver(self) -> None:
        """Fallback on pgserver's bundled binaries; its server listens where it chooses."""
        import pgserver
        from psycopg.conninfo import conninfo_to_dict

        self._tmp = Path(tempfile.mkdtemp(prefix="ouuid-pgserver-"))
        server = pgserver.get_server(str(self._tmp / "pgdata"), cleanup_mode="stop")
        self._pgserver = server
        self._pgserver_dsn = str(server.get_uri())
        port = conninfo_to_dict(self._pgserver_dsn).get("port")
        self._port = int(str(port)) if port else 5432
        with contextlib.suppress(ImportError, AttributeError):
            from pgserver import _commands

            self._bin_dir = Path(_commands.POSTGRES_BIN_PATH)
        self._running = True
        self._apply_settings_live()

    def _apply_settings_live(self) -> None:
        """pgserver starts its own server: settings go in via ALTER SYSTEM (reloadable ones)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for name, value in self._settings.items():
                with contextlib.suppress(psycopg.Error):
                    conn.execute(
                        sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
                    )
            conn.execute("SELECT pg_reload_conf()")

    # -- process control --------------------------------------------------------------------

    def _program(self, name: str) -> Path:
        if self._bin_dir is None:
            raise EmbeddedPgError("no PostgreSQL binaries")
        return self._bin_dir / name

    def _require_tmp(self) -> Path:
        if self._tmp is None:
            raise EmbeddedPgError("cluster not started")
        return self._tmp

    def _run(self, args: list[str], *, what: str, timeout: float) -> str:
        """Run a PG program as the server's user; failures carry its output and the log tail."""
        run_as = self._run_as
        try:
            done = subprocess.run(
                args,
                cwd=self._require_tmp(),
                env=_tool_env(self._bin_dir, run_as.home if run_as else None),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedPgError(f"{what} could not run ({args[0]}): {exc}") from exc
        if done.returncode != 0:
            raise EmbeddedPgError(
                f"{what} failed (exit {done.returncode}, {self._bin_dir}):\n"
                f"{(done.stdout + done.stderr).strip()}\n"
                f"--- last lines of {self._tmp and self.log_path} ---\n{_log_tail(self.log_path)}"
            )
        return done.stdout

    def _check_runnable(self) -> None:
        """Fail early and clearly when the postgres OS user cannot reach the binaries."""
        try:
            self._run([str(self._program("initdb")), "--version"], what="initdb", timeout=30)
        except EmbeddedPgError as exc:
            who = "the postgres OS user" if self._run_as else "this user"
            raise EmbeddedPgError(f"{who} cannot run {self._bin_dir}/initdb: {exc}") from exc

    def _pg_ctl_start(self) -> None:
        self._run(
            [
                str(self._program("pg_ctl")),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                "120",
                "start",
            ],
            what="PostgreSQL start",
            timeout=150,
        )
        self._running = True

    def _pg_ctl_stop(self) -> None:
        """Fast shutdown, then immediate, then SIGKILL: a stuck server must not leak."""
        for mode in ("fast", "immediate"):
            try:
                self._run(
                    [str(self._program("pg_ctl")), "-D", str(self.data_dir), "-m", mode, *_STOP_ARGS],
                    what="PostgreSQL stop",
                    timeout=90,
                )
                break
            except EmbeddedPgError:
                continue
        else:
            self._kill_postmaster()
        self._running = False

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    def _cleanup(self) -> None:
        """Stop whatever runs and remove the temp dir; never raises."""
        if self._pgserver is not None:
            with contextlib.suppress(Exception):
                self._pgserver.cleanup()
            self._pgserver = None
            self._pgserver_dsn = None
        elif self._tmp is not None and (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._pg_ctl_stop()
        self._running = False
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _query(self, query: str, params: tuple[object, ...] = ()) -> Any:
        """First column of the first row, on database postgres."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]
