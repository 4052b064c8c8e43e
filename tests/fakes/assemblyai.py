"""A fake of AssemblyAI's pre-recorded transcription API (``/v2/upload``, ``/v2/transcript``).

It speaks the wire format the official ``assemblyai`` SDK uses: the upload
takes raw bytes and answers ``{"upload_url": ...}``; creating a transcript
takes the JSON config and answers the transcript with status ``queued``; each
GET of ``/v2/transcript/<id>`` moves it one step along :attr:`statuses`
(the last one sticks), answering the full result once ``completed`` or
``{"status": "error", "error": ...}`` for ``error``. Errors are
``{"error": "..."}`` bodies, as AssemblyAI sends them. Like the real API, a create carrying the
singular ``speech_model`` (refused since AssemblyAI dropped ``best``/``nano``), or a ``speech_models``
that is not a non-empty list of ids in :attr:`FakeAssemblyAI.speech_models`, is answered 400. An upload over
:attr:`FakeAssemblyAI.max_upload_bytes` (AssemblyAI's documented 2.2 GB) is refused with 413; the
real API's status and wording for it are not documented. :attr:`FakeAssemblyAI.poll_failures` scripts
failed status polls (an HTTP error, or the connection closed without an answer).

``DELETE /v2/transcript/<id>`` is answered as AssemblyAI documents it ("Remove the data from the transcript
and mark it as deleted"): the transcript, its status kept, with ``text`` ``"Deleted by user."``,
``audio_url`` ``"http://deleted_by_user"`` and no words or utterances; later GETs answer the same.
:attr:`FakeAssemblyAI.deleted` records the ids deleted, in order; :attr:`FakeAssemblyAI.delete_failure`
answers every DELETE with an HTTP error instead, and :attr:`FakeAssemblyAI.delete_hold` holds DELETE
answers until a test releases them.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import FakeUpstream, Recorded, Reply

#: The pre-recorded ``speech_models`` ids AssemblyAI accepts (its model-selection and assemblyai-stt-3-7
#: migration pages, read 2026-11; universal-3-pro is no longer among them).
ACCEPTED_SPEECH_MODELS = frozenset({"assemblyai-stt-3-7", "universal-3-5-pro", "universal-2"})

#: Speaker, start ms, end ms, text: the default conversation the fake "hears".
DEFAULT_TURNS: list[tuple[str, int, int, str]] = [
    ("A", 240, 2100, "Hello, thanks for joining the call."),
    ("B", 2300, 4020, "Happy to be here."),
    ("A", 4200, 6480, "Let us start with the budget."),
]


@dataclass
class FakeTranscript:
    """One transcript job the fake holds."""

    id: str
    request: dict[str, Any]
    statuses: list[str]
    polls: int = 0
    history: list[str] = field(default_factory=list)
    #: Set by a DELETE: the text, words, utterances and audio_url are gone, as at AssemblyAI.
    deleted: bool = False


class FakeAssemblyAI(FakeUpstream):
    """AssemblyAI's HTTP API, enough for upload -> create -> poll."""

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        turns: list[tuple[str, int, int, str]] | None = None,
        statuses: tuple[str, ...] = ("queued", "processing", "completed"),
        error_message: str = "",
        audio_duration: int | None = 7,
        detected_language: str = "en_us",
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.turns = list(turns if turns is not None else DEFAULT_TURNS)
        #: Statuses each new transcript goes through, one per poll (the first answers the create).
        self.statuses = statuses
        #: If set, the statuses of every transcript after the first (a later clip of a call failing).
        self.later_statuses: tuple[str, ...] | None = None
        #: The message of a transcript whose status becomes ``error``.
        self.error_message = error_message or "Transcoding failed. File does not appear to contain audio."
        self.audio_duration = audio_duration
        self.detected_language = detected_language
        #: The ids a create's ``speech_models`` may name.
        self.speech_models = set(ACCEPTED_SPEECH_MODELS)
        #: The largest upload taken (AssemblyAI documents 2.2 GB for /v2/upload).
        self.max_upload_bytes = 2_200_000_000
        #: Every upload's bytes, in order.
        self.uploads: list[bytes] = []
        self.upload_headers: list[dict[str, str]] = []
        #: Every transcript created, by id.
        self.transcripts: dict[str, FakeTranscript] = {}
        #: How the next status GETs of a known transcript are answered, used up one per GET in order before
        #: answering normally again: an HTTP status (with an ``{"error": ...}`` body), ``(status, headers)``,
        #: ``"disconnect"`` (the connection closed without an answer) or None (answered normally). A failed
        #: poll does not move the transcript along; its ``history`` records ``"HTTP <status>"`` or
        #: ``"disconnect"``.
        self.poll_failures: list[int | tuple[int, Mapping[str, str]] | str | None] = []
        #: Raw answers (path or None for any, status, body, content type, headers) given instead of the API's,
        #: before any check of the key: what a proxy or gateway before the API sends (see :meth:`page_next`).
        self.pages: list[tuple[str | None, int, bytes, str, dict[str, str]]] = []
        #: The ids of the transcripts deleted (``DELETE /v2/transcript/<id>`` answered 200), in order.
        self.deleted: list[str] = []
        #: Every DELETE's transcript id, answered or not, in the order they arrived.
        self.delete_requests: list[str] = []
        #: If set, the HTTP status every DELETE is answered with (an ``{"error": ...}`` body), deleting nothing.
        self.delete_failure: int | None = None
        #: If set, a DELETE is answered only once this event is set (or after :attr:`delete_hold_timeout`
        #: seconds, so a test never hangs); :attr:`deletes_released` records, per DELETE, whether the event
        #: was set when it was answered. Keep the timeout below the client's HTTP timeout, so a client that
        #: waits for the DELETE's answer meets the timeout here first (recorded False), not its own.
        self.delete_hold: threading.Event | None = None
        self.delete_hold_timeout = 5.0
        self.deletes_released: list[bool] = []
        #: Set at each DELETE answered (whatever the answer).
        self.delete_answered = threading.Event()
        self._ids = itertools.count(1)
        self._state_lock = threading.Lock()

    # -- what tests read -------------------------------------------------------------------

    @property
    def created(self) -> list[dict[str, Any]]:
        """The JSON bodies of every transcript create, in order."""
        return [t.request for t in self.transcripts.values()]

    def polls(self) -> int:
        """How many status GETs the fake has answered."""
        return sum(1 for r in self.requests if r.method == "GET" and r.path.startswith("/v2/transcript/"))

    def page_next(self, status: int, body: bytes | str = b"", content_type: str = "text/html",
                  headers: Mapping[str, str] | None = None, *, path: str | None = None) -> None:
        """Answer the next request (to ``path`` if given) with ``body`` as is, not AssemblyAI's JSON: a proxy's
        error page, a 3xx with a ``Location``."""
        data = body.encode() if isinstance(body, str) else body
        with self._state_lock:
            self.pages.append((path, status, data, content_type, dict(headers or {})))

    # -- the API ---------------------------------------------------------------------------

    def handle(self, request: Recorded, reply: Reply) -> None:
        with self._state_lock:
            page = next((p for p in self.pages if p[0] in (None, request.path)), None)
            if page is not None:
                self.pages.remove(page)
        if page is not None:
            _, status, body, content_type, headers = page
            reply.raw(body, status, content_type, headers)
            return
        if request.headers.get("authorization") != self.api_key:
            reply.json({"error": "Authentication error, API token missing/invalid"}, 401)
            return
        if request.method == "POST" and request.path == "/v2/upload":
            self._upload(request, reply)
        elif request.method == "POST" and request.path == "/v2/transcript":
            self._create(request, reply)
        elif request.method == "GET" and request.path.startswith("/v2/transcript/"):
            self._get(request.path.rsplit("/", 1)[-1], reply)
        elif request.method == "DELETE" and request.path.startswith("/v2/transcript/"):
            try:
                self._delete(request.path.rsplit("/", 1)[-1], reply)
            finally:
                self.delete_answered.set()
        else:
            reply.json({"error": f"Not found: {request.method} {request.path}"}, 404)

    def _upload(self, request: Recorded, reply: Reply) -> None:
        if not request.body:
            reply.json({"error": "Upload is empty"}, 400)
            return
        if len(request.body) > self.max_upload_bytes:
            reply.json({"error": f"File too large: the maximum upload size is {self.max_upload_bytes} bytes"}, 413)
            return
        with self._state_lock:
            self.uploads.append(request.body)
            self.upload_headers.append(dict(request.headers))
            n = len(self.uploads)
        reply.json({"upload_url": f"https://cdn.assemblyai.com/upload/fake-{n}"})

    def _create(self, request: Recorded, reply: Reply) -> None:
        body = request.json()
        if not isinstance(body, dict) or not body.get("audio_url"):
            reply.json({"error": "audio_url is required"}, 400)
            return
        if (problem := self._speech_models_problem(body)) is not None:
            reply.json({"error": problem}, 400)
            return
        with self._state_lock:
            statuses = self.later_statuses if self.transcripts and self.later_statuses else self.statuses
            job = FakeTranscript(id=f"tr-{next(self._ids)}", request=body, statuses=list(statuses))
            self.transcripts[job.id] = job
        reply.json(self._payload(job, job.statuses[0]))

    def _speech_models_problem(self, body: dict[str, Any]) -> str | None:
        """Why AssemblyAI would refuse the create's model selection, or None."""
        if "speech_model" in body:
            return ("The speech_model parameter is no longer supported; use speech_models, "
                    f"one or more of: {', '.join(sorted(self.speech_models))}")
        models = body.get("speech_models")
        if not isinstance(models, list) or not models:
            return "speech_models must be a non-empty list of speech model ids"
        unknown = [m for m in models if m not in self.speech_models]
        if unknown:
            return (f"Invalid speech_models {unknown}: accepted values are "
                    f"{', '.join(sorted(self.speech_models))}")
        return None

    def _get(self, transcript_id: str, reply: Reply) -> None:
        job = self.transcripts.get(transcript_id)
        if job is None:
            reply.json({"error": "Transcript not found"}, 404)
            return
        with self._state_lock:
            scripted = self.poll_failures.pop(0) if self.poll_failures else None
        if scripted == "disconnect":
            job.history.append("disconnect")
            reply._h.close_connection = True  # ends the connection without an answer (base.py has no helper)
            return
        if scripted is not None:
            status, headers = (scripted, {}) if isinstance(scripted, int) else scripted
            job.history.append(f"HTTP {status}")
            reply.json({"error": f"scripted poll failure: HTTP {status}"}, status, dict(headers))
            return
        with self._state_lock:
            job.polls += 1
            status = job.statuses[min(job.polls, len(job.statuses) - 1)]
            job.history.append(status)
        reply.json(self._payload(job, status))

    def _delete(self, transcript_id: str, reply: Reply) -> None:
        with self._state_lock:
            self.delete_requests.append(transcript_id)
        if self.delete_hold is not None:
            released = self.delete_hold.wait(self.delete_hold_timeout)
            with self._state_lock:
                self.deletes_released.append(released)
        job = self.transcripts.get(transcript_id)
        if job is None:
            reply.json({"error": "Transcript not found"}, 404)
            return
        if self.delete_failure is not None:
            reply.json({"error": f"scripted delete failure: HTTP {self.delete_failure}"}, self.delete_failure)
            return
        with self._state_lock:
            job.deleted = True
            self.deleted.append(transcript_id)
            status = job.statuses[min(job.polls, len(job.statuses) - 1)]
        reply.json(self._payload(job, status))

    # -- transcript bodies -----------------------------------------------------------------

    def _payload(self, job: FakeTranscript, status: str) -> dict[str, Any]:
        """The transcript resource as AssemblyAI returns it in ``status``."""
        req = job.request
        payload: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "audio_url": req["audio_url"],
            "speech_models": req.get("speech_models"),
            "speech_model_used": (req.get("speech_models") or [None])[0],
            "language_code": req.get("language_code"),
            "language_detection": req.get("language_detection", False),
            "speaker_labels": req.get("speaker_labels", False),
            "speakers_expected": req.get("speakers_expected"),
            "punctuate": True,
            "format_text": True,
            "text": None,
            "words": None,
            "utterances": None,
            "confidence": None,
            "audio_duration": None,
            "error": None,
        }
        if job.deleted:  # what AssemblyAI leaves of a deleted transcript
            payload.update(audio_url="http://deleted_by_user", text="Deleted by user.")
        elif status == "error":
            payload["error"] = self.error_message
        elif status == "completed":
            payload.update(self._result(bool(req.get("speaker_labels"))))
            if not req.get("language_code"):
                payload["language_code"] = self.detected_language
        return payload

    def _result(self, diarized: bool) -> dict[str, Any]:
        utterances, all_words = [], []
        for speaker, start, end, text in self.turns:
            tokens = text.split()
            step = (end - start) // max(1, len(tokens))
            words = [
                {
                    "text": tok,
                    "start": start + i * step,
                    "end": start + (i + 1) * step,
                    "confidence": 0.9,
                    "speaker": speaker if diarized else None,
                }
                for i, tok in enumerate(tokens)
            ]
            all_words.extend(words)
            utterances.append(
                {"speaker": speaker, "start": start, "end": end, "text": text, "confidence": 0.93, "words": words}
            )
        return {
            "text": " ".join(t[3] for t in self.turns),
            "words": all_words,
            "utterances": utterances if diarized else None,
            "confidence": 0.92,
            "audio_duration": self.audio_duration,
        }

