"""T20 and API9: `/schema` describes exactly the routes the gateway serves, and Schemathesis, generating requests from
it for every operation (examples, coverage, fuzzing and stateful phases), finds no server error, no operation
that ignores missing or wrong credentials, and no response that contradicts its documented shape.

Not covered yet, and why: the POST bodies of `/v1` are not described in `/schema` (the hot path reads raw bytes;
`tests/api/test_body_fuzz.py` and `test_agent_api_fuzz.py` fuzz them against the OpenAI and Anthropic shapes), so
Schemathesis' `negative_data_rejection` and `positive_data_acceptance` checks would test the document, not the
gateway; and the tables-unchanged-by-rejections check is per request, which the CLI run does not expose.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import httpx
from litestar.routes import HTTPRoute

from tests.harness import ADMIN_TOKEN, Gateway

UNDOCUMENTED = {"/healthz", "/readyz", "/metrics"}
"""Operations routes kept out of `/schema` on purpose (`include_in_schema=False`)."""
CHECKS = "not_a_server_error,ignored_auth,response_schema_conformance,content_type_conformance"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


async def test_the_schema_lists_exactly_the_routes_the_gateway_serves(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.base) as client:
        document = (await client.get("/schema/openapi.json")).json()
    documented = {(path, method.upper()) for path, operations in document["paths"].items() for method in operations}
    served = {
        (route.path.replace(":str}", "}"), method)
        for route in gateway.app.app.routes
        if isinstance(route, HTTPRoute) and not route.path.startswith("/schema") and route.path not in UNDOCUMENTED
        for method in route.methods - {"OPTIONS", "HEAD"}
    }
    assert documented == served
    schemes = document["components"]["securitySchemes"]
    assert {name: scheme["scheme"] for name, scheme in schemes.items()} == {
        "TenantKey": "bearer",
        "AdminToken": "bearer",
    }
    assert document["security"] == [{"TenantKey": []}]
    admin = [op for path, ops in document["paths"].items() if path.startswith("/admin") for op in ops.values()]
    assert admin and all(op["security"] == [{"AdminToken": []}] for op in admin)


async def test_options_lists_every_method_a_path_serves(gateway: Gateway) -> None:
    """litestar 2 built the automatic OPTIONS answer from the first handler on a path (litestar#4169): `GET` and
    `DELETE /v1/responses/{id}` answered `Allow: GET, OPTIONS`, found by Schemathesis."""
    _, key = await gateway.tenant_key()
    routes = [r for r in gateway.app.app.routes if isinstance(r, HTTPRoute) and not r.path.startswith("/schema")]
    assert any(len(route.methods - {"OPTIONS", "HEAD"}) > 1 for route in routes), "some path serves several methods"
    async with httpx.AsyncClient(base_url=gateway.base) as client:
        for route in routes:
            path = re.sub(r"\{[^}]+\}", "x", route.path)
            token = ADMIN_TOKEN if path.startswith("/admin") else key
            response = await client.options(path, headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 204, path
            assert set(response.headers["allow"].split(", ")) == route.methods, path


async def test_schemathesis_finds_no_server_error_ignored_auth_or_undocumented_shape(
    gateway: Gateway, tmp_path: Path
) -> None:
    _, key = await gateway.tenant_key()
    for paths, token, examples in ((r"^/v1/", key, 60), (r"^/admin/", ADMIN_TOKEN, 25)):
        process = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS),
            "run",
            f"{gateway.base}/schema/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--include-path-regex",
            paths,
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(examples),
            "--no-color",
            cwd=tmp_path,  # its cache directory lands there, not in the checkout
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 300)
        report = output.decode(errors="replace")
        assert process.returncode == 0, report[-6000:]
        assert "generated" in report and " passed" in report, report[-2000:]
