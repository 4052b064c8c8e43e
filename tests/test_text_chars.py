"""Text in every script, and provider text that is not valid Unicode (router/text.py).

1. A provider's error message holding a lone surrogate (a JSON ``"\\ud83d"`` escape: a gateway that cut
   a message quoting the user's emoji at N UTF-16 units) made the call INTERNAL, even after a fallback
   answered, and ``ListProviders`` INTERNAL: protobuf cannot encode it. It arrives with U+FFFD.
2. ``str.isprintable()`` refused ordinary characters in names: U+202F (every macOS screenshot's name),
   U+3000, NBSP, ZWNJ/ZWJ, RLM/LRM, emoji newer than Python's Unicode tables. Only what breaks a log line
   or misleads its reader is refused now, and the message names the character.
3. A surrogate pair split across two stream events (a JavaScript server cutting by UTF-16 units) became
   two U+FFFD; it arrives whole.

The daemon runs for real (tests/conftest.py) against the fake OpenAI and Anthropic servers (tests/fakes),
which the official SDKs call, or with the testkit's scripted provider.
"""

# ruff: noqa: RUF001 (Arabic-script letters are the subject, not Latin look-alikes)
from __future__ import annotations

import json

import grpc
import pytest
from grpc_helpers import error_details, providers_by_name, text_request
from media_factory import png
from mmrouter.v1 import router_pb2 as pb
from test_observability import FALLBACK

from router.config import parse_config
from router.contract import PairJoiner
from router.errors import ConfigError, ProviderUnavailable
from router.text import describe, escaped, held_back, json_escape, name_problem, refused_at, valid_text
from router.types import TextDelta
from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import error_body

#: Names people write, each refused by ``str.isprintable()`` before.
NAMES = {
    "macOS screenshot (U+202F)": "Screenshot 2026-11-27 at 10.00.00\u202fAM.png",
    "ideographic space": "会議\u3000メモ",
    "Persian ZWNJ": "می\u200cخواهم",
    "ZWJ family": "👨\u200d👩\u200d👧",
    "rainbow flag": "🏳️\u200d🌈",
    "Hebrew RLM": "שלום\u200f",
    "LRM": "note\u200e",
    "Hindi ZWJ": "क्\u200dष",
    "no-break space": "a\u00a0b",
    "Unicode 15 emoji": "chat-\U0001fa77",
    "Scotland flag (tag characters)": "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "BOM": "\ufeffnotes",
}

#: Characters still refused in names, with how the message names them.
REFUSED = {
    "\n": "U+000A LINE FEED",
    "\t": "U+0009 CHARACTER TABULATION",
    "\x1b": "U+001B ESCAPE",
    "\x7f": "U+007F DELETE",
    "\x85": "U+0085 NEXT LINE",
    "\x9b": "U+009B (a control character)",
    "\u2028": "U+2028 LINE SEPARATOR",
    "\u2029": "U+2029 PARAGRAPH SEPARATOR",
    "\u202a": "U+202A LEFT-TO-RIGHT EMBEDDING",
    "\u202e": "U+202E RIGHT-TO-LEFT OVERRIDE",
    "\u2066": "U+2066 LEFT-TO-RIGHT ISOLATE",
    "\u2069": "U+2069 POP DIRECTIONAL ISOLATE",
    "\ud83d": "U+D83D (a lone surrogate)",
}

#: What a gateway that cut an error message quoting an emoji at N UTF-16 units sends.
CUT_MESSAGE = "overloaded while reading \u300c\ud83d\u300d"


# -- router/text.py ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES.keys())
def test_names_people_write_are_taken(name: str) -> None:
    assert refused_at(name) is None and name_problem(name) is None
    assert escaped(name) is name


@pytest.mark.parametrize(("char", "said"), REFUSED.items(), ids=[ascii(c) for c in REFUSED])
def test_a_refused_character_is_named_with_its_position(char: str, said: str) -> None:
    assert describe(char) == said
    assert refused_at(f"ab{char}c") == 2
    problem = name_problem(f"ab{char}c")
    assert problem is not None and problem.startswith(f"has {said} at character 3, which ")


def test_the_reason_says_what_the_character_does() -> None:
    assert name_problem("a\nb") == "has U+000A LINE FEED at character 2, which breaks a log line"
    assert name_problem("invoice_\u202egnp.exe") == ("has U+202E RIGHT-TO-LEFT OVERRIDE at character 9, which "
                                                     "reorders how the text after it is shown")
    assert name_problem("x\udc80") == "has U+DC80 (a lone surrogate) at character 2, which no UTF-8 text holds"


