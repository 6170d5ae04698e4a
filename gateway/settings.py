"""Configuration: `Settings` from `SLUICE_*` environment variables and `FileConfig` from `sluice.toml`.

The environment is read here and nowhere else (`Settings.from_env` takes the mapping), and the file
is decoded once into frozen Structs; `create_app` turns both into runtime objects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal, TypeAlias

import msgspec

from cache import CachePolicy

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]


class Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ConfigError(Exception):
    """A configuration file or variable is invalid; the message names the file, path and reason."""


# --- sluice.toml ------------------------------------------------------------------------------


class Timeouts(Base, frozen=True):
    connect_s: PositiveFloat = 5.0
    """Seconds to open a connection to the upstream."""
    first_byte_s: PositiveFloat = 60.0
    """Seconds until the upstream's response headers arrive."""
    idle_s: PositiveFloat = 60.0
    """Seconds the upstream may stay silent mid-body (streams included) before the call is abandoned."""


class SimulatorOptions(Base, frozen=True):
    latency_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Time before the first token."""
    token_interval_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Time between streamed tokens."""
    completion_tokens: PositiveInt = 16
    """Tokens in each answer (fewer if `max_tokens` is smaller)."""
    context_window: PositiveInt = 128_000
    """Largest prompt + completion the simulated model accepts."""
    tier: Literal["small", "large"] = "small"
    """Accuracy profile (docs/routing.md): `small` answers 60% of prompts right, `large` 90%; right answers equal
    the prompt's reference answer, wrong ones differ, and logprobs are less confident where the tier is wrong."""


class HttpDeployment(Base, frozen=True):
    """An upstream reached over HTTP; `kind` says which API it speaks."""

    name: Name
    """Deployment name, referenced by models and the price table."""
    base_url: str
    """Base URL up to and including `/v1`, e.g. `https://api.openai.com/v1`."""
    model: str
    """Model name sent upstream."""
    api_key_env: str | None = None
    """Environment variable holding the upstream API key (the key itself never goes in this file)."""
    max_concurrency: PositiveInt = 256
    """Calls in flight to this deployment from one gateway process (its HTTP connection pool)."""
    capacity: PositiveInt | None = None
    """Concurrent calls across all gateway processes (held in Redis); when full, requests wait in the fair
    queue. Unset: no queue and no extra round trip."""
    timeouts: Timeouts = Timeouts()
    max_context_tokens: PositiveInt = 128_000
    """Largest `max_tokens` a request may ask of this deployment."""


class OpenAIDeployment(HttpDeployment, frozen=True, tag="openai", tag_field="kind"):
    """An OpenAI-compatible upstream (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp, TGI, Groq, …)."""


class AnthropicDeployment(HttpDeployment, frozen=True, tag="anthropic", tag_field="kind"):
    """An upstream that speaks Anthropic's Messages API (`base_url` like `https://api.anthropic.com/v1`)."""

    default_max_tokens: PositiveInt = 4096
    """Completion limit sent when a request sets none (Anthropic requires one)."""


class SimulatorDeployment(Base, frozen=True, tag="simulator", tag_field="kind"):
    """The built-in simulator: a deterministic model stand-in for demos, benchmarks and evaluation."""

    name: Name
    model: str
    """Model name the simulator reports (`small`, `large`, …)."""
    max_concurrency: PositiveInt = 1024
    capacity: PositiveInt | None = None
    simulator: SimulatorOptions = SimulatorOptions()
    max_context_tokens: PositiveInt = 128_000


Deployment: TypeAlias = OpenAIDeployment | AnthropicDeployment | SimulatorDeployment


class FixedRoute(Base, frozen=True, tag="fixed", tag_field="policy"):
    """Every call goes to one deployment."""

    deployment: Name


class FallbackRoute(Base, frozen=True, tag="fallback", tag_field="policy"):
    """Deployments in order: the next one is tried after a 429, a 5xx, a timeout or a refused connection."""

    deployments: Annotated[list[Name], msgspec.Meta(min_length=1, max_length=16)]
    latency_budget_s: PositiveFloat = 60.0
    """Time from the request's arrival after which no further deployment is tried."""


Share = Annotated[float, msgspec.Meta(ge=0, le=1)]


