"""A model's request limit (``ModelInfo.max_request_bytes``, Claude's 32 MB) shown and used everywhere (session 26).

- ``ListProviders`` and ``mmrouter providers --json`` give each model's ``max_request_bytes`` (0: no limit), as
  they give its other limits.
- A bridge is sent each media alone: Claude, listed as a document bridge, is passed by for a PDF whose size as sent
  (base64-encoded) is over its 32 MB, as routing passes it by as a target, with a route note saying why (in
  ExplainRoute too); the next bridge reads it, and Claude is not called. A bridge tried after one that failed is
  passed by the same way.
- "every target failed (N tried)" was said when only a bridge was called: the message says how many targets were
  called and which bridge failed for which of them.

Through the daemon, with the real SDKs against the fakes of tests/fakes; the 25 MB contract is
``test_size_fallback_s24``'s.
"""

from __future__ import annotations

import json

import grpc
from grpc_helpers import providers_by_name, text_request
from media_factory import pdf, wav
from mmrouter.v1 import router_pb2 as pb
from test_cli import ok, run_cli
from test_hybrid import ALL_KEYS, generate, upload
from test_quota_errors_s22 import failure, google_error
from test_regress_s22 import OVERLOADED
from test_size_fallback_s24 import CONTRACT, MAX_REQUEST_BYTES, explain, tries

CLAUDE = "anthropic/claude-sonnet-4-6"
FLASH = "gemini/gemini-2.5-flash"
PRO = "gemini/gemini-2.5-pro"
#: The contract as sent, base64-encoded, in MiB (as a route note says it).
AS_SENT = f"{4 * ((len(CONTRACT) + 2) // 3) / 2**20:.1f}"
#: Why Claude is passed by as the contract's bridge.
PASSED = (f"bridging: {CLAUDE} passed by as the document bridge: document input of ~{AS_SENT} MiB as sent (media "
          "base64-encoded) exceeds its request limit of 32 MiB")

CONFIG = """
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{openai}", timeout: 20}}
  anthropic: {{api_key: "${{ANTHROPIC_API_KEY}}", base_url: "{anthropic}", timeout: 20}}
  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{gemini}", timeout: 20, poll_interval: 0.02}}
routes:
  - name: heard
    match: {{tags: [heard]}}
    use: anthropic/claude-sonnet-4-6
    fallback: [openai/gpt-audio]
default: openai/gpt-4o
bridges:
  document: [{documents}]
  audio: [openai/whisper-1]
"""


def start(start_daemon, fakes, *documents: str):  # type: ignore[no-untyped-def]
    """A daemon answering with GPT-4o (which reads no PDF), ``documents`` its document bridges in turn."""
    return start_daemon(CONFIG.format(openai=fakes["openai"].base_url, anthropic=fakes["anthropic"].url,
                                      gemini=fakes["gemini"].url, documents=", ".join(documents)),
                        env=ALL_KEYS, plugins=())


def contract(daemon) -> pb.Media:  # type: ignore[no-untyped-def]
    return upload(daemon, CONTRACT, pb.MODALITY_DOCUMENT, "application/pdf", "scanned-msa.pdf")


def steps(answer: pb.Answer) -> list[str]:
    return [f"{s.provider}/{s.model}" for s in answer.route.steps]


# -- ListProviders ------------------------------------------------------------------------------------------


def test_list_providers_and_the_cli_give_each_model_s_request_limit(start_daemon, fakes) -> None:
    """ListProviders gave every limit of a model but its request limit."""
    daemon = start(start_daemon, fakes, FLASH)
    listed = providers_by_name(daemon.stub)
    limits = {f"{p}/{m.name}": m.max_request_bytes for p in ("anthropic", "openai") for m in listed[p].models}
    assert limits[CLAUDE] == MAX_REQUEST_BYTES
    assert limits["openai/gpt-4o"] == 0  # no limit

    shown = json.loads(ok(run_cli("providers", "--json", "--address", daemon.address)).stdout)
    models = {f"{p['name']}/{m['name']}": m for p in shown["providers"] for m in p["models"]}
    assert models[CLAUDE]["maxRequestBytes"] == str(MAX_REQUEST_BYTES)
    assert models["openai/gpt-4o"]["maxRequestBytes"] == "0"


