"""The local provider transcribing several recordings sends each one's transcript as it is done, with its own
times, as router.proto promises (``Answer.transcript``) and the cloud transcribers do: a client that joins the
streamed transcripts itself, shifting their times, gets what the answer holds. It sent one transcript of them all,
its times already shifted, so such a client shifted the second recording's words twice.

Through the offline daemon (the embedded default, no keys), speech made by espeak-ng, decoded by pocketsphinx.
"""

from __future__ import annotations

import pytest
from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb
from test_local_e2e import fresh, needs_espeak  # noqa: F401 (the fixture)

from tests.fakes import local as media

SAID = ("the quick brown fox jumps over the lazy dog", "seven green apples sat on the table")


def recording(words: str, name: str) -> pb.Media:
    return pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=media.speech_wav(words), filename=name)


@needs_espeak
def test_each_recording_s_transcript_is_streamed_with_its_own_times_and_the_answer_merges_them(fresh) -> None:  # noqa: F811
    request = text_request("", media=[recording(SAID[0], "fox.wav"), recording(SAID[1], "apples.wav")],
                           options=pb.Options(task=pb.TASK_TRANSCRIBE))
    events = list(fresh.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=120))
    streamed = [e.transcript for e in events if e.WhichOneof("event") == "transcript"]
    [done] = [e.done for e in events if e.WhichOneof("event") == "done"]
    answer = done.answer
    assert len(streamed) == 2, [e.WhichOneof("event") for e in events]
    first, second = streamed
    for said, transcript in zip(SAID, streamed, strict=True):
        assert media.word_error_rate(said, transcript.text) <= 0.4, transcript.text
        assert transcript.utterances[0].start_seconds < 1.0  # its own times: from the start of its recording
    # the answer: the second recording's times after the first's length, its text the two in order
    assert answer.transcript.text.startswith(first.text) and answer.transcript.text.endswith(second.text)
    shifted = answer.transcript.utterances[-1]
    assert first.duration_seconds > 1.0
    assert shifted.start_seconds == pytest.approx(first.duration_seconds + second.utterances[-1].start_seconds)
    streamed_text = "".join(e.text_delta.text for e in events if e.WhichOneof("event") == "text_delta")
    assert streamed_text == answer.text == answer.transcript.text
