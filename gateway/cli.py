"""`sluice …`: flags → settings → serve, migrate, or admin API calls. No business logic lives here."""

from __future__ import annotations

import asyncio
import math
import os
import re
import secrets
import shutil
import signal
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import msgspec

from gateway.routing.cli import router, simulator
from gateway.settings import ConfigError, Settings, load_file_config


def _settings() -> Settings:
    try:
        return Settings.from_env(os.environ)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _secret_file(path: Path, nbytes: int) -> tuple[str, bool]:
    """Read a generated secret from `path`, or make one (mode 0600); returns (secret, newly_made)."""
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value, True


@click.group()
@click.version_option("0.1.0", prog_name="sluice")
def main() -> None:
    """Sluice: a multi-tenant gateway for AI-agent traffic."""


# --- serve -------------------------------------------------------------------------------------


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="sluice.toml (default: SLUICE_CONFIG).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="PEM certificate chain: serve HTTPS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key for --tls-cert.")
@click.option("--demo", is_flag=True, help="Create a demo tenant and key and print how to call it.")
@click.option("--no-migrate", is_flag=True, help="Do not apply database migrations at start.")
def serve(
    config_path: str | None,
    host: str,
    port: int,
    workers: int,
    tls_cert: str | None,
    tls_key: str | None,
    demo: bool,
    no_migrate: bool,
) -> None:
    """Serve the gateway (embedded Postgres and Valkey when no URLs are given)."""
    import uvicorn

    from gateway.migrations import upgrade

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    settings = _settings()
    config_file = config_path or settings.config
    from gateway.pipeline.route import check_scorers

    try:
        check_scorers(load_file_config(config_file))
    except ConfigError as exc:
        click.echo(f"sluice: {exc}", err=True)
        sys.exit(2)
    data_dir = Path(settings.data_dir).resolve()
    embedded = None
    database_url, redis_url = settings.database_url, settings.redis_url
    if database_url is None or redis_url is None:
        from gateway.embedded import EmbeddedServers

        embedded = EmbeddedServers(data_dir)
        embedded.start()
        database_url = database_url or embedded.database_url
        redis_url = redis_url or embedded.redis_url
        click.echo(f"sluice: embedded Postgres and Valkey under {data_dir}", err=True)
    try:
        admin_token = settings.admin_token
        if admin_token is None:
            if embedded is None:
                raise click.ClickException("SLUICE_ADMIN_TOKEN is required when Postgres and Redis are external")
            admin_token, made = _secret_file(data_dir / "admin_token", 32)
            if made:
                click.echo(f"sluice: admin token (shown once, kept in {data_dir / 'admin_token'}): {admin_token}")
        pepper = settings.key_pepper
        if pepper is None:
            pepper, _ = _secret_file(data_dir / "key_pepper", 32)
        if not no_migrate:
            upgrade(database_url)
        env = {
            "SLUICE_DATABASE_URL": database_url,
            "SLUICE_REDIS_URL": redis_url,
            "SLUICE_ADMIN_TOKEN": admin_token,
            "SLUICE_KEY_PEPPER": pepper,
            "SLUICE_PROCESSES": str(workers),
            "SLUICE_LEDGER_SPOOL_DIR": settings.ledger_spool_dir or str(data_dir / "spool"),
        }
        if config_file is not None:
            env["SLUICE_CONFIG"] = str(Path(config_file).resolve())
        if workers > 1:
            metrics_dir = data_dir / f"metrics-{os.getpid()}"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            env["SLUICE_METRICS_MULTIPROC_DIR"] = env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ.update(env)  # the worker processes read their settings from here
        if demo:
            scheme = "https" if tls_cert else "http"
            _print_demo(asyncio.run(_make_demo_key(database_url, pepper)), f"{scheme}://{host}:{port}/v1")
        # uvicorn re-raises the signal that stopped it once it has drained; by then shutdown is done, so
        # swallow it here and exit 0 after the embedded servers are stopped.
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda signum, frame: None)
        uvicorn.run(
            "gateway.asgi:app_from_environ",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=5,
            timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s) + 1,
            h11_max_incomplete_event_size=16 * 1024,
        )
    finally:
        if embedded is not None:
            embedded.stop()


async def _make_demo_key(database_url: str, pepper: str) -> str:
    import asyncpg

    from tenants.keys import KeyHasher
    from tenants.models import Quota
    from tenants.store import TenantStore

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        store = TenantStore(pool)
        tenant = await store.create_tenant("demo", Quota(rpm=600))
        peppers = Settings(key_pepper=pepper).peppers()
        _, issued = await store.create_key(tenant.id, KeyHasher(peppers))
        return issued.plaintext
    finally:
        await pool.close()


def _print_demo(key: str, base_url: str) -> None:
    click.echo(
        f"""
Demo tenant ready. Its key (shown once): {key}

  curl {base_url}/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "small", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{base_url}", api_key="{key}")
  reply = client.chat.completions.create(model="small", messages=[{{"role": "user", "content": "Hello!"}}])
  print(reply.choices[0].message.content)
  PY
"""
    )


# --- db, config --------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations to SLUICE_DATABASE_URL."""
    from gateway.migrations import upgrade

    settings = _settings()
    if settings.database_url is None:
        raise click.ClickException("SLUICE_DATABASE_URL is not set")
    upgrade(settings.database_url)
    click.echo("database is at the latest revision")


