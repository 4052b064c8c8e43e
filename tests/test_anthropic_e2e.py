"""Anthropic through the running daemon: the real ``anthropic`` SDK talks to the fake Messages API.

Most tests share one daemon for the module (see :func:`shared_daemon`); those that change or read
daemon-wide state start their own with the ``start_daemon`` fixture of tests/conftest.py (the real
daemon as a subprocess). Asserts both sides: what the fake received (blocks, media types,
PDF bytes intact, roles) and what the gRPC client got (text, deltas, usage,
cost, route, error codes with ErrorInfo/RetryInfo).
"""

from __future__ import annotations

import io

import grpc
import pytest
from conftest import fake_fixtures, launch_daemon
from grpc_helpers import (
    assert_instance_listed,
    error_details,
    everything_said,
    instance_config,
    providers_by_name,
    text_request,
)
from mmrouter.v1 import router_pb2 as pb
from PIL import Image
from reportlab.pdfgen import canvas

from tests.fakes.anthropic import API_KEY, FakeAnthropic, media_blocks, sent_key

CONFIG = """
providers:
  anthropic:
    api_key: "${{ANTHROPIC_TEST_KEY}}"
    base_url: "{url}"
    timeout: {timeout}
routes:
  - name: cheap
    match: {{tags: [cheap]}}
    use: anthropic/claude-haiku-4-5
  - name: documents
    match: {{inputs_any: [document]}}
    use: anthropic/claude-sonnet-4-6
    fallback: [anthropic/claude-haiku-4-5]
default: anthropic/claude-sonnet-4-6
"""

SONNET = (3.0, 15.0)
HAIKU = (1.0, 5.0)


