"""A session whose history a target refused for its size: the next turns start without what was left out.

The real daemon (``start_daemon``) and the real ``anthropic`` SDK talk to the fake Messages API, whose
body limit is set low here (as behind a gateway with a smaller limit than Claude's 32 MB): the plugin's
own checks let the request go, and the API answers 413 ``request_too_large``, as Claude does for a body
over 32 MB that the plugin's lower bound of the body did not catch. Each refused try reaches the fake.
"""

from __future__ import annotations

import io
import random

import grpc
import pytest
from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb
from PIL import Image

from router.dispatch import HistoryCuts
from router.types import Message, Part, Request, Role
from tests.fakes.anthropic import API_KEY, FakeAnthropic, error_body, media_blocks
from tests.fakes.base import Recorded, Reply

CONFIG = """
providers:
  anthropic: {{api_key: "${{ANTHROPIC_TEST_KEY}}", base_url: "{url}", timeout: 20}}
default: anthropic/claude-sonnet-4-6
"""
SONNET = "anthropic/claude-sonnet-4-6"


def noise_png(seed: int) -> bytes:
    """A PNG of random pixels (it does not compress): about 120 kB, 160 kB as base64."""
    pixels = random.Random(seed).randbytes(200 * 200 * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", (200, 200), pixels).save(buf, format="PNG")
    return buf.getvalue()


class SmallBodyAnthropic(FakeAnthropic):
    """The fake Messages API refusing a body over ``max_body`` bytes with 413, as Claude does over 32 MB."""

    def __init__(self, max_body: int) -> None:
        super().__init__()
        self.max_body = max_body

    def handle(self, request: Recorded, reply: Reply) -> None:
        if request.method == "POST" and request.path == "/v1/messages" and len(request.body) > self.max_body:
            reply.json(error_body("request_too_large", "Request exceeds the maximum allowed number of bytes."), 413)
            return
        super().handle(request, reply)


IMAGES = [noise_png(n) for n in range(3)]


@pytest.fixture
def fake():
    with SmallBodyAnthropic(max_body=250_000) as upstream:  # one image per request, not two
        yield upstream


@pytest.fixture
def daemon(start_daemon, fake):
    return start_daemon(CONFIG.format(url=fake.url), env={"ANTHROPIC_TEST_KEY": API_KEY})


def image(n: int) -> pb.Media:
    return pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=IMAGES[n], filename=f"chart-{n}.png")


def turn(daemon, fake, text: str, *images: int, session: str = "charts") -> tuple[pb.Answer, int]:
    """Ask one turn; return the answer and how many requests reached the fake for it."""
    before = len(fake.message_calls())
    request = text_request(text, media=[image(n) for n in images], session_id=session)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer
    assert answer.text == "Hello from fake Claude." and f"{answer.route.provider}/{answer.route.model}" == SONNET
    return answer, len(fake.message_calls()) - before


def sent(fake) -> tuple[list[str], list[bytes]]:
    """The roles and the images of the last request the fake received."""
    body = fake.last_body()
    return [m["role"] for m in body["messages"]], [b.data for b in media_blocks(body)]


def trim_notes(answer: pb.Answer) -> list[str]:
    return [n for n in answer.route.notes if n.startswith("history trimmed")]


