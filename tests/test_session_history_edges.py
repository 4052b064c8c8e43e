"""A session's history at the edges: what it brings that the turn did not (QA chat report, s19-s20).

The real daemon (``start_daemon``) with the testkit's fake provider: a session whose earlier turn held a
video that no target takes now is refused with the history named, not "this request"; ExplainRoute's
trace says where a modality comes from.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import mp4, png
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI, Rejected

#: A text-only rule, the echo model (text and images) as the default, and no video bridge: a session
#: that once held a video (answered by an override) can only be answered without it.
NO_VIDEO = """
providers:
  fake: {api_key: k}
routes:
  - name: general
    match: {inputs_only: [text]}
    use: fake/small
default: fake/echo
bridges:
  video: []
"""


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer


def test_a_history_no_target_takes_is_named_with_what_to_do(start_daemon) -> None:
    """Turn 2 is plain text, the video is turn 1's: NO_ROUTE says the video comes from the session's history,
    names request.session_id and points to ResetSession; ExplainRoute says the same. The same text without the
    session is answered."""
    daemon = start_daemon(NO_VIDEO)
    video = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", data=mp4(), filename="clip.mp4")
    first = text_request("what happens?", media=[video], session_id="nr",
                         hints=pb.RoutingHints(provider="fake", model="omni"))
    assert generate(daemon, first).route.model == "omni"
    follow_up = text_request("thanks, next question", session_id="nr")
    for call in (lambda: generate(daemon, follow_up),
                 lambda: daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=follow_up), timeout=30)):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        got = error_details(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_ROUTE")
        assert got.message.startswith("the session's history holds video from earlier turns"), got.message
        assert "ResetSession" in got.message and "without session_id" in got.message
        assert "(text, video, task chat; video from the session's history)" in got.message
        [(field, problem)] = got.violations
        assert field == "request.session_id" and "video" in problem and "ResetSession" in problem
    alone = text_request("thanks, next question")
    assert generate(daemon, alone).route.model == "small"


def test_a_request_no_target_takes_for_its_own_media_does_not_blame_the_history(start_daemon) -> None:
    """A turn that brings the video itself is refused as before: its session is not the cause."""
    daemon = start_daemon(NO_VIDEO)
    generate(daemon, text_request("hello", session_id="own"))
    video = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", data=mp4(), filename="clip.mp4")
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, text_request("what happens?", media=[video], session_id="own"))
    got = error_details(caught.value)
    assert got.reason == "NO_ROUTE" and got.message.startswith("no provider can take this request (text, video")
    assert "history" not in got.message and got.violations == []


def test_the_trace_says_which_modalities_come_from_the_history(start_daemon) -> None:
    """A text question on a session holding a photo: the text-only rule is not matched "request has [image,
    text]", which now says the image comes from the session's history."""
    daemon = start_daemon(NO_VIDEO)
    photo = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png("hi"))
    generate(daemon, text_request("what is this?", media=[photo], session_id="photo"))
    follow_up = text_request("and its colour?", session_id="photo")
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=follow_up), timeout=30).route
    [general] = [t for t in route.trace if t.rule == "general"]
    assert general.reason == ("needs only [text], request has [image, text] (image from the session's history)")
    assert route.model == "echo"


class ExpiringUrls(FakeOpenAI):
    """The fake Chat Completions API refusing an image given by http(s) URL once ``expired`` is set, as OpenAI
    answers 400 "Error while downloading ..." for a presigned URL past its expiry."""

    expired = False

    def _check_chat(self, body: dict) -> None:
        super()._check_chat(body)
        if not self.expired:
            return
        for message in body["messages"]:
            for part in message["content"] if isinstance(message["content"], list) else ():
                if part.get("type") == "image_url" and part["image_url"]["url"].startswith("http"):
                    raise Rejected(400, f"Error while downloading {part['image_url']['url']}.", "invalid_image_url")


