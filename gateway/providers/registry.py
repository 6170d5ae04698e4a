"""`sluice.toml` deployments → `Provider` instances, built once at start-up."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider
from gateway.providers.openai_compat import OpenAICompatProvider
from gateway.providers.simulator import Simulator
from gateway.settings import (
    AnthropicDeployment,
    FileConfig,
    OpenAIDeployment,
    SimulatorDeployment,
    upstream_api_key,
)


def build_providers(config: FileConfig, environ: Mapping[str, str]) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for deployment in config.deployments:
        if isinstance(deployment, OpenAIDeployment):
            providers[deployment.name] = OpenAICompatProvider(deployment, upstream_api_key(deployment, environ))
        elif isinstance(deployment, AnthropicDeployment):
            providers[deployment.name] = AnthropicProvider(
                deployment, upstream_api_key(deployment, environ), default_max_tokens=deployment.default_max_tokens
            )
        elif isinstance(deployment, SimulatorDeployment):
            providers[deployment.name] = Simulator(deployment)
    return providers