def cost(usage: tuple[int, int], price: tuple[float, float]) -> float:
    return usage[0] * price[0] / 1e6 + usage[1] * price[1] / 1e6


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 4), (10, 200, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def pdf_bytes(text: str) -> bytes:
    buf = io.BytesIO()
    page = canvas.Canvas(buf)
    page.drawString(72, 720, text)
    page.save()
    return buf.getvalue()


def text_part(value: str) -> pb.Part:
    return pb.Part(text=value)


def media_part(modality: int, mime: str, data: bytes, filename: str = "") -> pb.Part:
    return pb.Part(media=pb.Media(modality=modality, mime_type=mime, data=data, filename=filename))


def ask(*parts: pb.Part, system: str = "", tags: tuple[str, ...] = (), session: str = "",
        max_output_tokens: int = 0) -> pb.MultimodalRequest:
    messages = [pb.Message(role=pb.ROLE_SYSTEM, parts=[text_part(system)])] if system else []
    messages.append(pb.Message(role=pb.ROLE_USER, parts=list(parts)))
    return pb.MultimodalRequest(messages=messages, options=pb.Options(max_output_tokens=max_output_tokens),
                                hints=pb.RoutingHints(tags=list(tags)), session_id=session)


def started_fake() -> FakeAnthropic:
    """A fake Anthropic API counting 1500 tokens in and 80 out (set before it starts: what reset() goes back to)."""
    upstream = FakeAnthropic()
    upstream.input_tokens, upstream.output_tokens = 1500, 80
    return upstream


shared_fake, fake, own_fake = fake_fixtures(started_fake)


def start(start_daemon, fake: FakeAnthropic, *, key: str = API_KEY, timeout: float = 10):
    """A daemon of the test's own whose anthropic provider calls ``fake``."""
    return start_daemon(CONFIG.format(url=fake.url, timeout=timeout), env={"ANTHROPIC_TEST_KEY": key})


@pytest.fixture(scope="module")
def shared_daemon(shared_fake, plugin_sites, tmp_path_factory):
    """One daemon of CONFIG for the module's tests that only make calls and check what the fake and the
    client got: starting one per test (and importing the SDK in each) took minutes.

    A test sharing it must not make the fake answer 429, or 529/503 with Retry-After (the target would
    cool down for 60 s), read the statistics, ListProviders or the log, or need another config or key; it
    uses a session id no other test uses (a session's history and its history cuts are the session's own)."""
    daemon = launch_daemon(CONFIG.format(url=shared_fake.url, timeout=10),
                           tmp=tmp_path_factory.mktemp("anthropic-e2e"),
                           env={"ANTHROPIC_TEST_KEY": API_KEY}, sites=[plugin_sites["testkit"]])
    yield daemon
    daemon.stop()


@pytest.fixture
def daemon(shared_daemon, fake):
    """The module's shared daemon (see :func:`shared_daemon`), its fake reset."""
    return shared_daemon


def upload(daemon, data: bytes, mime: str, modality: int, filename: str) -> str:
    chunks = [pb.UploadMediaRequest(metadata=pb.UploadMetadata(
        modality=modality, mime_type=mime, filename=filename, size_bytes=len(data)))]
    chunks += [pb.UploadMediaRequest(chunk=data[i:i + 1024]) for i in range(0, len(data), 1024)]
    return daemon.stub.UploadMedia(iter(chunks), timeout=30).media_id


def test_pdfs_and_images_through_generate(daemon, fake):
    inline_pdf, stored_pdf = pdf_bytes("Invoice 1: 10 EUR"), pdf_bytes("Invoice 2: 20 EUR " * 40)
    red, green = png_bytes((255, 0, 0)), jpeg_bytes()
    media_id = upload(daemon, stored_pdf, "application/pdf", pb.MODALITY_DOCUMENT, "invoice-2.pdf")
    stored = pb.Part(media=pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", media_id=media_id))
    reply = daemon.stub.Generate(pb.GenerateRequest(request=ask(
        media_part(pb.MODALITY_DOCUMENT, "application/pdf", inline_pdf, "invoice-1.pdf"),
        stored,
        media_part(pb.MODALITY_IMAGE, "image/png", red),
        media_part(pb.MODALITY_IMAGE, "image/jpeg", green),
        text_part("Sum the invoices; which image is red?"),
        system="Answer briefly.")), timeout=30)
    answer = reply.answer

    [call] = fake.message_calls()
    assert sent_key(call) == API_KEY
    body = call.json()
    assert body["model"] == "claude-sonnet-4-6" and body["stream"] is True
    assert body["max_tokens"] == 8192
    assert body["system"] == "Answer briefly."
    [turn] = body["messages"]
    assert turn["role"] == "user"
    assert [b["type"] for b in turn["content"]] == ["document", "document", "image", "image", "text"]
    blocks = media_blocks(body)
    assert [(b.type, b.media_type) for b in blocks] == [
        ("document", "application/pdf"), ("document", "application/pdf"), ("image", "image/png"),
        ("image", "image/jpeg")]
    assert [b.data for b in blocks] == [inline_pdf, stored_pdf, red, green]
    assert blocks[0].title == "invoice-1.pdf"

    assert answer.text == "Hello from fake Claude."
    route = answer.route
    assert (route.rule, route.provider, route.model) == ("documents", "anthropic", "claude-sonnet-4-6")
    assert list(route.fallbacks) == ["anthropic/claude-haiku-4-5"]
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (1500, 80)
    assert answer.usage.cost_usd == pytest.approx(cost((1500, 80), SONNET))


def test_stream_generate_deltas_usage_done(daemon, fake):
    fake.chunks = ["Claude", " streams", " well."]
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(
        request=ask(text_part("Stream please"), tags=("cheap",), max_output_tokens=300)), timeout=30))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "route_chosen" and kinds[-1] == "done"
    assert events[0].route_chosen.route.model == "claude-haiku-4-5"
    assert [e.text_delta.text for e in events if e.HasField("text_delta")] == ["Claude", " streams", " well."]
    usages = [e.usage for e in events if e.HasField("usage")]
    # the prompt as message_start reports it, before any text (billed if the client leaves), then the rest
    assert [(u.input_tokens, u.output_tokens) for u in usages] == [(1500, 1), (0, 79)]
    assert kinds.index("usage") < kinds.index("text_delta")
    assert sum(u.cost_usd for u in usages) == pytest.approx(cost((1500, 80), HAIKU))
    done = events[-1].done.answer
    assert done.text == "Claude streams well."
    assert (done.route.rule, done.route.provider, done.route.model) == ("cheap", "anthropic", "claude-haiku-4-5")
    assert done.usage.cost_usd == pytest.approx(cost((1500, 80), HAIKU))
    body = fake.last_body()
    assert (body["model"], body["max_tokens"]) == ("claude-haiku-4-5", 300)


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", pb.FINISH_REASON_STOP), ("max_tokens", pb.FINISH_REASON_LENGTH),
    ("refusal", pb.FINISH_REASON_REFUSAL), ("pause_turn", pb.FINISH_REASON_OTHER)])
