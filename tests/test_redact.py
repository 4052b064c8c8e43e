"""The log filter that keeps secrets out of the daemon's log."""

from __future__ import annotations

import logging

from router.redact import SecretFilter, longest_first, mask


def test_a_secret_that_holds_another_is_masked_whole() -> None:
    short, long = "sk-abcd1234", "sk-abcd1234-extended-999"
    for order in ([short, long], [long, short]):
        assert mask(f"keys {long} and {short}", longest_first(order)) == "keys *** and ***"


def test_the_filter_masks_arguments_and_survives_a_call_whose_arguments_do_not_fit(caplog) -> None:
    log = logging.getLogger("test.redact")
    secret_filter = SecretFilter(["sk-live-0123456789"])
    log.addFilter(secret_filter)
    try:
        with caplog.at_level(logging.INFO, logger="test.redact"):
            log.info("calling with %s", "sk-live-0123456789")
            log.info("two places %s %s", "only one sk-live-0123456789")  # a bug in a plugin's log call
    finally:
        log.removeFilter(secret_filter)
    first, second = (r.getMessage() for r in caplog.records)
    assert first == "calling with ***"
    assert "do not fit" in second and "***" in second and "sk-live" not in second


def test_keys_a_plugin_resolves_reach_the_log_filters_and_secrets_of(monkeypatch) -> None:
    from router import ProviderSettings
    from router.core import secrets_of

    class OddlyNamed(ProviderSettings):
        api_key_env = ("ODDLY_NAMED_ACCESS",)  # no secret-name pattern matches this variable

    monkeypatch.setenv("ODDLY_NAMED_ACCESS", " odd-env-key-0001 ")
    live = SecretFilter([])
    OddlyNamed.load("odd", {})
    assert "odd-env-key-0001" in live.secrets
    assert "odd-env-key-0001" in secrets_of({})


def test_secrets_of_walks_nested_settings_and_broader_variable_names(monkeypatch) -> None:
    from router.core import secrets_of

    monkeypatch.setenv("SPEECH_KEY", "speech-key-0002")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/secret/creds-0003.json")
    found = secrets_of({"x": {"auth": {"api_key": "nested-0004", "user": "bob-the-user"},
                              "headers": [{"token": "listed-0005"}], "max_output_tokens": "64000"}})
    assert {"speech-key-0002", "/secret/creds-0003.json", "nested-0004", "listed-0005"} <= found
    assert "bob-the-user" not in found and "64000" not in found