def test_a_provider_refusal_of_a_turn_whose_history_sends_urls_says_so(start_daemon) -> None:
    """Turn 1 gives a photo by a presigned URL; once it expires every text turn is refused by the provider. The
    error says the history sent that URL again, that it must stay valid for the session's life, and that
    ResetSession starts over, before the provider's words; the same refusal without history says nothing of it."""
    with ExpiringUrls() as fake:
        daemon = start_daemon(f"""
server: {{allow_urls: true}}
providers:
  openai: {{api_key: "{OPENAI_KEY}", base_url: "{fake.base_url}", timeout: 20}}
default: openai/gpt-4o
""")
        url = "https://bucket.example.com/photo.png?X-Amz-Signature=abcdef&X-Amz-Expires=900"
        photo = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", url=url)
        generate(daemon, text_request("what's this?", media=[photo], session_id="url"))
        fake.expired = True
        with pytest.raises(grpc.RpcError) as caught:
            generate(daemon, text_request("turn 2, later", session_id="url"))
        got = error_details(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST")
        assert got.message.startswith("openai: (this turn's session history sent again 1 media URL given on "
                                      "earlier turns, which must stay valid for the session's life; if one no "
                                      "longer is, ResetSession starts the session over) "), got.message
        assert "Error while downloading https://bucket.example.com/photo.png" in got.message
        assert got.metadata["history_urls"] == "1" and got.metadata["provider"] == "openai"
        [(field, problem)] = got.violations
        assert field == "request.session_id" and "ResetSession" in problem
        with pytest.raises(grpc.RpcError) as caught:  # the URL in the request itself: no word of a history
            generate(daemon, text_request("what's this?", media=[photo], session_id="other"))
        got = error_details(caught.value)
        assert got.reason == "PROVIDER_BAD_REQUEST" and "history" not in got.message and got.violations == []


def noise_png(seed: int) -> bytes:
    """A PNG of random pixels (it does not compress): about 30 kB."""
    import io
    import random

    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (100, 100), random.Random(seed).randbytes(100 * 100 * 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_media_limit_counts_the_history_and_leaves_its_oldest_media_out(start_daemon) -> None:
    """server.max_request_media_bytes holds two photos: a session sending one a turn has its oldest turn left
    out on the third (the provider gets two photos, not three), with a route note; a request whose own media are
    over the limit is still refused."""
    photos = [noise_png(n) for n in range(3)]
    limit = len(photos[0]) + len(photos[1]) + len(photos[2]) // 2
    daemon = start_daemon(f"""
server: {{max_request_media_bytes: {limit}}}
providers:
  fake: {{api_key: k}}
default: fake/omni
""")

    def photo(n: int) -> pb.Media:
        return pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=photos[n])

    first = generate(daemon, text_request("first", media=[photo(0)], session_id="album"))
    second = generate(daemon, text_request("second", media=[photo(1)], session_id="album"))
    assert "[history=1 image=2" in second.text and not [n for n in second.route.notes if "trimmed" in n]
    third = generate(daemon, text_request("third", media=[photo(2)], session_id="album"))
    assert "[history=1 image=2" in third.text, third.text  # turn 1 (its question and answer) left out
    [note] = [n for n in third.route.notes if n.startswith("history trimmed")]
    assert note == (f"history trimmed: dropped the 2 oldest message(s) of session 'album' to keep the media of the "
                    f"request and its history within {limit} bytes (server.max_request_media_bytes)")
    explained = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(
        request=text_request("fourth", media=[photo(0)], session_id="album")), timeout=30).route
    assert any(n.startswith("history trimmed: dropped the 4 oldest") for n in explained.notes)
    assert "image=1" in first.text
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, text_request("all", media=[photo(0), photo(1), photo(2)], session_id="album"))
    assert error_details(caught.value).reason == "PAYLOAD_TOO_LARGE"


def test_a_recording_of_no_samples_is_refused_before_any_provider_is_called(start_daemon) -> None:
    """A WAV header with no samples (measured 0 s), inline or uploaded, is INVALID_ARGUMENT naming its part, as
    an empty media.data is: Whisper (the real SDK against the fake) is never called, so nothing is paid for. A
    WAV of samples is transcribed."""
    from media_factory import wav, wav_of

    with FakeOpenAI() as fake:
        daemon = start_daemon(f"""
providers:
  openai: {{api_key: "{OPENAI_KEY}", base_url: "{fake.base_url}", timeout: 20}}
routes:
  - {{name: speech, match: {{task: [transcribe]}}, use: openai/whisper-1}}
default: openai/gpt-4o
""")
        empty = wav_of(b"")
        upload = iter([pb.UploadMediaRequest(metadata=pb.UploadMetadata(
            modality=pb.MODALITY_AUDIO, mime_type="audio/wav", size_bytes=len(empty))), pb.UploadMediaRequest(chunk=empty)])
        stored = daemon.stub.UploadMedia(upload, timeout=30).media_id
        transcribe = pb.Options(task=pb.TASK_TRANSCRIBE)
        for media, question in ((pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=empty), ""),
                                (pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", media_id=stored), "what?")):
            for options in (transcribe, pb.Options()):
                request = text_request(question, media=[media], options=options)
                with pytest.raises(grpc.RpcError) as caught:
                    generate(daemon, request)
                got = error_details(caught.value)
                assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
                [(field, problem)] = got.violations
                assert field == "request.messages[0].parts[0].media" and "measured duration is 0 s" in problem
        assert fake.requests == []
        answer = generate(daemon, text_request("", media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav",
                                                                   data=wav(1.0))], options=transcribe))
        assert answer.route.model == "whisper-1" and len(fake.requests) == 1