def test_escaped_writes_only_refused_characters_as_escapes() -> None:
    answer = "東京\u3000大阪\nBonjour\u202f! می\u200cخواهم 🏳️\u200d🌈 \U0001fa77"
    assert escaped(answer, keep="\n") == answer
    assert escaped("a\x1b[2Jb\u202ec\td\n", keep="\n") == "a\\x1b[2Jb\\u202ec\\td\n"
    assert escaped("a\x9b\u2028\ud83d é", escape=json_escape) == "a\\u009b\\u2028\\ud83d é"
    assert json.loads('"' + escaped("x\x9by", escape=json_escape) + '"') == "x\x9by"


def test_valid_text_and_held_back() -> None:
    assert valid_text("a\ud83d\ude00b") == "a😀b"
    assert valid_text("a\ud83db") == "a\ufffdb"
    assert held_back("smile \ud83d") == ("smile ", "\ud83d")
    assert held_back("\ud83d") == ("", "\ud83d")
    assert held_back("lone \ude00 end") == ("lone \ufffd end", "")
    fine = "ok 😀"
    assert held_back(fine)[0] is fine


def test_a_pair_joiner_joins_halves_and_flushes_a_lone_one() -> None:
    pairs = PairJoiner()
    first = pairs.joined(TextDelta("smile \ud83d"))
    assert (first.text, pairs.joined(TextDelta("\ude00 end")).text) == ("smile ", "😀 end")
    assert pairs.flush() is None
    whole = TextDelta("plain")
    assert pairs.joined(whole) is whole
    assert pairs.joined(TextDelta("cut \ud83d")).text == "cut "
    assert pairs.flush() == TextDelta("\ufffd") and pairs.flush() is None


def test_a_router_error_is_made_valid_when_made() -> None:
    error = ProviderUnavailable("openai", CUT_MESSAGE)
    assert error.message == "openai: overloaded while reading \u300c\ufffd\u300d"
    error.message.encode()  # protobuf and UTF-8 logs can write it


# -- configuration: rule names and tag conditions ------------------------------------------------


def rules_of(names: list[str]) -> str:
    """A configuration with a rule per name, matching a tag of the same name."""
    rules = "".join(f"  - name: {json.dumps(name, ensure_ascii=False)}\n"
                    f"    match: {{tags: [{json.dumps(name, ensure_ascii=False)}]}}\n"
                    "    use: fake/echo\n" for name in names)
    return f"providers:\n  fake: {{api_key: k}}\nroutes:\n{rules}default: fake/echo\n"


def test_rule_names_and_tag_conditions_take_names_people_write() -> None:
    config = parse_config(rules_of([*NAMES.values(), "会議\u3000要約", "👨\u200d👩\u200d👧\u200d👦"]), "router.yaml")
    assert [rule.name for rule in config.routes] == [*NAMES.values(), "会議\u3000要約", "👨\u200d👩\u200d👧\u200d👦"]


@pytest.mark.parametrize(("rules", "said"), [
    ('  - name: "a\\u202eb"\n    use: fake/echo\n', "routes.0.name: the name has U+202E RIGHT-TO-LEFT OVERRIDE at "
                                                   "character 2"),
    ('  - name: r\n    match: {tags: ["x\\u2066y"]}\n    use: fake/echo\n',
     "has U+2066 LEFT-TO-RIGHT ISOLATE at character 2, which reorders how the text after it is shown and never "
     "matches"),
])
def test_a_rule_name_or_tag_with_a_bidi_control_is_refused_naming_it(rules: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"providers:\n  fake: {{api_key: k}}\nroutes:\n{rules}", "router.yaml")
    assert said in " ".join(info.value.message.split())


# -- end to end: names through the daemon ----------------------------------------------------------


def upload(daemon, data: bytes, filename: str) -> pb.UploadMediaResponse:  # type: ignore[no-untyped-def]
    chunks = [pb.UploadMediaRequest(metadata=pb.UploadMetadata(
        modality=pb.MODALITY_IMAGE, mime_type="image/png", filename=filename, size_bytes=len(data))),
        pb.UploadMediaRequest(chunk=data)]
    return daemon.stub.UploadMedia(iter(chunks), timeout=30)


def test_names_people_write_pass_as_session_id_tag_filename_and_rule(start_daemon) -> None:
    daemon = start_daemon(rules_of(list(NAMES.values())))
    image = png()
    for label, name in NAMES.items():
        stored = upload(daemon, image, name)
        media = [pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=image, filename=name),
                 pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", media_id=stored.media_id)]
        request = text_request("hello", media=media, session_id=name, hints=pb.RoutingHints(tags=[name]))
        answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
        assert answer.route.rule == name, label
        assert "image=2" in answer.text, label
    # the session kept its turn under that id
    request = text_request("again", session_id=NAMES["ZWJ family"], hints=pb.RoutingHints(tags=["👨\u200d👩\u200d👧"]))
    assert "history=1" in daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer.text


