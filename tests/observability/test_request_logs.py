"""One JSON log line per request with the documented fields; never a key, no prompt text unless allowed."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec

from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN_TOKEN, config_toml
from tests.processes import ADMIN, serve_processes, tenant_key

FIELDS = {
    "request_id", "tenant", "key_prefix", "model", "served_model", "route", "cache", "prompt_tokens",
    "completion_tokens", "cost_usd", "outcome", "stages_ms", "duration_ms", "level", "timestamp",
}  # fmt: skip
SECRET_PROMPT = "the-launch-code-is-4711"


def _request_lines(text: str) -> list[dict[str, object]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{") and '"event":"request"' in line:
            lines.append(msgspec.json.decode(line))
    return lines


async def test_each_request_logs_one_json_line_without_key_or_prompt(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    async with FakeUpstream() as fake:
        with serve_processes(tmp_path, config_toml(fake.base_url), database_url=database_url, redis_url=redis_url) as (
            proc,
        ):
            tenant_id, _, key = await tenant_key(proc.base)
            headers = {"authorization": f"Bearer {key}"}
            body = {"model": "small", "messages": [{"role": "user", "content": SECRET_PROMPT}]}
            request_ids = []
            async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as client:
                for model in ("small", "fake-500", "no-such-model"):
                    response = await client.post("/chat/completions", json={**body, "model": model}, headers=headers)
                    request_ids.append(response.headers["x-request-id"])
                denied = await client.post("/chat/completions", json=body, headers={"authorization": "Bearer nope"})
                request_ids.append(denied.headers["x-request-id"])
            logs = proc.logs()
    lines = _request_lines(logs)
    assert sorted(str(line["request_id"]) for line in lines) == sorted(request_ids), "exactly one line per request"
    ok = next(line for line in lines if line["outcome"] == "ok")
    assert set(ok) >= FIELDS, FIELDS - set(ok)
    assert ok["tenant"] == tenant_id and ok["key_prefix"] == key.split("_")[0].removeprefix("sk-sluice-")
    assert {line["outcome"] for line in lines} == {"ok", "upstream_error", "invalid_request", "auth"}
    assert key not in logs and key.split("_", 1)[1] not in logs
    assert ADMIN_TOKEN not in logs
    assert SECRET_PROMPT not in logs


async def test_prompt_text_is_logged_only_for_a_tenant_whose_compliance_setting_allows_it(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    with serve_processes(tmp_path, config_toml(), database_url=database_url, redis_url=redis_url) as (proc,):
        _, _, key = await tenant_key(proc.base, log_content=True)
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as client:
            body = {"model": "small", "messages": [{"role": "user", "content": SECRET_PROMPT}]}
            response = await client.post("/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
            assert response.status_code == 200
        logs = proc.logs()
    (line,) = _request_lines(logs)
    assert SECRET_PROMPT in str(line["prompt"])
    assert line["completion"] == response.json()["choices"][0]["message"]["content"]
    assert ADMIN["authorization"] not in logs