class CascadeRoute(Base, frozen=True, tag="cascade", tag_field="policy"):
    """The small deployment first (asked for logprobs); its answer is returned when its confidence reaches
    `threshold`, else the large deployment answers (docs/routing.md)."""

    small: Name
    large: Name
    threshold: Share = 0.6
    """Confidence (geometric-mean token probability) at or above which the small answer is returned; with
    `scorer`, the combined score instead."""
    scorer: str | None = None
    """A scorer artifact trained with a cascade combiner: the decision then combines the answer's confidence
    with the scorer's prior for the prompt (docs/routing.md). Relative paths: to the configuration file."""
    remember_escalations_s: Annotated[float, msgspec.Meta(ge=0)] = 86_400.0
    """How long an escalated prompt goes straight to the large deployment (0: never remembered)."""


class ScoredRoute(Base, frozen=True, tag="scored", tag_field="policy"):
    """A scorer trained by `sluice router train` picks the deployment from the prompt, before any call."""

    small: Name
    large: Name
    scorer: str
    """Path of the scorer artifact (relative paths: to the configuration file)."""
    threshold: Share = 0.5
    """Predicted chance that the small deployment will do, below which the large one is called."""


Route: TypeAlias = FixedRoute | FallbackRoute | CascadeRoute | ScoredRoute


def route_deployments(route: Route) -> list[str]:
    """The deployments a route may call, in the order it tries them."""
    if isinstance(route, FixedRoute):
        return [route.deployment]
    if isinstance(route, FallbackRoute):
        return list(route.deployments)
    return [route.small, route.large]


class ModelAlias(Base, frozen=True):
    """A model name tenants call, the route that serves it, and its response cache."""

    name: Name
    route: Route
    cache: CachePolicy = CachePolicy(enabled=False)
    """The decision cache for this name (docs/cache.md); off unless `enabled = true`."""


class Price(Base, frozen=True):
    """USD per one million tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    """Price of prompt tokens the upstream served from its prompt cache; defaults to `input`."""


class Limits(Base, frozen=True):
    max_body_bytes: PositiveInt = 10_000_000
    """Largest request body accepted (413 above it)."""
    max_messages: PositiveInt = 2048
    max_tools: PositiveInt = 128
    max_n: PositiveInt = 8
    default_max_tokens: PositiveInt = 4096
    """Completion tokens assumed for a request that sets no `max_tokens` (for reservations)."""


class FileConfig(Base, frozen=True):
    """The whole of `sluice.toml`."""

    deployments: list[Deployment]
    models: list[ModelAlias]
    prices: dict[str, Price] = {}
    """Price per deployment name; a deployment without a price costs 0."""
    limits: Limits = Limits()


# --- environment ------------------------------------------------------------------------------


class Settings(Base, frozen=True):
    """Process settings from `SLUICE_*` variables (DESIGN §4)."""

    database_url: str | None = None
    """`SLUICE_DATABASE_URL`: `postgresql://…`; unset → embedded Postgres."""
    redis_url: str | None = None
    """`SLUICE_REDIS_URL`: `redis://…`; unset → embedded Valkey."""
    admin_token: str | None = None
    """`SLUICE_ADMIN_TOKEN`: bearer token for `/admin/*`."""
    config: str | None = None
    """`SLUICE_CONFIG`: path of `sluice.toml`; unset → the bundled example (simulator models)."""
    data_dir: str = ".sluice"
    """`SLUICE_DATA_DIR`: where embedded servers and generated secrets live."""
    key_pepper: str | None = None
    """`SLUICE_KEY_PEPPER`: HMAC pepper for key digests, `secret` or `v:secret[,v:secret…]` (highest v current)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """`SLUICE_LOG_LEVEL`."""
    tracing: Literal["off", "otlp", "console"] = "off"
    """`SLUICE_TRACING`: OpenTelemetry spans per request and stage; `otlp` exports to `OTEL_EXPORTER_OTLP_*`."""
    log_sample_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    """`SLUICE_LOG_SAMPLE_RATE`: share of successful requests that get a log line (errors always do)."""
    auth_cache_ttl_s: PositiveFloat = 30.0
    """`SLUICE_AUTH_CACHE_TTL_S`: how long a cached key is trusted without re-reading Postgres."""
    ledger_spool_dir: str | None = None
    """`SLUICE_LEDGER_SPOOL_DIR`: usage records are appended here until Postgres has them, and replayed at
    start if a process died first; `sluice serve` sets `<data dir>/spool`. Unset: memory only."""
    ledger_flush_interval_s: PositiveFloat = 0.2
    """`SLUICE_LEDGER_FLUSH_INTERVAL_S`: how often usage records are written in one batch."""
    responses_retention_days: PositiveFloat = 30.0
    """`SLUICE_RESPONSES_RETENTION_DAYS`: how long the Responses API keeps stored responses (`store`)."""
    drain_timeout_s: PositiveFloat = 30.0
    """`SLUICE_DRAIN_TIMEOUT_S`: how long SIGTERM waits for in-flight requests."""
    drain_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    """`SLUICE_DRAIN_GRACE_S`: after SIGTERM, how long `/readyz` answers 503 before the listener closes."""
    admission_timeout_ms: PositiveFloat = 100.0
    """`SLUICE_ADMISSION_TIMEOUT_MS`: how long admission waits for Redis before failing open onto the local
    limiter (RELIABILITY §6.1 starts at 50 ms; on 2-core hosts event-loop stalls alone reach that under load)."""
    reservation_ttl_s: PositiveFloat = 600.0
    """`SLUICE_RESERVATION_TTL_S`: after this long an unsettled reservation (a crashed process's) expires on its own."""
    metrics_max_tenants: Annotated[int, msgspec.Meta(ge=0)] = 100
    """`SLUICE_METRICS_MAX_TENANTS`: tenants per process that get their own metric label (the rest: `other`)."""
    metrics_tenants: str = ""
    """`SLUICE_METRICS_TENANTS`: comma-separated tenant ids that always get their own metric label."""
    url: str = "http://127.0.0.1:8080"
    """`SLUICE_URL`: the gateway the CLI's admin commands talk to."""
    processes: PositiveInt = 1
    """`SLUICE_PROCESSES`: gateway processes sharing the quotas (sizes the local fallback limiter); set by `serve`."""
    metrics_multiproc_dir: str | None = None
    """`SLUICE_METRICS_MULTIPROC_DIR`: shared metrics directory when `serve --workers N` runs several processes."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        values = {
            name[len("SLUICE_") :].lower(): value
            for name, value in environ.items()
            if name.startswith("SLUICE_") and value != "" and name[len("SLUICE_") :].lower() in cls.__struct_fields__
        }
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"environment: {exc}") from None

    def peppers(self) -> dict[int, bytes]:
        if self.key_pepper is None:
            return {}
        peppers: dict[int, bytes] = {}
        for part in self.key_pepper.split(","):
            version, sep, secret = part.partition(":")
            if sep and version.isdigit():
                peppers[int(version)] = secret.encode()
            else:
                peppers[1] = part.encode()
        return peppers


def upstream_api_key(deployment: HttpDeployment, environ: Mapping[str, str] = os.environ) -> str | None:
    """The deployment's API key from its environment variable (read only here)."""
    if deployment.api_key_env is None:
        return None
    return environ.get(deployment.api_key_env)