@pytest.mark.parametrize(("char", "said"), [("\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"), ("\n", "U+000A LINE FEED")])
def test_a_bidi_override_or_newline_is_still_refused_naming_the_character(start_daemon, char, said) -> None:
    daemon = start_daemon(rules_of(["r"]))
    bad = f"ab{char}cd"
    requests = {
        "request.session_id": text_request("hi", session_id=bad),
        "request.hints.tags[0]": text_request("hi", hints=pb.RoutingHints(tags=[bad])),
        "request.messages[0].parts[0].media.filename": text_request("hi", media=[pb.Media(
            modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png(), filename=bad)]),
    }
    for field, request in requests.items():
        with pytest.raises(grpc.RpcError) as info:
            daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30)
        got = error_details(info.value)
        assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), field
        assert any(f == field and d.startswith(f"has {said} at character 3, ") for f, d in got.violations), got
    with pytest.raises(grpc.RpcError) as info:
        upload(daemon, png(), bad)
    [(field, description)] = error_details(info.value).violations
    assert field == "metadata.filename" and description.startswith(f"has {said} at character 3, ")


# -- end to end: a provider's message that is not valid Unicode ------------------------------------


def keys() -> dict[str, str]:
    return {"OPENAI_TEST_KEY": OPENAI_KEY, "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY}


SHOWN = "overloaded while reading \u300c\ufffd\u300d"


def test_a_cut_error_message_does_not_lose_the_fallbacks_answer(start_daemon, upstreams) -> None:
    openai, anthropic = upstreams
    daemon = start_daemon(FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(), env=keys())
    openai.fail_next(503, error_body(CUT_MESSAGE, "server_error"))
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("q")), timeout=30).answer
    assert answer.route.provider == "anthropic" and answer.text
    assert SHOWN in answer.route.attempts[0].error
    assert any(SHOWN in note for note in answer.route.notes)

    openai.fail_next(503, error_body(CUT_MESSAGE, "server_error"))
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("q2")), timeout=30))
    [done] = [e.done for e in events if e.HasField("done")]
    assert done.answer.route.provider == "anthropic"
    assert "".join(e.text_delta.text for e in events if e.HasField("text_delta")) == done.answer.text != ""
    assert SHOWN in done.answer.route.attempts[0].error

    listed = providers_by_name(daemon.stub)  # was INTERNAL until the provider failed again
    assert listed["openai"].health.failed_calls == 2
    assert "\ufffd" in daemon.logs() and "\\ud83d" not in daemon.logs()  # the log line was written whole


ONLY_OPENAI = """
providers:
  openai: {{api_key: "${{OPENAI_TEST_KEY}}", base_url: "{openai}", timeout: 20}}
routes:
  - name: main
    use: openai/gpt-4o
"""


@pytest.mark.parametrize(("status", "code", "reason"), [
    (503, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (429, grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
    (400, grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST"),
])
def test_a_cut_error_message_without_a_fallback_keeps_its_status_and_details(start_daemon, upstreams, status, code,
                                                                             reason) -> None:
    openai, _ = upstreams
    daemon = start_daemon(ONLY_OPENAI.format(openai=openai.base_url), plugins=(), env=keys())
    for call in (daemon.stub.Generate, daemon.stub.StreamGenerate):
        openai.fail_next(status, error_body(CUT_MESSAGE, "server_error"), {"Retry-After": "5"})
        with pytest.raises(grpc.RpcError) as info:
            request = text_request("q")
            if call is daemon.stub.Generate:
                call(pb.GenerateRequest(request=request), timeout=30)
            else:
                list(call(pb.StreamGenerateRequest(request=request), timeout=30))
        got = error_details(info.value)
        assert (got.code, got.reason, got.metadata["provider"]) == (code, reason, "openai"), got
        assert SHOWN in got.message
        assert got.retry_delay == (5 if status != 400 else None)
    health = providers_by_name(daemon.stub)["openai"].health
    assert health.last_failure_reason == reason


# -- end to end: a surrogate pair split across two stream events ------------------------------------


def test_a_surrogate_pair_split_across_two_events_arrives_whole(start_daemon, upstreams) -> None:
    openai, _ = upstreams
    daemon = start_daemon(ONLY_OPENAI.format(openai=openai.base_url), plugins=(), env=keys())
    openai.reply_chunks = ["smile \ud83d", "\ude00 end"]
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("q")), timeout=30).answer
    assert answer.text == "smile 😀 end"
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("q")), timeout=30))
    deltas = [e.text_delta.text for e in events if e.HasField("text_delta")]
    assert "".join(deltas) == "smile 😀 end" and "\ufffd" not in "".join(deltas)
    [done] = [e.done for e in events if e.HasField("done")]
    assert done.answer.text == "smile 😀 end"

    openai.reply_chunks = ["cut at the end \ud83d"]  # its low half never comes: U+FFFD, once
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("q")), timeout=30).answer
    assert answer.text == "cut at the end \ufffd"
