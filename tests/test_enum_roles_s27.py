"""Enum values a client library turned into 0 (QA node27 F1). protobufjs (Node.js) sends an enum name it does
not know, such as OpenAI's role 'assistant' or the modality 'IMAGE', as 0 without a word. A conversation whose
roles were all ROLE_UNSPECIFIED reached the provider as the user's words alone (the system prompt and the model's
earlier answers too), and the call succeeded: a request of more than one message with a role unset is now
refused. A request of one message still leaves it unset for the user's. The modality refusals name the values a
client sends (MODALITY_IMAGE...), not IMAGE or image, which the client had sent. Through the daemon of the
embedded config, with the real OpenAI SDK against its fake."""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import mp4, png
from mmrouter.v1 import router_pb2 as pb
from test_media import upload

from router import wire
from router.media import modality_name
from router.types import Modality

SYSTEM, USER, ASSISTANT, UNSET = pb.ROLE_SYSTEM, pb.ROLE_USER, pb.ROLE_ASSISTANT, pb.ROLE_UNSPECIFIED
MEDIA_MODALITIES = "must be MODALITY_IMAGE, MODALITY_AUDIO, MODALITY_VIDEO or MODALITY_DOCUMENT"


def conversation(*roles: int) -> pb.MultimodalRequest:
    """The conversation of QA's Node.js client (a system prompt, a question, its answer and the next
    question), its messages with ``roles``."""
    texts = ["You are terse.", "My name is Bob.", "Hello Bob.", "What is my name?"]
    return pb.MultimodalRequest(messages=[pb.Message(role=role, parts=[pb.Part(text=text)])
                                          for role, text in zip(roles, texts, strict=True)])


def refused(daemon, request: pb.MultimodalRequest) -> list[tuple[str, str]]:
    """The field violations of ``request`` refused by Generate (INVALID_ARGUMENT)."""
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), details
    return details.violations


@pytest.mark.parametrize(("roles", "first"), [
    ((UNSET, UNSET, UNSET, UNSET), 0),         # 'system', 'user', 'assistant', 'user' from protobufjs
    ((SYSTEM, UNSET, UNSET, UNSET), 1),        # ROLE_SYSTEM written right, the rest OpenAI's way
    ((SYSTEM, USER, ASSISTANT, UNSET), 3),
])
def test_a_conversation_with_a_role_unset_is_refused_and_reaches_no_provider(shared, roles, first) -> None:
    daemon, fakes = shared
    violations = refused(daemon, conversation(*roles))
    assert violations == [(f"request.messages[{first}].role", wire.UNSET_ROLE)]
    assert "ROLE_ASSISTANT" in wire.UNSET_ROLE and "'assistant'" in wire.UNSET_ROLE
    with pytest.raises(grpc.RpcError) as caught:  # the dry run says the same
        daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=conversation(*roles)), timeout=60)
    assert error_details(caught.value).violations == violations
    assert fakes["openai"].chat_requests() == []


def test_a_conversation_with_its_roles_reaches_the_provider_as_written(shared) -> None:
    daemon, fakes = shared
    answer = daemon.stub.Generate(pb.GenerateRequest(request=conversation(SYSTEM, USER, ASSISTANT, USER)),
                                  timeout=60).answer
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    sent = fakes["openai"].chat_requests()[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]


def test_a_single_message_without_a_role_is_the_users(shared) -> None:
    daemon, fakes = shared
    request = text_request("What is the capital of France?")
    request.messages[0].role = UNSET
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer
    assert answer.route.provider == "openai"
    [sent] = [m for m in fakes["openai"].chat_requests()[-1]["messages"] if m["role"] != "system"]
    assert sent["role"] == "user"
    assert fakes["openai"].parts(sent)[-1].text == "What is the capital of France?"


def test_a_media_part_without_its_modality_is_told_the_enum_names(shared) -> None:
    daemon, fakes = shared
    unset = pb.Media(mime_type="image/png", data=png("x"))  # modality 'IMAGE' from protobufjs: 0
    as_text = pb.Media(modality=pb.MODALITY_TEXT, mime_type="image/png", data=png("x"))
    violations = refused(daemon, text_request("What is it?", media=[unset, as_text]))
    assert [field for field, _ in violations] == ["request.messages[0].parts[0].media.modality",
                                                  "request.messages[0].parts[1].media.modality"]
    assert violations[0][1].startswith(f"{MEDIA_MODALITIES}; it is unset (MODALITY_UNSPECIFIED, 0)")
    assert "'IMAGE'" in violations[0][1]
    assert violations[1][1] == f"{MEDIA_MODALITIES}, not MODALITY_TEXT"
    assert fakes["openai"].chat_requests() == []


def test_an_upload_as_text_is_told_the_enum_names(shared) -> None:
    daemon, _ = shared
    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon.stub, [b"some text"], modality=pb.MODALITY_TEXT, mime="text/plain")
    assert error_details(caught.value).violations == [("metadata.modality", f"{MEDIA_MODALITIES}, not MODALITY_TEXT")]


def test_an_upload_named_as_another_modality_is_told_the_enum_name_to_send(shared) -> None:
    daemon, _ = shared
    video_id = upload(daemon.stub, [mp4(frames=3)], modality=pb.MODALITY_VIDEO, mime="video/mp4").media_id
    violations = refused(daemon, text_request("What is it?", media=[pb.Media(modality=pb.MODALITY_IMAGE,
                                                                              media_id=video_id)]))
    assert violations == [("request.messages[0].parts[0].media.modality",
                           f"media {video_id} was uploaded as video: send its modality as MODALITY_VIDEO (or as "
                           "MODALITY_AUDIO, for its sound)")]


def test_the_modality_names_in_errors_are_the_protos() -> None:
    assert all(pb.Modality.Value(modality_name(m)) == wire.modality_to_proto(m) for m in Modality)


def test_an_upload_without_its_modality_is_told_the_enum_names(shared) -> None:
    daemon, _ = shared
    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon.stub, [png("u")], modality=pb.MODALITY_UNSPECIFIED, mime="image/png")
    [(field, description)] = error_details(caught.value).violations
    assert field == "metadata.modality" and description.startswith(f"{MEDIA_MODALITIES}; it is unset")
