"""The openai plugin's model catalogue: models configured under ``providers.<name>.models`` (their price, which
OpenAI's own API requires, and ``takes_temperature``) and what the built-in models declare to routing (the
transcription models' 25 MB upload limit).

The end-to-end tests run the daemon with the real ``openai`` SDK against the fake OpenAI API.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb
from mmrouter_openai.models import BUILTIN, MAX_FILE_BYTES, MAX_UPLOAD_BYTES, catalogue

from router.errors import ConfigError
from tests.fakes.openai import API_KEY, FakeOpenAI

MMROUTER = Path(sys.executable).parent / "mmrouter"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# -- price ------------------------------------------------------------------------------------


def test_a_model_of_openai_s_api_needs_a_price() -> None:
    """A model added to a provider of OpenAI's own API without a price was billed $0: it is refused, naming
    the key; zeros are a price (a free model), and a built-in model given again keeps its own."""
    with pytest.raises(ConfigError, match=r"^providers\.openai\.models\[1\]\.price is required for a model of "
                                          r"OpenAI's API, or its calls are billed \$0"):
        catalogue(True, [{"name": "o3", "price": {"input_per_mtok": 2, "output_per_mtok": 8}}, {"name": "gpt-5"}],
                  openai_api=True)
    free = catalogue(False, [{"name": "free", "price": {}}], openai_api=True)["free"]
    assert free.info.price.input_per_mtok == 0
    again = catalogue(True, [{"name": "gpt-4o", "context_tokens": 64000}], openai_api=True)["gpt-4o"]
    assert again.info.price == next(e for e in BUILTIN if e.info.name == "gpt-4o").info.price


def test_a_model_of_another_server_is_free_when_unpriced() -> None:
    """vLLM, Ollama, llama.cpp (a base_url that is not OpenAI's): a left-out price is 0, as before."""
    llama = catalogue(False, [{"name": "llama3.2"}], "vllm")["llama3.2"]
    assert llama.info.price.input_per_mtok == llama.info.price.output_per_mtok == 0


def config_check(path: Path) -> tuple[int, str]:
    """``mmrouter config check path``: its exit status and output, without colours."""
    result = subprocess.run([str(MMROUTER), "config", "check", str(path)], capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": "400"})
    return result.returncode, ANSI.sub("", result.stdout + result.stderr)


def test_config_check_refuses_an_unpriced_model_of_openai_only(tmp_path: Path) -> None:
    """``config check`` said OK to gpt-5 without a price under ``providers.openai`` (which talks to OpenAI):
    it names the missing key now. The same model of a local server (another base_url) is fine."""
    cloud = tmp_path / "cloud.yaml"
    cloud.write_text("providers:\n  openai: {api_key: sk-test, models: [{name: gpt-5}]}\ndefault: openai/gpt-5\n")
    status, output = config_check(cloud)
    assert status == 1 and "providers.openai.models[0].price is required for a model of OpenAI's API" in output, \
        output
    local = tmp_path / "local.yaml"
    local.write_text("providers:\n  vllm: {plugin: openai, base_url: 'http://127.0.0.1:42210/v1', "
                     "models: [{name: llama3.2}]}\ndefault: vllm/llama3.2\n")
    status, output = config_check(local)
    assert status == 0 and "OK" in output, output


# -- takes_temperature --------------------------------------------------------------------------


def test_takes_temperature_is_read_from_a_configured_model() -> None:
    configured = catalogue(True, [{"name": "o3", "takes_temperature": False},
                                  {"name": "gpt-4o", "takes_temperature": False}])
    assert not configured["o3"].info.takes_temperature and not configured["gpt-4o"].info.takes_temperature
    assert configured["gpt-4o-mini"].info.takes_temperature  # the default: sent
    with pytest.raises(ConfigError, match=r"providers\.openai\.models\[0\]\.takes_temperature must be true or "
                                          r"false, got 'no'"):
        catalogue(False, [{"name": "o3", "takes_temperature": "no"}])


REASONING = """
providers:
  openai:
    api_key: "{key}"
    base_url: "{url}"
    timeout: 30
    models: [{{name: o3, price: {{input_per_mtok: 2, output_per_mtok: 8}}, takes_temperature: false}}]
default: openai/o3
"""


def test_a_model_that_takes_no_temperature_is_sent_none_and_the_route_says_so(start_daemon) -> None:
    """OpenAI answers a reasoning model sent a temperature with 400 "Unsupported parameter": the fake refuses
    it too. With ``takes_temperature: false`` the request goes without it, and a route note says so."""
    with FakeOpenAI() as fake:
        fake.chat_models.add("o3")
        fake.refused_fields = {"temperature"}
        daemon = start_daemon(REASONING.format(key=API_KEY, url=fake.base_url), plugins=())
        request = text_request("Think hard", options=pb.Options(temperature=0.2))
        answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer
        (sent,) = fake.chat_requests()
    assert sent["model"] == "o3" and "temperature" not in sent, sent
    assert answer.text == "Hello from the fake GPT."
    assert "temperature not sent: openai/o3 takes no sampling temperature" in answer.route.notes, answer.route.notes


# -- the transcription models' upload limit ------------------------------------------------------


def test_the_transcription_models_declare_openai_s_upload_limit() -> None:
    """The built-in transcription models declare the 25 MB limit the plugin enforces (transcribe.py), so
    routing passes over them for a larger file; chat models and configured ones (other servers) declare none."""
    assert MAX_UPLOAD_BYTES == 26_214_400
    assert MAX_FILE_BYTES == MAX_UPLOAD_BYTES - 8 * 1024  # room for the multipart envelope: the body is counted
    caps = {e.info.name: e.info.max_media_bytes for e in BUILTIN}
    assert {name for name, cap in caps.items() if cap} == {e.info.name for e in BUILTIN if e.transcribes}
    assert set(caps.values()) == {0, MAX_FILE_BYTES}
    entries = catalogue(True, [{"name": "whisper-1", "price": {"per_audio_hour": 0.3}},
                               {"name": "faster-whisper", "outputs": ["transcript"]}])
    assert entries["whisper-1"].info.max_media_bytes == MAX_FILE_BYTES  # the same model, at a new price
    assert entries["faster-whisper"].info.max_media_bytes == 0