def test_the_stop_reason_reaches_the_client(daemon, fake, stop_reason, finish):
    fake.stop_reason = stop_reason
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("hi"))), timeout=30).answer
    assert (answer.text, answer.finish_reason) == ("Hello from fake Claude.", finish)
    assert any("output limit" in n for n in answer.route.notes) == (stop_reason == "max_tokens")


def test_session_history_keeps_roles_and_order(daemon, fake):
    for question in ("My name is Ada.", "What is my name?"):
        daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part(question), session="s-1",
                                                            system="Be terse.")), timeout=30)
    first, second = (c.json() for c in fake.message_calls())
    assert first["system"] == "Be terse."
    assert [(m["role"], [b["text"] for b in m["content"]]) for m in second["messages"]] == [
        ("user", ["My name is Ada."]), ("assistant", ["Hello from fake Claude."]), ("user", ["What is my name?"])]
    assert "Be terse." in second["system"]


ERRORS = [
    (400, "invalid_request_error", {}, grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST"),
    (401, "authentication_error", {}, grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_AUTH"),
    (403, "permission_error", {}, grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_AUTH"),
    (404, "not_found_error", {}, grpc.StatusCode.NOT_FOUND, "PROVIDER_MODEL_NOT_FOUND"),
    (429, "rate_limit_error", {"retry-after": "7"}, grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
    (500, "api_error", {}, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (529, "overloaded_error", {}, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (529, "overloaded_error", {"retry-after": "7"}, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
]


def test_http_errors_map_to_grpc_statuses(start_daemon, fake):
    # its own daemon: a 429 and a 529 with Retry-After cool sonnet down, and it reads the log
    daemon = start(start_daemon, fake)
    for status, err_type, headers, code, reason in ERRORS:
        fake.fail_next_api(status, err_type, f"upstream failure {status}", headers)
        with pytest.raises(grpc.RpcError) as info:
            daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
        err = info.value
        assert err.code() == code, (status, err.details())
        got = error_details(err)
        assert (got.reason, got.metadata["provider"]) == (reason, "anthropic"), status
        assert f"upstream failure {status}" in err.details()
        if status in (401, 403):
            assert "check providers.anthropic.api_key (the key this section gives)" in err.details()
        assert got.retry_delay == (7 if headers else None)
    assert len(fake.message_calls()) == len(ERRORS)  # one call each: no SDK retries
    assert API_KEY not in daemon.logs()


def test_overloaded_sonnet_falls_back_to_haiku(daemon, fake):
    fake.fail_next_api(529, "overloaded_error", "Overloaded")
    pdf = pdf_bytes("Quarterly report")
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(
        media_part(pb.MODALITY_DOCUMENT, "application/pdf", pdf), text_part("Summarise."))), timeout=30).answer
    assert [c.json()["model"] for c in fake.message_calls()] == ["claude-sonnet-4-6", "claude-haiku-4-5"]
    assert media_blocks(fake.last_body())[0].data == pdf
    attempts = [(a.model, a.ok) for a in answer.route.attempts]
    assert attempts == [("claude-sonnet-4-6", False), ("claude-haiku-4-5", True)]
    assert "overloaded" in answer.route.attempts[0].error.lower()
    assert (answer.route.model, answer.text) == ("claude-haiku-4-5", "Hello from fake Claude.")
    assert answer.usage.cost_usd == pytest.approx(cost((1500, 80), HAIKU))


def test_overloaded_mid_stream_is_unavailable(daemon, fake):
    fake.stream_error = ("overloaded_error", "Overloaded")
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for event in daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("hi")), timeout=30):
            received.append(event)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(info.value).reason == "PROVIDER_UNAVAILABLE"
    assert [e.text_delta.text for e in received if e.HasField("text_delta")] == ["Hello"]


def test_a_configured_newer_model_is_routed_priced_and_capped(start_daemon, fake):
    """``providers.anthropic.models`` adds a model the plugin's catalogue does not have: rules route to
    it, the SDK calls it by name, its price makes the cost and its output limit caps max_tokens."""
    config = CONFIG.format(url=fake.url, timeout=10).replace(
        "    timeout: 10\n",
        "    timeout: 10\n    models:\n      - {name: claude-sonnet-5-5, max_output_tokens: 1000, context_tokens: 1000000,"
        " price: {input_per_mtok: 4, output_per_mtok: 20, cached_input_per_mtok: 0.4}}\n",
    ).replace("default: anthropic/claude-sonnet-4-6", "default: anthropic/claude-sonnet-5-5")
    daemon = start_daemon(config, env={"ANTHROPIC_TEST_KEY": API_KEY})
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("hi"), max_output_tokens=5000)),
                                  timeout=30).answer
    assert (answer.route.provider, answer.route.model) == ("anthropic", "claude-sonnet-5-5")
    assert answer.usage.cost_usd == pytest.approx(cost((1500, 80), (4.0, 20.0)))
    assert (fake.last_body()["model"], fake.last_body()["max_tokens"]) == ("claude-sonnet-5-5", 1000)
    listed = {m.name: m for m in providers_by_name(daemon.stub)["anthropic"].models}
    assert listed["claude-sonnet-5-5"].context_tokens == 1_000_000
    assert listed["claude-sonnet-5-5"].price.cached_input_per_mtok == pytest.approx(0.4)
    assert "claude-sonnet-4-6" in listed  # the built-in catalogue stays


