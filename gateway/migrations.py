"""Schema migrations: `alembic upgrade head` from code, and creating a database that may not exist yet.

`upgrade` is synchronous because the repo's `alembic/env.py` calls `asyncio.run`; from a running event
loop call it as `await asyncio.to_thread(upgrade, url)`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

ALEMBIC_DIR = Path(__file__).resolve().parents[1] / "alembic"
"""The repo's top-level `alembic/` directory (env.py and versions/)."""


def sqlalchemy_url(database_url: str) -> str:
    """`database_url` with the `postgresql+asyncpg` driver, as `alembic/env.py` expects."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {url.render_as_string(hide_password=True)}")
    return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(database_url: str) -> str:
    """`database_url` as a plain `postgresql://` DSN, which is all asyncpg accepts."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {url.render_as_string(hide_password=True)}")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(database_url: str, name: str) -> str:
    """The same server and credentials as `database_url`, connecting to database `name`."""
    return make_url(database_url).set(database=name).render_as_string(hide_password=False)


def upgrade(database_url: str) -> None:
    """Migrate the database at `database_url` to the newest revision (`alembic upgrade head`).

    Safe to run from several processes at once: env.py serialises migrators on an advisory lock.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        # env.py's asyncio.run would fail with a less helpful message deep inside alembic.
        raise RuntimeError("upgrade() blocks and runs its own event loop: use `await asyncio.to_thread(upgrade, url)`")
    from alembic import command
    from alembic import config as alembic_config

    config = alembic_config.Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["database_url"] = sqlalchemy_url(database_url)
    command.upgrade(config, "head")


async def ensure_database(server_url: str, name: str) -> bool:
    """Create database `name` on the server at `server_url` unless it exists; True if it was created.

    `server_url` names the maintenance database to connect to (usually `postgres`); racing creators
    are fine, the loser sees the database as existing.
    """
    connection = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        if await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            # CREATE DATABASE takes no parameters; the name is quoted as an identifier instead.
            await connection.execute(f"CREATE DATABASE {quote_ident(name)}")
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await connection.close()


def quote_ident(name: str) -> str:
    """`name` as a PostgreSQL identifier literal (double quotes, embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'