# -- bridges ------------------------------------------------------------------------------------------------


def test_a_document_bridge_is_passed_by_for_a_pdf_over_its_request_limit(start_daemon, fakes) -> None:
    """Claude, the first document bridge, was planned for a 25 MB PDF (33 MB as sent) and refused it at call time
    (its plugin's own check): it is passed by, ExplainRoute and the answer's route say why, and Gemini reads it.
    A small PDF still goes to Claude."""
    daemon = start(start_daemon, fakes, CLAUDE, FLASH)
    request = text_request("Extract the indemnity clauses.", media=[contract(daemon)])

    planned = explain(daemon, request)
    assert list(planned.bridges) == [f"document->text via {FLASH}"], planned
    assert PASSED in planned.notes, list(planned.notes)

    answer = generate(daemon, request)
    assert list(answer.route.bridges) == [f"document->text via {FLASH}"]
    assert tries(answer) == [(FLASH, True), ("openai/gpt-4o", True)]
    assert PASSED in answer.route.notes, list(answer.route.notes)
    assert fakes["anthropic"].message_calls() == []

    small = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", filename="memo.pdf",
                     data=pdf(["A short memo"]))
    answer = generate(daemon, text_request("Summarise the memo.", media=[small]))
    assert tries(answer) == [(CLAUDE, True), ("openai/gpt-4o", True)]
    assert not any("passed by" in note for note in answer.route.notes), list(answer.route.notes)


def test_a_later_bridge_is_passed_by_for_a_pdf_over_its_request_limit(start_daemon, fakes) -> None:
    """Gemini Flash, the first document bridge, is down: Claude, the next one, was called with the 25 MB PDF and
    refused it (a failed attempt); it is passed by and Gemini Pro, the next one, reads it. A small PDF goes to
    Claude after Flash fails."""
    daemon = start(start_daemon, fakes, FLASH, CLAUDE, PRO)
    down = google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    fakes["gemini"].fail_next(503, down)
    answer = generate(daemon, text_request("Extract the indemnity clauses.", media=[contract(daemon)]))
    assert tries(answer) == [(FLASH, False), (PRO, True), ("openai/gpt-4o", True)]
    assert steps(answer)[-2:] == [PRO, "openai/gpt-4o"]
    assert fakes["anthropic"].message_calls() == []

    fakes["gemini"].fail_next(503, down)
    small = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", filename="memo.pdf",
                     data=pdf(["Another short memo"]))
    answer = generate(daemon, text_request("Summarise the memo.", media=[small]))
    assert tries(answer) == [(FLASH, False), (CLAUDE, True), ("openai/gpt-4o", True)]


# -- every target failed -------------------------------------------------------------------------------------


def test_a_failure_says_which_targets_were_called_and_which_bridge_failed_for_the_others(start_daemon,
                                                                                       fakes) -> None:
    """Claude (its audio bridged by Whisper) and gpt-audio (hearing it itself) both fail: the message said "every
    target failed (2 tried)", though Claude was never called. It says one target was called, and that Whisper
    failed for Claude; ErrorInfo ``attempts`` still names each failed call."""
    daemon = start(start_daemon, fakes, FLASH)
    fakes["openai"].fail_next(503, OVERLOADED, path="/v1/audio/transcriptions")
    fakes["openai"].fail_next(503, OVERLOADED, path="/v1/chat/completions")
    clip = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", filename="call.wav", data=wav(0.6))
    details = failure(daemon, text_request("Summarise the call.", media=[clip], hints=pb.RoutingHints(tags=["heard"])))
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.message.startswith(
        f"every target failed (2 planned, 1 called: the bridge openai/whisper-1 failed for {CLAUDE}): openai: "
    ), details.message
    assert details.metadata["attempts"] == "openai/whisper-1 PROVIDER_UNAVAILABLE; openai/gpt-audio PROVIDER_UNAVAILABLE"
    assert fakes["anthropic"].message_calls() == []