def test_bad_key_is_failed_precondition_and_never_leaks(start_daemon, fake):
    secret = "sk-ant-e2e-wrong-key-do-not-leak-77"
    daemon = start(start_daemon, fake, key=secret)
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    got = error_details(err)
    assert (got.reason, got.metadata["provider"]) == ("PROVIDER_AUTH", "anthropic")
    assert "check providers.anthropic.api_key (the key this section gives)" in err.details()
    assert sent_key(fake.message_calls()[0]) == secret  # the fake did get it
    everything = everything_said(err, daemon)
    assert secret not in everything and secret[:15] not in everything


def test_upstream_timeout_is_unavailable(start_daemon, own_fake):
    daemon = start(start_daemon, own_fake, timeout=0.5)
    own_fake.delay = 3.0
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(info.value).reason == "PROVIDER_UNAVAILABLE" and "did not answer in time" in info.value.details()


def test_providers_list_shows_the_catalogue(start_daemon, fake):
    daemon = start(start_daemon, fake)  # its own: it reads ListProviders
    providers = providers_by_name(daemon.stub)
    anthropic = providers["anthropic"]
    assert anthropic.state == pb.PROVIDER_STATE_READY and anthropic.plugin == "anthropic"
    models = {m.name: m for m in anthropic.models}
    assert {"claude-sonnet-4-6", "claude-opus-4-5", "claude-haiku-4-5"} <= set(models)
    assert "claude-opus-4-1" not in models  # retired on 2026-08-05
    for model in models.values():
        assert set(model.inputs) == {pb.MODALITY_TEXT, pb.MODALITY_IMAGE, pb.MODALITY_DOCUMENT}
    assert models["claude-sonnet-4-6"].context_tokens == 1_000_000
    assert models["claude-haiku-4-5"].context_tokens == 200_000
    assert (models["claude-opus-4-5"].price.input_per_mtok, models["claude-opus-4-5"].price.output_per_mtok) == (
        5.0, 25.0)


def test_without_key_the_provider_is_not_configured(start_daemon, fake):
    daemon = start(start_daemon, fake, key="")
    providers = providers_by_name(daemon.stub)
    assert providers["anthropic"].state == pb.PROVIDER_STATE_NOT_CONFIGURED
    # the file's ${ANTHROPIC_TEST_KEY} is named: an unset or empty one never falls back to ANTHROPIC_API_KEY
    assert "providers.anthropic.api_key: ${ANTHROPIC_TEST_KEY} is empty" in providers["anthropic"].reason
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert fake.message_calls() == []


def test_an_extra_instance_is_a_second_account_next_to_anthropic(start_daemon, fake):
    """providers.claude-eu with plugin: anthropic is a second provider made by the same plugin, with its
    own key and address; ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL stay with the anthropic provider."""
    eu_key = "sk-ant-eu-account-5c3a"
    with FakeAnthropic(api_key=eu_key) as eu:
        daemon = start_daemon(instance_config("anthropic", "claude-eu", eu.url, "timeout: 10",
                                              "claude-eu/claude-haiku-4-5", "anthropic/claude-sonnet-4-6"),
                              env={"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake.url, "INSTANCE_KEY": eu_key})
        mine = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("mine"), tags=("instance",))), timeout=30).answer
        theirs = daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("theirs"))), timeout=30).answer
        assert (mine.route.provider, mine.route.model, mine.text) == ("claude-eu", "claude-haiku-4-5",
                                                                      "Hello from fake Claude.")
        assert (theirs.route.provider, theirs.route.model) == ("anthropic", "claude-sonnet-4-6")
        [eu_call] = eu.message_calls()
        assert sent_key(eu_call) == eu_key and eu_call.json()["model"] == "claude-haiku-4-5"
        [own_call] = fake.message_calls()
        assert sent_key(own_call) == API_KEY and own_call.json()["model"] == "claude-sonnet-4-6"

        assert_instance_listed(daemon.stub, "anthropic", "claude-eu")


