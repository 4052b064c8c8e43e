"""Which settings a refused key's message names, for every plugin that takes a key.

A provider's own section reads its environment variables (ANTHROPIC_API_KEY, ...) only when it gives
no ``api_key``: a refused key that is none of those variables' came from the section (often as
``api_key: "${OPS_KEY}"``, replaced before the plugin saw it), and naming the variables would send the
operator to settings never read.
"""

from __future__ import annotations

import pytest
from mmrouter_anthropic.settings import AnthropicSettings
from mmrouter_assemblyai.settings import AssemblyAISettings
from mmrouter_gemini.settings import GeminiSettings
from mmrouter_openai.settings import OpenAISettings

SETTINGS = [
    pytest.param(OpenAISettings, "openai", id="openai"),
    pytest.param(AnthropicSettings, "anthropic", id="anthropic"),
    pytest.param(GeminiSettings, "gemini", id="gemini"),
    pytest.param(AssemblyAISettings, "assemblyai", id="assemblyai"),
]


@pytest.mark.parametrize(("settings", "plugin"), SETTINGS)
def test_a_key_from_a_variable_names_the_variables(settings, plugin, monkeypatch: pytest.MonkeyPatch) -> None:
    variable = settings.api_key_env[-1]
    for name in settings.api_key_env:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "refused-key-1")
    hint = settings.refused_key_settings(plugin, plugin, "refused-key-1")
    assert hint == " or ".join([*settings.api_key_env, f"providers.{plugin}.api_key"])


@pytest.mark.parametrize(("settings", "plugin"), SETTINGS)
@pytest.mark.parametrize("environment", ["", "another-key"], ids=["no-variable", "another-variable"])
def test_a_key_from_the_section_names_the_section(settings, plugin, environment: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in settings.api_key_env:
        monkeypatch.setenv(name, environment) if environment else monkeypatch.delenv(name, raising=False)
    hint = settings.refused_key_settings(plugin, plugin, "refused-key-2")
    assert hint == f"providers.{plugin}.api_key (the key this section gives)"
    assert not any(name in hint for name in settings.api_key_env)


@pytest.mark.parametrize(("settings", "plugin"), SETTINGS)
def test_an_extra_instance_names_its_own_section(settings, plugin, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in settings.api_key_env:
        monkeypatch.setenv(name, "refused-key-3")  # never read by an extra instance
    assert settings.refused_key_settings(f"{plugin}-eu", plugin, "refused-key-3") == f"providers.{plugin}-eu.api_key"
