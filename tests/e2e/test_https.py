"""HTTPS served directly: `sluice serve --tls-cert/--tls-key` with a throwaway CA, used by the openai SDK."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import openai
import trustme

from tests.harness import config_toml
from tests.processes import serve_processes, tenant_key


async def test_openai_sdk_talks_to_sluice_over_tls_with_a_private_ca(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    args = ["--tls-cert", str(cert_path), "--tls-key", str(key_path)]
    trust = ssl.create_default_context(cafile=str(ca_path))
    with serve_processes(
        tmp_path,
        config_toml(),
        database_url=database_url,
        redis_url=redis_url,
        args=args,
        scheme="https",
        verify=trust,
    ) as (proc,):
        async with httpx.AsyncClient(verify=trust) as admin_http:
            assert (await admin_http.get(f"{proc.base}/healthz")).status_code == 200
        _, _, key = await tenant_key(proc.base, verify=trust)
        async with openai.AsyncOpenAI(
            base_url=proc.base_url, api_key=key, http_client=httpx.AsyncClient(verify=trust), max_retries=0
        ) as client:
            reply = await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "tls"}])
            streamed = [
                c
                async for c in await client.chat.completions.create(
                    model="small", messages=[{"role": "user", "content": "tls"}], stream=True
                )
            ]
        assert reply.choices[0].message.content
        assert streamed
        async with httpx.AsyncClient(verify=False) as plain:  # proving plain HTTP is not served
            try:
                response = await plain.get(f"http://127.0.0.1:{proc.port}/healthz")
                assert response.status_code != 200
            except httpx.HTTPError:
                pass