def test_a_stream_cut_before_any_text_falls_back(daemon, fake):
    """The body ends cleanly after message_start (a dead server behind a proxy): no message_stop, so
    the call failed and the fallback answers, not an empty Done."""
    fake.truncate_next(2)  # message_start, content_block_start
    answer = daemon.stub.Generate(pb.GenerateRequest(request=ask(
        media_part(pb.MODALITY_DOCUMENT, "application/pdf", pdf_bytes("Report")), text_part("Summarise."))),
        timeout=30).answer
    assert [c.json()["model"] for c in fake.message_calls()] == ["claude-sonnet-4-6", "claude-haiku-4-5"]
    attempts = [(a.model, a.ok) for a in answer.route.attempts]
    assert attempts == [("claude-sonnet-4-6", False), ("claude-haiku-4-5", True)]
    assert "no message_stop" in answer.route.attempts[0].error
    assert (answer.route.model, answer.text, answer.finish_reason) == (
        "claude-haiku-4-5", "Hello from fake Claude.", pb.FINISH_REASON_STOP)
    # the cut call read its prompt (message_start's usage) and is billed for it: a failed step
    assert [(s.purpose, s.model) for s in answer.route.steps] == [
        ("answer (failed)", "claude-sonnet-4-6"), ("answer", "claude-haiku-4-5")]
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (3000, 81)


@pytest.mark.parametrize("close", [False, True], ids=["chunked", "connection-close"])
def test_a_stream_cut_after_some_text_is_unavailable_and_keeps_no_turn(daemon, fake, close):
    """The body ends cleanly mid-answer: the client has the deltas, then UNAVAILABLE; the cut answer is
    not stored as the session's assistant turn."""
    fake.truncate_next(5, close=close)  # message_start, content_block_start, ping, "Hello", " from"
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for event in daemon.stub.StreamGenerate(pb.StreamGenerateRequest(
                request=ask(text_part("Stream please"), session=f"cut-{close}")), timeout=30):
            received.append(event)
    assert [e.text_delta.text for e in received if e.HasField("text_delta")] == ["Hello", " from"]
    assert not any(e.HasField("done") for e in received)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    got = error_details(info.value)
    assert (got.reason, got.metadata["provider"]) == ("PROVIDER_UNAVAILABLE", "anthropic")
    assert "the stream ended before the answer was complete" in info.value.details()
    [usage] = [e.usage for e in received if e.HasField("usage")]  # the prompt read is billed all the same
    assert usage.input_tokens > 0 and usage.cost_usd > 0

    daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("Again?"), session=f"cut-{close}")),
                         timeout=30)
    assert [(m["role"], [b["text"] for b in m["content"]]) for m in fake.last_body()["messages"]] == [
        ("user", ["Again?"])]


def long_pdf(pages: int, label: str) -> bytes:
    buf = io.BytesIO()
    doc = canvas.Canvas(buf)
    for page in range(pages):
        doc.drawString(72, 720, f"{label} page {page + 1}")
        doc.showPage()
    doc.save()
    return buf.getvalue()


def pdf_turn(pdf: bytes, question: str, session: str) -> pb.MultimodalRequest:
    """A PDF turn for claude-haiku-4-5 (the ``cheap`` rule): a 200k-token model, 100 PDF pages per request."""
    return ask(media_part(pb.MODALITY_DOCUMENT, "application/pdf", pdf), text_part(question), session=session,
               tags=("cheap",))


