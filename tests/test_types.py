"""The public request and transcript helpers plugins build on."""

from __future__ import annotations

import pytest

from router.types import (
    Media,
    Message,
    Modality,
    Part,
    Price,
    Request,
    Role,
    Transcript,
    Usage,
    Utterance,
    Word,
)


def clip(name: str) -> Media:
    return Media(Modality.AUDIO, "audio/wav", data=b"RIFF", filename=name)


def test_current_media_are_those_of_the_newest_user_message_with_media() -> None:
    request = Request(messages=[
        Message(Role.USER, [Part(media=clip("old.wav")), Part(text="transcribe")]),
        Message(Role.ASSISTANT, [Part(text="done")]),
        Message(Role.USER, [Part(media=clip("a.wav")), Part(media=clip("b.wav"))]),
        Message(Role.USER, [Part(text="both, please")]),
    ])
    assert [m.filename for m in request.current_media()] == ["a.wav", "b.wav"]
    assert Request(messages=[Message(Role.USER, [Part(text="hi")])]).current_media() == []


def test_merged_transcripts_shift_times_by_the_recordings_before() -> None:
    first = Transcript("hello there", [Utterance("hello there", 0.0, 1.5, "A")], [Word("hello", 0.0, 0.5)],
                       "en", duration_seconds=2.0)
    second = Transcript("bye", [Utterance("bye", 0.25, 0.75, "B")], [Word("bye", 0.25, 0.75)], "en", 1.0)
    merged = Transcript.merged([first, second])
    assert merged.text == "hello there bye"
    assert [(u.text, u.start, u.end, u.speaker) for u in merged.utterances] == [
        ("hello there", 0.0, 1.5, "A"), ("bye", 2.25, 2.75, "B")]
    assert [(w.text, w.start) for w in merged.words] == [("hello", 0.0), ("bye", 2.25)]
    assert merged.duration_seconds == 3.0 and merged.language == "en"
    assert Transcript.merged([first]) is first


def test_merged_recordings_never_share_a_speaker_name() -> None:
    """Each recording names its speakers on its own: its "A" is not the next one's "A"."""
    def diarized(*turns: tuple[str, str]) -> Transcript:
        utterances = [Utterance(text, i * 1.0, i * 1.0 + 0.5, speaker) for i, (speaker, text) in enumerate(turns)]
        words = [Word(text, u.start, u.end, u.speaker) for u, (_, text) in zip(utterances, turns, strict=True)]
        return Transcript(Transcript.speaker_text(utterances), utterances, words, "en", float(len(turns)))

    merged = Transcript.merged([diarized(("A", "hi"), ("B", "hello")), diarized(("A", "bye"), ("B", "ciao"))])
    assert [u.speaker for u in merged.utterances] == ["A", "B", "C", "D"]
    assert [w.speaker for w in merged.words] == ["A", "B", "C", "D"]
    assert merged.text == "Speaker A: hi\nSpeaker B: hello\nSpeaker C: bye\nSpeaker D: ciao"
    alone = Transcript.merged([diarized(("A", "hi")), Transcript("no speakers", duration_seconds=1.0)])
    assert [u.speaker for u in alone.utterances] == ["A"]  # one recording with speakers keeps its names


def test_merged_speaker_lines_stay_one_per_line() -> None:
    a = Transcript("Speaker A: hi\nSpeaker B: hello", duration_seconds=1.0)
    b = Transcript("Speaker A: bye", duration_seconds=1.0)
    assert Transcript.merged([a, b]).text == "Speaker A: hi\nSpeaker B: hello\nSpeaker A: bye"


def test_a_system_prompt_does_not_make_audio_a_chat() -> None:
    from router.types import Task

    system = Message(Role.SYSTEM, [Part(text="You are a careful transcriber")])
    audio_only = Request(messages=[system, Message(Role.USER, [Part(media=clip("a.wav"))])])
    assert audio_only.modalities() == {Modality.AUDIO} and audio_only.effective_task is Task.TRANSCRIBE
    asked = Request(messages=[system, Message(Role.USER, [Part(media=clip("a.wav")), Part(text="who speaks?")])])
    assert asked.modalities() == {Modality.AUDIO, Modality.TEXT} and asked.effective_task is Task.CHAT
    assert Request(messages=[system]).modalities() == {Modality.TEXT}  # a system prompt alone is still text