def test_list_providers_gives_every_declared_capability_of_a_model(start_daemon) -> None:
    """ListProviders gave no output limits, URL inputs, media size limit or temperature: a client could not
    tell that whisper-1 takes no media by URL and files of 25 MiB at most, or that a model takes no temperature
    (an operator's ``takes_temperature: false``). A model that declares no ``url_inputs`` takes every media
    modality of its inputs by URL."""
    from mmrouter_openai.models import BUILTIN

    daemon = start_daemon(f"""
providers:
  openai:
    api_key: "{OPENAI_KEY}"
    models:
      - {{name: my-reasoner, inputs: [text, image], takes_temperature: false, max_output_tokens: 1000,
         price: {{input_per_mtok: 1, output_per_mtok: 4}}}}
  fake: {{api_key: k}}
default: openai/gpt-4o
""")
    listed = {(p.name, m.name): m for p in daemon.stub.ListProviders(pb.ListProvidersRequest(), timeout=30).providers
              for m in p.models}
    builtin = {e.info.name: e.info for e in BUILTIN}
    for name in ("gpt-4o", "whisper-1"):
        info, got = builtin[name], listed["openai", name]
        assert got.max_output_tokens == info.max_output_tokens and got.max_media_bytes == info.max_media_bytes
        assert got.default_max_output_tokens == info.default_max_output_tokens and got.takes_temperature
    assert list(listed["openai", "gpt-4o"].url_inputs) == [pb.MODALITY_IMAGE]
    whisper = listed["openai", "whisper-1"]
    assert list(whisper.url_inputs) == [] and 0 < whisper.max_media_bytes <= 25 * 2**20  # its upload limit
    reasoner = listed["openai", "my-reasoner"]
    assert not reasoner.takes_temperature and reasoner.default_max_output_tokens == 1000
    omni = listed["fake", "omni"]  # declares no url_inputs
    assert set(omni.url_inputs) == {pb.MODALITY_IMAGE, pb.MODALITY_AUDIO, pb.MODALITY_VIDEO, pb.MODALITY_DOCUMENT}
    assert omni.default_max_output_tokens == 4096 and omni.max_output_tokens == 0


@pytest.mark.parametrize("bad", ["chat\x1b[31m", "line\nbreak", "para\u2029graph"])
def test_a_session_id_with_a_control_character_is_refused_for_what_it_truly_breaks(start_daemon, bad) -> None:
    """The refusal said "which breaks a log line", yet a session id is never logged (only a hash of it)."""
    daemon = start_daemon(NO_VIDEO)
    for call in (lambda: generate(daemon, text_request("hi", session_id=bad)),
                 lambda: daemon.stub.ResetSession(pb.ResetSessionRequest(session_id=bad), timeout=30)):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        got = error_details(caught.value)
        [(field, problem)] = got.violations
        assert got.reason == "INVALID_REQUEST" and field.endswith("session_id")
        assert "log line" not in problem and "log line" not in got.message
        assert "which no session id may hold (it breaks the line a client shows the id on; the daemon logs only a " \
               "hash of it): send the id without it" in problem


def test_a_transcription_of_the_historys_recording_needs_no_message(start_daemon) -> None:
    """The proto said such a transcription "needs none" (no user message), yet an empty messages list was
    refused ("at least one message is required"): a client had to add a dummy system message. Without a session,
    or with chat, an empty list is still refused; a session without a recording is refused as before."""
    from media_factory import wav

    daemon = start_daemon("""
providers: {fake: {api_key: k}}
routes:
  - {name: speech, match: {task: [transcribe]}, use: fake/ears}
  - {name: everything, use: fake/omni}
""")
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(1.0))
    generate(daemon, text_request("what is said?", media=[audio], session_id="voice"))
    transcribe = pb.Options(task=pb.TASK_TRANSCRIBE)
    answer = generate(daemon, pb.MultimodalRequest(session_id="voice", options=transcribe))
    assert answer.route.model == "ears" and "bytes heard" in answer.text
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(
        request=pb.MultimodalRequest(session_id="voice", options=transcribe)), timeout=30).route
    assert route.model == "ears"
    generate(daemon, text_request("hello", session_id="text-only"))
    for request, field in ((pb.MultimodalRequest(options=transcribe), "request.messages"),
                           (pb.MultimodalRequest(session_id="voice"), "request.messages"),
                           (pb.MultimodalRequest(session_id="text-only", options=transcribe), "request.options.task")):
        with pytest.raises(grpc.RpcError) as caught:
            generate(daemon, request)
        got = error_details(caught.value)
        assert got.reason == "INVALID_REQUEST" and got.violations[0][0] == field, got


def test_an_upload_without_a_mime_type_is_given_an_example_of_its_own_modality(start_daemon) -> None:
    """An audio upload without a MIME type was told "required, e.g. video/mp4"."""
    daemon = start_daemon(NO_VIDEO)
    for modality, example in ((pb.MODALITY_AUDIO, "audio/mpeg"), (pb.MODALITY_IMAGE, "image/png"),
                              (pb.MODALITY_VIDEO, "video/mp4"), (pb.MODALITY_DOCUMENT, "application/pdf")):
        upload = iter([pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=modality, size_bytes=4)),
                       pb.UploadMediaRequest(chunk=b"abcd")])
        with pytest.raises(grpc.RpcError) as caught:
            daemon.stub.UploadMedia(upload, timeout=30)
        got = error_details(caught.value)
        assert got.reason == "INVALID_REQUEST" and got.violations == [("metadata.mime_type", f"required, e.g. {example}")]