def test_a_session_over_claudes_pdf_pages_drops_older_history_and_goes_on(daemon, fake):
    """Three 35-page PDFs are 105 pages: over Claude Haiku 4.5's 100 pages per request, though far under its
    context. The turn is refused before sending, tried again without the oldest turn, and answered;
    so is the next one, streamed (the history on the router's side is untouched)."""
    pdfs = [long_pdf(35, f"report {n}") for n in range(1, 5)]
    for n in (0, 1):
        daemon.stub.Generate(pb.GenerateRequest(request=pdf_turn(pdfs[n], f"Read report {n + 1}.", "reports")),
                             timeout=30)

    answer = daemon.stub.Generate(pb.GenerateRequest(request=pdf_turn(pdfs[2], "Compare them.", "reports")),
                                  timeout=30).answer
    assert (answer.route.model, answer.text) == ("claude-haiku-4-5", "Hello from fake Claude.")
    assert len(fake.message_calls()) == 3  # the refused request was never sent
    assert [b.data for b in media_blocks(fake.last_body())] == [pdfs[1], pdfs[2]]
    assert [m["role"] for m in fake.last_body()["messages"]] == ["user", "assistant", "user"]
    [note] = [n for n in answer.route.notes if "history trimmed" in n]
    assert "dropped the 2 oldest message(s) of session 'reports'" in note
    assert "105 PDF pages" in note and "anthropic/claude-haiku-4-5" in note
    assert [(a.model, a.ok) for a in answer.route.attempts] == [("claude-haiku-4-5", False),
                                                                 ("claude-haiku-4-5", True)]
    assert "105 PDF pages" in answer.route.attempts[0].error
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (1500, 80)  # the refusal cost nothing
    assert answer.usage.cost_usd == pytest.approx(cost((1500, 80), HAIKU))

    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(
        request=pdf_turn(pdfs[3], "And this one?", "reports")), timeout=30))
    assert [e.text_delta.text for e in events if e.HasField("text_delta")] == ["Hello", " from", " fake", " Claude."]
    done = events[-1].done.answer
    assert done.text == "Hello from fake Claude." and done.route.model == "claude-haiku-4-5"
    assert any("refused the request for its size" in n for n in done.route.notes)
    assert [b.data for b in media_blocks(fake.last_body())] == [pdfs[2], pdfs[3]]
    assert [(u.input_tokens, u.output_tokens) for u in (e.usage for e in events if e.HasField("usage"))] == [
        (1500, 1), (0, 79)]


def test_a_current_turn_over_the_limit_alone_still_fails_and_keeps_no_turn(daemon, fake):
    """Dropping history cannot help a turn too large by itself: every target refuses it, as before. Two PDFs of
    51 pages: each within Haiku's 100 pages (routing plans it), 102 together (the plugin refuses them)."""
    daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("Hello."), session="big")), timeout=30)
    halves = [media_part(pb.MODALITY_DOCUMENT, "application/pdf", long_pdf(51, f"huge {n}")) for n in (1, 2)]
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=ask(*halves, text_part("Read them."), session="big",
                                                            tags=("cheap",))), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(info.value).reason == "INPUT_TOO_LARGE"
    assert "102 PDF pages" in info.value.details()
    assert len(fake.message_calls()) == 1  # only the first turn reached Claude

    daemon.stub.Generate(pb.GenerateRequest(request=ask(text_part("Still there?"), session="big")), timeout=30)
    assert [(m["role"], [b["text"] for b in m["content"]]) for m in fake.last_body()["messages"]] == [
        ("user", ["Hello."]), ("assistant", ["Hello from fake Claude."]), ("user", ["Still there?"])]


def test_a_conversation_ending_with_the_assistant_is_answered_by_claude_sonnet_4_6(daemon, fake):
    """Claude 4.6 refuses a final assistant turn (prefill) with 400; the plugin sends the partial answer as
    user text asking Claude to continue it, so the default target answers instead of INVALID_ARGUMENT."""
    request = pb.MultimodalRequest(messages=[
        pb.Message(role=pb.ROLE_USER, parts=[text_part("Name a colour.")]),
        pb.Message(role=pb.ROLE_ASSISTANT, parts=[text_part("The colour is ")]),
    ])
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
    assert (answer.route.model, answer.text) == ("claude-sonnet-4-6", "Hello from fake Claude.")
    [turn] = fake.last_body()["messages"]
    assert turn["role"] == "user"
    assert [b["text"] for b in turn["content"]] == [
        "Name a colour.",
        "(Your answer so far follows. Continue it from exactly where it stops, without repeating it.)\n\n"
        "The colour is"]
