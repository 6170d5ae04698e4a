"""`sluice serve` as real child processes (RELIABILITY §9: processes, not threads), for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from tests.harness import ADMIN_TOKEN, PEPPER, UPSTREAM_KEY

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def tenant_key(
    base: str, name: str = "acme", *, verify: ssl.SSLContext | bool = True, **quota: object
) -> tuple[str, str, str]:
    """A tenant made through a gateway's admin API and one key for it: (tenant id, key id, key)."""
    async with httpx.AsyncClient(base_url=base, headers=ADMIN, timeout=30, verify=verify) as admin:
        tenant = (await admin.post("/admin/tenants", json={"name": name, "quota": quota})).json()
        key = (await admin.post(f"/admin/tenants/{tenant['id']}/keys", json={})).json()
    return tenant["id"], key["id"], key["key"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """One `sluice serve` child; its stdout and stderr go to files the test can read."""

    def __init__(self, workdir: Path, env: Mapping[str, str], args: list[str], port: int, scheme: str = "http") -> None:
        self.port = port
        self.base = f"{scheme}://127.0.0.1:{port}"
        self.base_url = f"{self.base}/v1"
        self.stdout_path = workdir / f"serve-{port}.out"
        self.stderr_path = workdir / f"serve-{port}.err"
        self._stdout = self.stdout_path.open("wb")
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), *args],
            env={**os.environ, **env},
            stdout=self._stdout,
            stderr=self._stderr,
            cwd=workdir,
        )

    def wait_ready(self, timeout: float = 60.0, verify: ssl.SSLContext | bool = True) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sluice serve exited {self.process.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/readyz", timeout=1, verify=verify).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"sluice serve not ready after {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        self._stdout.flush()
        self._stderr.flush()
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stdout.close()
        self._stderr.close()


@contextlib.contextmanager
def serve_processes(
    workdir: Path,
    config_toml: str,
    *,
    count: int = 1,
    database_url: str | None = None,
    redis_url: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    args: list[str] | None = None,
    scheme: str = "http",
    verify: ssl.SSLContext | bool = True,
) -> Iterator[list[ServeProcess]]:
    """`count` gateway processes sharing one Postgres and Redis (embedded when URLs are None)."""
    config_path = workdir / "sluice.toml"
    config_path.write_text(config_toml)
    env = {
        "SLUICE_CONFIG": str(config_path),
        "SLUICE_ADMIN_TOKEN": ADMIN_TOKEN,
        "SLUICE_KEY_PEPPER": PEPPER,
        "SLUICE_DATA_DIR": str(workdir / "data"),
        "TEST_UPSTREAM_KEY": UPSTREAM_KEY,
        **(extra_env or {}),
    }
    if database_url is not None:
        env["SLUICE_DATABASE_URL"] = database_url
    if redis_url is not None:
        env["SLUICE_REDIS_URL"] = redis_url
    processes: list[ServeProcess] = []
    try:
        for _ in range(count):
            proc = ServeProcess(workdir, env, args or [], free_port(), scheme)
            processes.append(proc)
            proc.wait_ready(verify=verify)
        yield processes
    finally:
        for proc in processes:
            proc.terminate()