def test_task_auto_is_resolved_from_this_turn_not_the_session_history() -> None:
    from router.types import Task

    history = [Message(Role.USER, [Part(media=clip("monday.wav"))]),
               Message(Role.ASSISTANT, [Part(text="Dear team, the meeting is moved to Friday.")])]
    system = Message(Role.SYSTEM, [Part(text="You are a careful transcriber")])
    dictation = Request(messages=[*history, system, Message(Role.USER, [Part(media=clip("tuesday.wav"))])],
                        history_length=len(history))
    assert dictation.turn_modalities() == {Modality.AUDIO}
    assert dictation.modalities() == {Modality.AUDIO, Modality.TEXT}
    assert dictation.effective_task is Task.TRANSCRIBE
    follow_up = Request(messages=[*history, Message(Role.USER, [Part(text="shorter, please")])],
                        history_length=len(history))
    assert follow_up.effective_task is Task.CHAT
    # without a session, the whole conversation is this turn
    whole = Request(messages=[*history, Message(Role.USER, [Part(media=clip("tuesday.wav"))])])
    assert whole.effective_task is Task.CHAT


def test_cached_input_tokens_are_priced_at_the_cached_rate_and_audio_among_the_rest() -> None:
    price = Price(input_per_mtok=2.0, output_per_mtok=10.0, audio_input_per_mtok=40.0, cached_input_per_mtok=0.5)
    usage = Usage(input_tokens=1_000, output_tokens=10, audio_input_tokens=300, cached_input_tokens=600)
    assert price.cost(usage) == pytest.approx((600 * 0.5 + 300 * 40.0 + 100 * 2.0 + 10 * 10.0) / 1e6)
    # audio beyond what the cache left is capped: no token is priced twice
    usage.audio_input_tokens = 900
    assert price.cost(usage) == pytest.approx((600 * 0.5 + 400 * 40.0 + 10 * 10.0) / 1e6)
    # no cached rate: no discount, the cached tokens are priced as the input they are part of
    no_discount = Price(input_per_mtok=2.0, output_per_mtok=10.0, audio_input_per_mtok=40.0)
    assert no_discount.cost(usage) == pytest.approx((900 * 40.0 + 100 * 2.0 + 10 * 10.0) / 1e6)


def test_usage_add_sums_cached_input_tokens() -> None:
    total = Usage(input_tokens=10, cached_input_tokens=4)
    total.add(Usage(input_tokens=5, cached_input_tokens=3, audio_input_tokens=1))
    assert (total.input_tokens, total.cached_input_tokens, total.audio_input_tokens) == (15, 7, 1)


def test_a_call_past_the_long_context_size_is_priced_whole_at_the_long_context_rates() -> None:
    price = Price(input_per_mtok=1.0, output_per_mtok=10.0, cached_input_per_mtok=0.1, long_context_above_tokens=1_000,
                  long_context_input_per_mtok=2.0, long_context_output_per_mtok=15.0)
    at_the_size = Usage(input_tokens=1_000, output_tokens=10, cached_input_tokens=100)
    assert price.cost(at_the_size) == pytest.approx((900 * 1.0 + 100 * 0.1 + 10 * 10.0) / 1e6)
    past_it = Usage(input_tokens=1_001, output_tokens=10, cached_input_tokens=100)
    # every token at the long rates; a long cached rate left at 0 is the normal cached rate
    assert price.cost(past_it) == pytest.approx((901 * 2.0 + 100 * 0.1 + 10 * 15.0) / 1e6)
    no_tier = Price(input_per_mtok=1.0, output_per_mtok=10.0, long_context_input_per_mtok=2.0)
    assert no_tier.cost(past_it) == pytest.approx((1_001 * 1.0 + 10 * 10.0) / 1e6)
