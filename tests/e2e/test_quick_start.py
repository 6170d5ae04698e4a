"""The README's run command on a machine with no Postgres or Redis configured: embedded servers, demo key."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import free_port


@pytest.fixture(name="workdir")
def fx_workdir() -> Iterator[Path]:
    # Not tmp_path: the embedded Postgres runs as its own system user and needs to traverse the path.
    path = Path(tempfile.mkdtemp(prefix="sluice-quickstart-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _wait_for_key(process: subprocess.Popen[str], deadline: float) -> tuple[str, list[str]]:
    lines: list[str] = []
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"Its key \(shown once\): (sk-sluice-\S+)", line)
        if match:
            return match.group(1), lines
    raise AssertionError("no demo key printed:\n" + "".join(lines))


def test_serve_demo_with_embedded_servers_answers_the_openai_sdk(workdir: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["SLUICE_DATA_DIR"] = str(workdir / ".sluice")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--demo", "--port", str(port)],
        env=env,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        key, lines = _wait_for_key(process, time.monotonic() + 90)
        assert any("admin token (shown once" in line for line in lines)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        reply = client.chat.completions.create(model="small", messages=[{"role": "user", "content": "Hello!"}])
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    leftovers = subprocess.run(
        ["pgrep", "-f", str(workdir)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert not leftovers, "embedded Postgres and Valkey stop with the gateway"