EXAMPLE_CONFIG = Path(__file__).with_name("sluice.example.toml")


def load_file_config(path: str | Path | None) -> FileConfig:
    """Decode and cross-check `sluice.toml`, raising `ConfigError` naming file, path and reason."""
    source = Path(path) if path is not None else EXAMPLE_CONFIG
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    try:
        config = msgspec.toml.decode(data, type=FileConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_path_first(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    _cross_check(source, config)
    return _with_absolute_paths(source, config)


def _with_absolute_paths(source: Path, config: FileConfig) -> FileConfig:
    """Scorer paths are relative to the configuration file; make them absolute once, here."""
    models = []
    for i, alias in enumerate(config.models):
        route = alias.route
        if isinstance(route, ScoredRoute | CascadeRoute) and route.scorer is not None:
            path = (source.parent / route.scorer).resolve()
            if not path.is_file():
                raise ConfigError(f"{source}: $.models[{i}].route.scorer: no scorer artifact at `{path}`")
            models.append(msgspec.structs.replace(alias, route=msgspec.structs.replace(route, scorer=str(path))))
        else:
            models.append(alias)
    return msgspec.structs.replace(config, models=models)


def _path_first(message: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.deployments[0].max_concurrency`"; lead with the path.
    reason, sep, where = message.rpartition(" - at ")
    return f"{where.strip('`')}: {reason}" if sep else message


def _cross_check(source: Path, config: FileConfig) -> None:
    names = [d.name for d in config.deployments]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: $.deployments: deployment names must be unique")
    aliases = [m.name for m in config.models]
    if len(set(aliases)) != len(aliases):
        raise ConfigError(f"{source}: $.models: model names must be unique")
    for i, alias in enumerate(config.models):
        for deployment in route_deployments(alias.route):
            if deployment not in names:
                raise ConfigError(f"{source}: $.models[{i}].route: unknown deployment `{deployment}`")
    for name, price in config.prices.items():
        if name not in names:
            raise ConfigError(f"{source}: $.prices.{name}: unknown deployment `{name}`")
        if min(price.input, price.output, price.cached_input or 0) < 0:
            raise ConfigError(f"{source}: $.prices.{name}: prices must not be negative")