def test_later_turns_start_without_the_history_the_target_refused(daemon, fake):
    """Turn 2 (two images) is refused, then answered without turn 1; turn 3 starts without turn 1 at
    once: one request instead of a refused one first. Turn 4 brings an image again: it starts from
    there, is refused once more and learns a longer cut, which turn 5 starts from."""
    _, calls = turn(daemon, fake, "Read this chart.", 0)
    assert calls == 1

    second, calls = turn(daemon, fake, "Compare it with this one.", 1)
    assert calls == 2
    assert [(a.model, a.ok) for a in second.route.attempts] == [("claude-sonnet-4-6", False),
                                                                ("claude-sonnet-4-6", True)]
    [note] = trim_notes(second)
    assert "dropped the 2 oldest message(s) of session 'charts'" in note
    assert "refused the request for its size (" in note and "maximum allowed number of bytes" in note
    assert sent(fake) == (["user"], [IMAGES[1]])

    third, calls = turn(daemon, fake, "And in short?")
    assert calls == 1, "turn 3 sent the history turn 2 learnt was too large again"
    assert [(a.model, a.ok) for a in third.route.attempts] == [("claude-sonnet-4-6", True)]
    assert sent(fake) == (["user", "assistant", "user"], [IMAGES[1]])
    [note] = trim_notes(third)
    assert "dropped the 2 oldest message(s) of session 'charts'" in note
    assert "refused the request for its size on an earlier turn (" in note and SONNET in note

    fourth, calls = turn(daemon, fake, "And this third one?", 2)
    assert calls == 2  # the learnt start (two images, refused), then without turn 2
    assert sent(fake) == (["user", "assistant", "user"], [IMAGES[2]])
    [note] = trim_notes(fourth)
    assert "dropped the 4 oldest message(s)" in note and "on an earlier turn" not in note

    fifth, calls = turn(daemon, fake, "Thanks. Which is larger?")
    assert calls == 1
    assert sent(fake) == (["user", "assistant", "user", "assistant", "user"], [IMAGES[2]])
    assert "dropped the 4 oldest message(s)" in trim_notes(fifth)[0]


def test_a_reset_session_starts_again_from_its_whole_history(daemon, fake):
    """What a session learnt is forgotten with it: started again under the same id, its second turn
    sends the whole (small) history."""
    turn(daemon, fake, "Read this chart.", 0)
    _, calls = turn(daemon, fake, "Compare it with this one.", 1)
    assert calls == 2
    daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="charts"), timeout=30)

    turn(daemon, fake, "Read this one.", 2)
    answer, calls = turn(daemon, fake, "What colour dominates?")
    assert calls == 1 and not trim_notes(answer), answer.route.notes
    assert sent(fake) == (["user", "assistant", "user"], [IMAGES[2]])


def test_other_sessions_and_a_lone_oversized_turn_are_not_affected(daemon, fake):
    """The cut is the session's own; a turn too large alone is still refused after the history is gone."""
    turn(daemon, fake, "Read this chart.", 0)
    turn(daemon, fake, "Compare it with this one.", 1)

    turn(daemon, fake, "Read this chart.", 0, session="other")
    answer, calls = turn(daemon, fake, "Is it clear?", session="other")
    assert calls == 1 and not trim_notes(answer)
    assert sent(fake) == (["user", "assistant", "user"], [IMAGES[0]])

    with pytest.raises(grpc.RpcError) as info:
        turn(daemon, fake, "And these two?", 1, 2)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_memory_keeps_the_sessions_used_last():
    """Bounded: past ``kept`` sessions, the least recently used one is forgotten first; per target."""

    def request(session: str) -> Request:
        said = [Message(Role.USER, [Part(text="a")]), Message(Role.ASSISTANT, [Part(text="b")])]
        return Request(messages=[*said, Message(Role.USER, [Part(text="c")])], session_id=session, history_length=2)

    def learn(session: str) -> None:
        whole = request(session)
        cuts.learn(whole, SONNET, Request(messages=whole.messages[2:], session_id=session), "too large")

    def learnt(session: str, target: str = SONNET) -> int:
        return cuts.start(request(session), target)[1]

    cuts = HistoryCuts(kept=2)
    learn("s1")
    learn("s2")
    assert learnt("s1") == 2  # s1 is the one used last now
    learn("s3")
    assert (learnt("s1"), learnt("s2"), learnt("s3")) == (2, 0, 2)
    assert learnt("s1", "anthropic/claude-haiku-4-5") == 0
    cuts.forget("s1")
    assert learnt("s1") == 0
