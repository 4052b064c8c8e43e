"""A base for provider plugins' settings: the ``providers.<name>`` section, validated by pydantic.

Subclass it with your fields; :meth:`ProviderSettings.load` validates a
section and raises :class:`router.errors.ConfigError` naming each bad key
(``providers.openai.timeout: Input should be greater than 0``), which the
registry reports as the plugin being broken, with that reason, in
``mmrouter providers``. Unknown keys are refused, so typos are caught.

A value naming a ``${VAR}`` that is unset (``api_key: "${MY_OPENAI_KEY}"``)
falls back to nothing: the provider is not configured, with the reason
``providers.openai.api_key: ${MY_OPENAI_KEY} is not set`` (the
``unconfigured_reason`` a subclass defines reports it first). A settings
class without ``unconfigured_reason`` cannot say so: its ``load`` refuses
such a value with a ConfigError instead.

::

    class EchoSettings(router.ProviderSettings):
        api_key_env = ("ECHO_API_KEY",)
        greeting: str = "hello"

    settings = EchoSettings.load("echo", section)
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .config import UnsetReference
from .errors import ConfigError
from .redact import SECRET_SETTING, remember, url_credentials
from .types import Modality, ModelInfo, Price


class ProviderSettings(BaseModel):
    """Settings every provider understands; subclasses add their own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Environment variables tried, in order, when ``api_key`` is empty. Subclasses set it.
    api_key_env: ClassVar[tuple[str, ...]] = ()
    #: Other fields read from an environment variable when the section leaves them unset, e.g.
    #: ``{"base_url": "OPENAI_BASE_URL"}``. Subclasses set it. The value of a field whose name marks a secret
    #: (``passphrase``, ``client_secret``: see ``register_providers``) is masked as the same value in the
    #: config file is, whatever the variable's name.
    env_fields: ClassVar[Mapping[str, str]] = {}
    #: Settings of this base class that the plugin refuses (a provider that needs no key has no use for
    #: ``api_key``): ``config check`` suggests none of them for a mistyped key. Subclasses set it, and
    #: refuse them with a validator.
    not_used: ClassVar[frozenset[str]] = frozenset()

    _environment: bool = PrivateAttr(default=True)
    #: The settings whose ``${VAR}`` is unset (see :meth:`load`), and why, one problem each.
    _unset_fields: frozenset[str] = PrivateAttr(default=frozenset())
    _unset_problems: tuple[str, ...] = PrivateAttr(default=())

    api_key: str = Field("", repr=False, description="the API key; empty means: read api_key_env")
    base_url: str = Field("", description="the API's address; empty for the provider's own")
    timeout: float = Field(60.0, gt=0, description="seconds for one HTTP call; a plugin shortens it to the call's deadline (CallContext.time_remaining)")
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per model price overrides, applied by the router"
    )

    @field_validator("base_url")
    @classmethod
    def _http_scheme(cls, url: str) -> str:
        """An empty ``base_url``, or one whose scheme is http or https: every provider SDK speaks HTTP, and a
        mistyped scheme (``htp://``) was accepted, the provider listed ready, then every call refused. The
        problem quotes the scheme only (the URL may carry credentials)."""
        scheme, sep, _ = url.strip().partition("://")
        if url.strip() and (not sep or scheme.lower() not in ("http", "https")):
            given = f"its scheme is {scheme!r}" if sep else "it has no scheme"
            raise ValueError(f"must start with http:// or https:// ({given})")
        return url

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Make the ``unconfigured_reason`` a subclass defines report unset ``${VAR}`` first (see :meth:`load`)."""
        super().__pydantic_init_subclass__(**kwargs)
        own = cls.__dict__.get("unconfigured_reason")
        if callable(own):
            cls.unconfigured_reason = _unset_first(own)

    @classmethod
    def load(cls, provider: str, section: Mapping[str, Any] | None, *, environment: bool = True) -> Self:
        """Validate ``section`` (this provider's config); ConfigError names every bad key.

        Empty values (``timeout:`` with nothing, or ``${VAR:-}``) count as unset: the default applies.
        With ``environment`` (the plugin's own provider) unset fields and the key fall back to
        :attr:`env_fields` and :attr:`api_key_env`; an extra instance (``providers.<name>`` with
        ``plugin:``) passes False and reads its section only, so ``OPENAI_API_KEY`` never goes to a
        server the operator pointed another instance at.

        A value naming an unset ``${VAR}`` (an :class:`router.config.UnsetReference`) falls back to
        nothing: the provider is not configured, its reason naming the key and variable
        (:attr:`unset_reason`). Only ``${VAR}`` alone naming a variable the field falls back to anyway
        (``api_key: "${OPENAI_API_KEY}"``) is as if the key were left out. A class without
        ``unconfigured_reason`` refuses such a value with a ConfigError.
        """
        section = dict(section or {})
        unset = {key: value.variables for key, value in section.items()
                 if isinstance(value, UnsetReference) and not (environment and cls._falls_back_to(key, value))}
        given = {k: v for k, v in section.items() if v not in (None, "") and k not in unset}
        from_environment: dict[str, str] = {}  # field -> the variable its value came from
        if environment:
            for name, variable in cls.env_fields.items():
                if name not in given and name not in unset and os.environ.get(variable, "").strip():
                    given[name] = os.environ[variable]
                    from_environment[name] = variable
        try:
            settings = cls.model_validate(given)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                variable = from_environment.get(str(err["loc"][0])) if err["loc"] else None
                where = f" (from the environment variable {variable})" if variable else ""
                problems.append(f"providers.{provider}.{field}{where}: {err['msg']}")
            raise ConfigError("; ".join(problems)) from None
        settings._environment = environment
        settings._unset_fields = frozenset(unset)
        settings._unset_problems = tuple(_unset_problem(provider, key, names) for key, names in unset.items())
        if unset and not hasattr(cls, "unconfigured_reason"):
            raise ConfigError("; ".join(settings._unset_problems))
        remember([settings.api_key, settings.key, *cls._environment_keys(), *settings._url_credentials(),
                  *(str(given[name]) for name in from_environment if SECRET_SETTING.search(name))])
        return settings

    @classmethod
    def _falls_back_to(cls, key: str, value: UnsetReference) -> bool:
        """Whether ``value`` of ``key`` is only ``${VAR}`` naming variables that ``key`` reads when left
        out (:attr:`api_key_env`, :attr:`env_fields`): ``api_key: "${OPENAI_API_KEY}"``, as the
        embedded default writes, is the same as no ``api_key``."""
        own = set(cls.api_key_env) if key == "api_key" else {cls.env_fields.get(key)}
        return value == "" and set(value.variables) <= own

    @property
    def unset_reason(self) -> str | None:
        """``providers.<name>.<key>: ${VAR} is not set`` for each value naming an unset variable, or None."""
        return "; ".join(self._unset_problems) or None

    def _url_credentials(self) -> list[str]:
        """The credentials of the URLs among the string settings (``http://user:password@gateway``),
        those from the environment (``OPENAI_BASE_URL``) too, which the config-based secrets miss."""
        return [c for value in self.model_dump().values() if isinstance(value, str) for c in url_credentials(value)]

    @classmethod
    def _environment_keys(cls) -> list[str]:
        """The values of this class's :attr:`api_key_env` variables that are set."""
        return [os.environ[name] for name in cls.api_key_env if os.environ.get(name, "").strip()]

    @staticmethod
    def key_variables() -> set[str]:
        """The :attr:`api_key_env` variables of every subclass defined so far (any name, e.g.
        ``SPEECH_KEY``): their values are secrets to mask like a configured ``api_key``."""
        found: set[str] = set()
        classes: list[type[ProviderSettings]] = [ProviderSettings]
        while classes:
            cls = classes.pop()
            found.update(cls.api_key_env)
            classes.extend(cls.__subclasses__())
        return found

    @classmethod
    def key_settings(cls, provider: str, plugin: str) -> str:
        """Where the key of ``provider`` (made by ``plugin``) is set, for messages: ``providers.<provider>.api_key``,
        and for the plugin's own provider the :attr:`api_key_env` variables first (an extra instance
        reads no environment)."""
        setting = f"providers.{provider}.api_key"
        return " or ".join([*cls.api_key_env, setting]) if provider == plugin else setting

    @classmethod
    def refused_key_settings(cls, provider: str, plugin: str, key: str) -> str:
        """Where the refused key ``key`` (the one sent) of ``provider`` was set, for messages. The plugin's
        own provider reads :attr:`api_key_env` only when its section gives no ``api_key``: a key that is
        none of those variables' came from the section, and naming the variables would send the operator
        to settings never read. The section's ``${VAR}`` was replaced before the plugin saw the key, so
        its name cannot be given."""
        if provider == plugin and key.strip():
            from_environment = {os.environ.get(name, "").strip() for name in cls.api_key_env}
            if key.strip() not in from_environment:
                return f"providers.{provider}.api_key (the key this section gives)"
        return cls.key_settings(provider, plugin)

    def missing_key(self, provider: str, plugin: str) -> str | None:
        """``no API key: set ...`` (see :meth:`key_settings`) when there is no key, else None; an unset
        ``${VAR}`` is said first (see :attr:`unset_reason`)."""
        if self.unset_reason:
            return self.unset_reason
        return None if self.key else f"no API key: set {self.key_settings(provider, plugin)}"

    @property
    def uses_environment(self) -> bool:
        """Whether unset settings fall back to environment variables (not for extra instances)."""
        return self._environment

    @property
    def key(self) -> str:
        """``api_key`` if set, else the first non-empty variable of ``api_key_env`` (unless loaded
        without the environment, or ``api_key`` names an unset ``${VAR}``), else ``""`` (stripped)."""
        if self.api_key.strip() or not self._environment or "api_key" in self._unset_fields:
            return self.api_key.strip()
        return next((os.environ[name].strip() for name in self.api_key_env if os.environ.get(name, "").strip()), "")


def base_url_query_problem(url: str, appended: str) -> str | None:
    """Why a ``base_url`` cannot be used when it has a query or fragment (``?api-version=``, ``?key=``), or
    None: an SDK appends its paths (``appended``, e.g. ``/v1/messages``) after it, and HTTP clients log the
    whole URL. The problem never quotes the query (it often holds a key)."""
    if "?" not in url and "#" not in url:
        return None
    return (f"this plugin cannot send query parameters (the SDK appends {appended} after them): give the API "
            "root, with no '?' or '#'")


def _unset_problem(provider: str, key: str, variables: tuple[str, ...]) -> str:
    """``providers.openai.api_key: ${MY_OPENAI_KEY} is not set`` (``is empty`` when it is set but empty)."""
    names = " and ".join(f"${{{name}}}" for name in variables)
    verb = "is" if len(variables) == 1 else "are"
    found = [name in os.environ for name in variables]
    state = "empty" if all(found) else "not set or empty" if any(found) else "not set"
    return f"providers.{provider}.{key}: {names} {verb} {state}"


def _unset_first(unconfigured_reason: Callable[..., str | None]) -> Callable[..., str | None]:
    """``unconfigured_reason`` of a settings class, giving :attr:`ProviderSettings.unset_reason` first."""

    @functools.wraps(unconfigured_reason)
    def reason(self: ProviderSettings, *args: Any, **kwargs: Any) -> str | None:
        return self.unset_reason or unconfigured_reason(self, *args, **kwargs)

    return reason


class ModelPrice(BaseModel):
    """A configured model's list price in US dollars (see :class:`router.Price`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float = Field(0.0, ge=0, description="per million input tokens")
    output_per_mtok: float = Field(0.0, ge=0, description="per million output tokens")
    per_audio_hour: float = Field(0.0, ge=0, description="per hour of audio")
    audio_input_per_mtok: float = Field(0.0, ge=0, description="per million audio input tokens (0: input_per_mtok)")
    cached_input_per_mtok: float = Field(0.0, ge=0, description="per million input tokens read from the provider's "
                                         "cache (0: input_per_mtok)")
    long_context_above_tokens: int = Field(0, ge=0, description="input tokens past which a call is priced at the "
                                           "long_context_* rates (0: no long-context tier)")
    long_context_input_per_mtok: float = Field(0.0, ge=0, description="input rate of such a call (0: input_per_mtok)")
    long_context_output_per_mtok: float = Field(0.0, ge=0, description="output rate of such a call (0: output_per_mtok)")
    long_context_cached_input_per_mtok: float = Field(0.0, ge=0, description="cached input rate of such a call "
                                                      "(0: cached_input_per_mtok)")


class ModelSpec(BaseModel):
    """One item of a provider section's ``models:`` list: a model the operator adds to the plugin's
    built-in catalogue, say one released after the plugin was, or replaces (same name)::

        providers:
          anthropic:
            models:
              - name: claude-sonnet-5-5
                price: {input_per_mtok: 3, output_per_mtok: 15}   # required: every answer names its cost
                context_tokens: 1000000          # else the plugin's default for its models
                max_output_tokens: 64000         # the model's output limit; else the plugin's default
                inputs: [text, image, document]  # else all the plugin can send

    A plugin that offers ``models:`` declares the field (``models: list[ModelSpec] = []``) and builds
    its catalogue with :func:`with_configured_models`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # no spaces, and no control characters: the name is shown in logs, `providers` and `stats` (an ESC
    # would drive the operator's terminal)
    name: str = Field(min_length=1, pattern=r"^[^\s\x00-\x1f\x7f-\x9f]+$",
                      description="the model's name in the provider's API")
    price: ModelPrice = Field(description="list prices; write zeros for a free model")
    inputs: frozenset[Modality] | None = Field(None, min_length=1, description="what it reads")
    context_tokens: int | None = Field(None, gt=0, description="its context window in tokens")
    max_output_tokens: int | None = Field(None, gt=0, description="the most tokens it may write in one answer")


def with_configured_models(builtin: Iterable[ModelInfo], specs: Iterable[ModelSpec], like: ModelInfo, *,
                           provider: str) -> list[ModelInfo]:
    """The catalogue of a provider: ``builtin`` then each configured model (a configured one replaces the
    built-in model of the same name, in place). A configured model takes what it leaves unset from the
    built-in model it replaces, else from ``like`` (the plugin's typical model), whose ``inputs`` are
    also all a configured model may name.

    Raises ConfigError for a model reading inputs the plugin cannot send.
    """
    models = {m.name: m for m in builtin}
    for index, spec in enumerate(specs):
        if spec.inputs and not spec.inputs <= like.inputs:
            cannot = ", ".join(sorted(m.value for m in spec.inputs - like.inputs))
            can = ", ".join(sorted(m.value for m in like.inputs))
            raise ConfigError(f"providers.{provider}.models.{index}.inputs: this plugin cannot send {cannot} "
                              f"(it sends {can})")
        base = models.get(spec.name, like)  # a built-in model replaced keeps what the spec leaves unset
        inputs = spec.inputs or base.inputs
        limit = spec.max_output_tokens or base.max_output_tokens
        models[spec.name] = dataclasses.replace(
            base, name=spec.name, inputs=inputs, price=Price(**spec.price.model_dump()),
            context_tokens=spec.context_tokens or base.context_tokens, max_output_tokens=limit,
            default_max_output_tokens=min(base.default_max_output_tokens, limit or base.default_max_output_tokens),
        )
    return list(models.values())
