"""Settings from the environment and `sluice.toml`: decoding, clear errors, and docs kept in step."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from cache import CachePolicy
from gateway.settings import (
    EXAMPLE_CONFIG,
    CascadeRoute,
    ConfigError,
    FallbackRoute,
    FileConfig,
    FixedRoute,
    Limits,
    ModelAlias,
    OpenAIDeployment,
    Price,
    ScoredRoute,
    Settings,
    SimulatorDeployment,
    SimulatorOptions,
    Timeouts,
    load_file_config,
)

DOCS = (Path(__file__).parents[3] / "docs" / "configuration.md").read_text()


def test_example_config_serves_simulator_models_small_large_and_a_cached_cascade() -> None:
    config = load_file_config(EXAMPLE_CONFIG)
    assert {m.name for m in config.models} == {"small", "large", "auto", "embed"}
    auto = next(m for m in config.models if m.name == "auto")
    assert isinstance(auto.route, CascadeRoute) and (auto.route.small, auto.route.large) == ("sim-small", "sim-large")
    assert auto.cache.enabled
    assert all(isinstance(d, SimulatorDeployment) for d in config.deployments)
    small, large = config.prices["sim-small"], config.prices["sim-large"]
    assert large.input / small.input == 20
    assert large.output / small.output == 20


def test_settings_read_only_sluice_variables_with_types_converted() -> None:
    settings = Settings.from_env({"SLUICE_DRAIN_TIMEOUT_S": "3", "SLUICE_LOG_LEVEL": "DEBUG", "HOME": "/root"})
    assert settings.drain_timeout_s == 3.0
    assert settings.log_level == "DEBUG"


def test_settings_error_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="log_level"):
        Settings.from_env({"SLUICE_LOG_LEVEL": "LOUD"})


def test_pepper_list_maps_versions_and_plain_value_is_version_one() -> None:
    assert Settings(key_pepper="2:new,1:old").peppers() == {2: b"new", 1: b"old"}
    assert Settings(key_pepper="only").peppers() == {1: b"only"}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("deployments = []\nmodels = 3", "$.models"),
        (
            '[[deployments]]\nkind = "simulator"\nname = "a"\nmodel = "m"\nmax_concurrency = 0\n'
            '[[models]]\nname = "x"\nroute = { policy = "fixed", deployment = "a" }',
            "$.deployments[0].max_concurrency",
        ),
        (
            '[[deployments]]\nkind = "simulator"\nname = "a"\nmodel = "m"\n[[models]]\nname = "x"\n'
            'route = { policy = "fixed", deployment = "nope" }',
            "$.models[0].route",
        ),
        ('[[deployments]]\nkind = "warp"\nname = "a"\nmodel = "m"\nmodels = []', "$.deployments[0]"),
        ("deployments = []\nmodels = []\nsurprise = 1", "surprise"),
        ("not toml [", "not valid TOML"),
    ],
    ids=["wrong-type", "out-of-range", "unknown-deployment", "unknown-kind", "unknown-key", "syntax"],
)
def test_bad_config_fails_naming_file_and_path(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "sluice.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_file_config(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "struct",
    [
        Settings,
        FileConfig,
        OpenAIDeployment,
        SimulatorDeployment,
        SimulatorOptions,
        Timeouts,
        Price,
        Limits,
        ModelAlias,
        FixedRoute,
        FallbackRoute,
        CascadeRoute,
        ScoredRoute,
        CachePolicy,
    ],
    ids=lambda s: s.__name__,
)
def test_every_configuration_field_is_documented(struct: type[msgspec.Struct]) -> None:
    missing = [name for name in struct.__struct_fields__ if f"`{name}`" not in DOCS]
    assert not missing, f"docs/configuration.md does not document {struct.__name__}: {missing}"