@main.group("config")
def config_group() -> None:
    """Configuration files."""


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate a sluice.toml offline, with the scorer artifacts it names; exit 2 naming what is invalid."""
    from gateway.pipeline.route import check_scorers

    try:
        config = load_file_config(path)
        check_scorers(config)
    except ConfigError as exc:
        click.echo(f"sluice: {exc}", err=True)
        sys.exit(2)
    click.echo(f"{path}: ok ({len(config.deployments)} deployments, {len(config.models)} models)")


# --- admin API client --------------------------------------------------------------------------


def _admin_call(method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
    import aiohttp

    settings = _settings()
    base = settings.url.rstrip("/")
    token = settings.admin_token
    if token is None:
        token_file = Path(settings.data_dir) / "admin_token"
        if not token_file.exists():
            raise click.ClickException("set SLUICE_ADMIN_TOKEN (or run next to an embedded gateway's data dir)")
        token = token_file.read_text().strip()

    async def go() -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                f"{base}{path}",
                data=msgspec.json.encode(body) if body is not None else None,
                headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            ) as resp,
        ):
            payload = await resp.read()
            if resp.status >= 400:
                raise click.ClickException(f"{resp.status}: {payload.decode(errors='replace')}")
            return msgspec.json.decode(payload) if payload else None

    try:
        return asyncio.run(go())
    except aiohttp.ClientError as exc:
        raise click.ClickException(f"cannot reach {base}: {exc}") from None


def _show(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _quota_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option("--rpm", type=int, help="Requests per minute."),
            click.option("--tpm", type=int, help="Tokens per minute."),
            click.option("--budget-usd", type=Decimal, help="USD budget per period."),
            click.option("--budget-period", type=click.Choice(["day", "month"]), default="month", show_default=True),
            click.option("--max-concurrency", type=int, help="Requests in flight at once."),
            click.option("--weight", type=int, default=1, show_default=True, help="Fair-queue weight."),
        ]
    ):
        func = option(func)
    return func


def _quota(**options: Any) -> dict[str, Any]:
    quota = {k: v for k, v in options.items() if v is not None}
    if "budget_usd" in quota:
        quota["budget_usd"] = str(quota["budget_usd"])
    return quota


@main.group()
def tenants() -> None:
    """Tenants (through the admin API at SLUICE_URL)."""


@tenants.command("create")
@click.argument("name")
@_quota_options
def tenants_create(name: str, **quota: Any) -> None:
    """Create tenant NAME with the given quota."""
    _show(_admin_call("POST", "/admin/tenants", {"name": name, "quota": _quota(**quota)}))


@tenants.command("list")
def tenants_list() -> None:
    _show(_admin_call("GET", "/admin/tenants"))


@tenants.command("quota")
@click.argument("tenant_id")
@_quota_options
def tenants_quota(tenant_id: str, **quota: Any) -> None:
    """Replace TENANT_ID's quota (options left out become unlimited)."""
    _show(_admin_call("PUT", f"/admin/tenants/{tenant_id}/quota", _quota(**quota)))


@tenants.command("usage")
@click.argument("tenant_id")
def tenants_usage(tenant_id: str) -> None:
    """TENANT_ID's usage this month, by model."""
    _show(_admin_call("GET", f"/admin/tenants/{tenant_id}/usage"))


@main.group()
def keys() -> None:
    """API keys (through the admin API at SLUICE_URL)."""


@keys.command("create")
@click.argument("tenant_id")
def keys_create(tenant_id: str) -> None:
    """Make a key for TENANT_ID; the key is printed once."""
    _show(_admin_call("POST", f"/admin/tenants/{tenant_id}/keys", {}))


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke KEY_ID on every gateway process within a second."""
    _show(_admin_call("DELETE", f"/admin/keys/{key_id}"))


_DURATION = re.compile(r"([0-9]+)([smhd]?)")
_DURATION_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


class _Duration(click.ParamType[int, Any]):
    """Seconds, from `30s`, `5m`, `24h`, `2d` or a bare number of seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _DURATION.fullmatch(str(value).strip().lower())
        if match is None:
            self.fail(
                f"`{value}` is not a duration; use seconds or a number ending in s, m, h or d (`24h`)", param, ctx
            )
        return int(match[1]) * _DURATION_SECONDS[match[2]]


@keys.command("roll")
@click.argument("key_id")
@click.option(
    "--overlap",
    type=_Duration(),
    default="24h",
    show_default=True,
    help="How long the old key keeps working (`30s`, `5m`, `24h`, or seconds); 0 ends it at once.",
)
def keys_roll(key_id: str, overlap: int) -> None:
    """Replace KEY_ID with a new key (printed once); KEY_ID expires after --overlap, on every process."""
    _show(_admin_call("POST", f"/admin/keys/{quote(key_id, safe='')}/roll", {"overlap_s": overlap}))


@main.group()
def usage() -> None:
    """Usage reports (through the admin API at SLUICE_URL)."""


@usage.command("report")
@click.argument("tenant_id")
@click.option("--since", help="ISO 8601 start (default: start of this month, UTC).")
@click.option("--until", help="ISO 8601 end (default: now).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, writable=True), help="Also write the rows as CSV.")
def usage_report(tenant_id: str, since: str | None, until: str | None, csv_path: str | None) -> None:
    """TENANT_ID's usage by day, model and route: a table, and CSV with --csv."""
    import csv

    query = "&".join(f"{name}={quote(value)}" for name, value in (("since", since), ("until", until)) if value)
    report = _admin_call("GET", f"/admin/tenants/{quote(tenant_id, safe='')}/usage" + (f"?{query}" if query else ""))
    header = ["day", "model", "route", "requests", "prompt_tokens", "completion_tokens", "cost_usd"]
    rows = [[str(group[name]) for name in header] for group in report["by_day_model_route"]]
    widths = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(header)]
    click.echo("  ".join(name.ljust(width) for name, width in zip(header, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)))
    click.echo(f"total: {report['requests']} requests, {report['cost_usd']} USD")
    if csv_path is not None:
        with open(csv_path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


main.add_command(router)
main.add_command(simulator)
