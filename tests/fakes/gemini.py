"""A fake of the Gemini Developer API (generativelanguage.googleapis.com) for tests.

It speaks the wire format the official ``google-genai`` SDK uses:

* ``POST /{version}/models/{model}:generateContent`` answers one JSON response;
* ``POST /{version}/models/{model}:streamGenerateContent?alt=sse`` answers SSE chunks;
* the resumable Files upload: ``POST /upload/{version}/files`` with
  ``X-Goog-Upload-Command: start`` answers an ``X-Goog-Upload-URL``; the SDK then
  POSTs the bytes there in chunks (``upload`` / ``upload, finalize`` with
  ``X-Goog-Upload-Offset``) and the final one answers ``{"file": {...}}``;
* ``GET /{version}/files/{id}`` answers the file, ``PROCESSING`` for the first
  :attr:`FakeGemini.processing_polls` polls, then ``ACTIVE`` (or ``FAILED``); the next
  polls may be made to fail first (:attr:`FakeGemini.poll_failures`);
* ``DELETE /{version}/files/{id}`` (or its scripted failure, :attr:`FakeGemini.delete_status`);
* ``GET /{version}/files?pageSize=&pageToken=`` lists the files held, oldest first, in pages of ``pageSize``
  (10 when not given, at most :attr:`FakeGemini.max_page_size`), answering ``{"files": [...], "nextPageToken":
  "..."}`` (no token on the last page), or its scripted failure (:attr:`FakeGemini.list_status`).

An upload's chunks may be made to fail (:attr:`FakeGemini.chunk_failures`), as a connection cut midway.

Any kind of request may be answered with a redirect instead (:meth:`FakeGemini.redirect`), as a
misconfigured gateway or a moved endpoint would, or with a page (:attr:`FakeGemini.pages`), as a captive
portal or a proxy's login would.

Like the real service it checks the ``x-goog-api-key`` header (a wrong key is a
400 ``API_KEY_INVALID``), refuses to use a file that is not ``ACTIVE`` (400
``FAILED_PRECONDITION``) and one it does not know (403 ``PERMISSION_DENIED``), and
refuses contents that do not start with ``user`` and alternate ``user``/``model``
(400 ``INVALID_ARGUMENT``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from .base import FakeUpstream, Recorded, Reply

_MODEL_CALL = re.compile(r"^/(?P<ver>[^/]+)/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$")
_FILE = re.compile(r"^/(?P<ver>[^/]+)/files/(?P<id>[^/]+)$")
_UPLOAD_START = re.compile(r"^/upload/(?P<ver>[^/]+)/files$")
_FILES = re.compile(r"^/(?P<ver>[^/]+)/files$")


#: The google.rpc status Google names in an error body for each HTTP status.
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


def _rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class FakeFile:
    """A file the fake holds: its metadata, bytes and processing progress."""

    name: str
    mime_type: str
    display_name: str
    expected_size: int
    data: bytearray = field(default_factory=bytearray)
    finalized: bool = False
    polls: int = 0
    state: str = "PROCESSING"
    expires: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(hours=48))

    def resource(self, base_url: str, version: str) -> dict[str, Any]:
        """The File resource as the API returns it."""
        now = _rfc3339(datetime.now(UTC))
        out: dict[str, Any] = {
            "name": self.name,
            "displayName": self.display_name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": now,
            "updateTime": now,
            "expirationTime": _rfc3339(self.expires),
            "sha256Hash": base64.b64encode(hashlib.sha256(self.data).hexdigest().encode()).decode(),
            "uri": f"{base_url}/{version}/{self.name}",
            "state": self.state,
            "source": "UPLOADED",
        }
        if self.state == "FAILED":
            out["error"] = {"code": 400, "message": "The video could not be processed."}
        return out


def _field(d: dict, camel: str, snake: str) -> Any:
    """A JSON field by its camelCase or snake_case name (the API accepts both)."""
    return d.get(camel, d.get(snake))


def _replaced(text: str, replaced: dict[str, bytes]) -> bytes:
    """``text`` as UTF-8 with each text of ``replaced`` replaced by its bytes (which need not be UTF-8)."""
    body = text.encode()
    for old, raw in replaced.items():
        body = body.replace(old.encode(), raw)
    return body


def _error(code: int, status: str, message: str, details: list | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": code, "message": message, "status": status}}
    if details:
        body["error"]["details"] = details
    return body


class FakeGemini(FakeUpstream):
    """The fake Gemini API. Configure the answer with :attr:`reply_chunks` (an empty piece: a chunk without
    content, so ``[""]`` with a :attr:`finish_reason` of ``SAFETY`` is an answer withheld whole, and ``["Hi",
    ""]`` one stopped after some text, as Google sends them) and file processing
    with :attr:`processing_polls` / :attr:`fail_processing`; inspect :attr:`files` and ``requests``.
    ``truncate_next`` cuts a stream short (its body ends cleanly, without the chunk with the finishReason)."""

    #: File names go on counting across a :meth:`reset`: a daemon may still name a file it uploaded before.
    SERVING = FakeUpstream.SERVING | {"_ids", "_files_lock"}

    def __init__(self, api_key: str = "test-key") -> None:
        super().__init__()
        self.api_key = api_key
        #: The answer's text, one piece per SSE chunk (joined for generateContent).
        self.reply_chunks: list[str] = ["Hello", " from", " Gemini."]
        #: usageMetadata of the answer.
        self.usage = {"promptTokenCount": 12, "candidatesTokenCount": 5, "thoughtsTokenCount": 2,
                      "totalTokenCount": 19}
        #: How many GETs of a new file answer PROCESSING before it turns ACTIVE.
        self.processing_polls = 2
        #: When True, processing ends in FAILED instead of ACTIVE.
        self.fail_processing = False
        #: Seconds a new file lives before it expires.
        self.file_ttl = timedelta(hours=48)
        #: Seconds to wait before answering a generate call (to provoke client timeouts).
        self.delay = 0.0
        #: The last chunk's ``finishReason`` ("MAX_TOKENS", "SAFETY", ...).
        self.finish_reason = "STOP"
        #: When set, the prompt is blocked with this reason (promptFeedback.blockReason).
        self.block_reason: str | None = None
        #: ``safetyRatings`` of the blocked prompt's promptFeedback and of the last chunk's candidate, as the
        #: API sends them (``{"category": "HARM_CATEGORY_...", "probability": "HIGH", "blocked": true}``).
        self.safety_ratings: list[dict[str, Any]] = []
        #: Failures scripted for the next polls (``GET /files/{id}`` of a known file), one per poll, in
        #: order: a status (answered with Google's error body for it), ``(status, headers)`` (a Retry-After,
        #: say), ``"disconnect"`` (the connection closed without an answer) or None (answered normally).
        #: A failed poll does not count as one of :attr:`processing_polls`.
        self.poll_failures: list[int | tuple[int, dict[str, str]] | str | None] = []
        #: Failures scripted for the next upload chunks, one per chunk request, in order: ``"disconnect"`` (the
        #: connection closed without an answer, the chunk not taken) or None (taken normally).
        self.chunk_failures: list[str | None] = []
        #: When set, ``DELETE /files/{id}`` answers this HTTP status with Google's error body, deleting nothing.
        self.delete_status: int | None = None
        #: When set, ``GET /files`` (the listing) answers this HTTP status with Google's error body.
        self.list_status: int | None = None
        #: The largest page the listing answers (the API's maximum pageSize is 100); lower it to make pages.
        self.max_page_size = 100
        #: Kind of request (see :meth:`calls`) -> (HTTP status, URL prefix) of the redirect that answers it.
        self.redirects: dict[str, tuple[int, str]] = {}
        #: Kind of request -> (content type, body) of the 200 page that answers it instead of the API.
        self.pages: dict[str, tuple[str, bytes]] = {}
        #: Text of the answer -> the bytes sent in its place, when set: the answer (its JSON, or each event of
        #: the stream, sent as one body) has each such text replaced, e.g. by bytes that are not UTF-8.
        self.answer_bytes: dict[str, bytes] = {}
        #: Files by name (``files/<id>``).
        self.files: dict[str, FakeFile] = {}
        self._uploads: dict[str, FakeFile] = {}
        self._ids = itertools.count(1)
        self._files_lock = threading.Lock()

    # -- helpers for tests -------------------------------------------------------------------

    def calls(self, kind: str) -> list[Recorded]:
        """Recorded requests of one kind: ``generate``, ``stream``, ``upload_start``,
        ``upload_chunk``, ``file_get``, ``file_delete`` or ``file_list``."""
        return [r for r in self.requests if self._kind(r) == kind]

    @staticmethod
    def _kind(r: Recorded) -> str:
        m = _MODEL_CALL.match(r.path)
        if m:
            return "generate" if m["method"] == "generateContent" else "stream"
        if _UPLOAD_START.match(r.path):
            return "upload_chunk" if "upload_id" in r.query else "upload_start"
        if _FILE.match(r.path):
            return "file_get" if r.method == "GET" else "file_delete"
        if _FILES.match(r.path) and r.method == "GET":
            return "file_list"
        return "other"

    def redirect(self, kind: str, status: int, to: str) -> None:
        """Answer every request of ``kind`` (``stream``, ``upload_chunk``, ...) with ``status`` and a
        ``Location`` of ``to`` followed by the request's path and query."""
        self.redirects[kind] = (status, to)

    # -- the API ---------------------------------------------------------------------------

    def handle(self, request: Recorded, reply: Reply) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            self._handle(request, reply)

    def _handle(self, request: Recorded, reply: Reply) -> None:
        kind = self._kind(request)
        if kind in self.redirects:
            status, to = self.redirects[kind]
            query = f"?{urlencode(request.query, doseq=True)}" if request.query else ""
            return reply.raw(b"", status, headers={"Location": f"{to}{request.path}{query}"})
        if kind in self.pages:
            content_type, page = self.pages[kind]
            return reply.raw(page, content_type=content_type)
        if kind == "upload_chunk":  # authorised by the upload id, as at Google
            return self._upload_chunk(request, reply)
        if request.headers.get("x-goog-api-key") != self.api_key:
            return reply.json(_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                                     [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                       "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]), 400)
        if kind == "upload_start":
            return self._upload_start(request, reply)
        if kind == "file_get":
            return self._file_get(request, reply)
        if kind == "file_list":
            return self._file_list(request, reply)
        if kind == "file_delete":
            if self.delete_status is not None:
                status = self.delete_status
                return reply.json(_error(status, _STATUS_NAMES.get(status, "UNKNOWN"),
                                         f"scripted delete failure: HTTP {status}"), status)
            with self._files_lock:
                self.files.pop(f"files/{_FILE.match(request.path)['id']}", None)
            return reply.json({})
        if kind in ("generate", "stream"):
            return self._generate(request, reply, stream=kind == "stream")
        return super().handle(request, reply)

    def _upload_start(self, request: Recorded, reply: Reply) -> None:
        h = request.headers
        if h.get("x-goog-upload-protocol") != "resumable" or h.get("x-goog-upload-command") != "start":
            return reply.json(_error(400, "INVALID_ARGUMENT", "expected a resumable upload start"), 400)
        meta = (request.json() or {}).get("file", {})
        with self._files_lock:
            file_id = f"fake{next(self._ids):04d}"
            upload_id = f"up-{file_id}"
            self._uploads[upload_id] = FakeFile(
                name=f"files/{file_id}",
                mime_type=h.get("x-goog-upload-header-content-type") or _field(meta, "mimeType", "mime_type") or "",
                display_name=_field(meta, "displayName", "display_name") or "",
                expected_size=int(h.get("x-goog-upload-header-content-length", "0")),
                expires=datetime.now(UTC) + self.file_ttl,
            )
        ver = _UPLOAD_START.match(request.path)["ver"]
        url = f"{self.url}/upload/{ver}/files?upload_id={upload_id}&upload_protocol=resumable"
        reply.raw(b"", headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})

    def _upload_chunk(self, request: Recorded, reply: Reply) -> None:
        upload_id = request.query["upload_id"][0]
        command = request.headers.get("x-goog-upload-command", "")
        with self._files_lock:
            if (self.chunk_failures.pop(0) if self.chunk_failures else None) == "disconnect":
                reply._h.close_connection = True  # ends the connection without an answer (base.py has no helper)
                return None
            f = self._uploads.get(upload_id)
            if f is None:
                return reply.json(_error(404, "NOT_FOUND", "unknown upload"), 404,
                                  {"X-Goog-Upload-Status": "final"})
            if int(request.headers.get("x-goog-upload-offset", "-1")) != len(f.data):
                return reply.json(_error(400, "INVALID_ARGUMENT", "bad upload offset"), 400,
                                  {"X-Goog-Upload-Status": "final"})
            f.data += request.body
            if "finalize" not in command:
                return reply.raw(b"", headers={"X-Goog-Upload-Status": "active"})
            del self._uploads[upload_id]
            if len(f.data) != f.expected_size:
                return reply.json(_error(400, "INVALID_ARGUMENT", "size mismatch"), 400,
                                  {"X-Goog-Upload-Status": "final"})
            f.finalized = True
            self.files[f.name] = f
            ver = _UPLOAD_START.match(request.path)["ver"]
            body = {"file": f.resource(self.url, ver)}
        reply.json(body, headers={"X-Goog-Upload-Status": "final"})

    def _file_get(self, request: Recorded, reply: Reply) -> None:
        m = _FILE.match(request.path)
        with self._files_lock:
            f = self.files.get(f"files/{m['id']}")
            if f is None:
                return reply.json(_error(403, "PERMISSION_DENIED", "You do not have permission to access "
                                         f"the File {m['id']} or it may not exist."), 403)
            scripted = self.poll_failures.pop(0) if self.poll_failures else None
            if scripted == "disconnect":
                reply._h.close_connection = True  # ends the connection without an answer (base.py has no helper)
                return None
            if scripted is not None:
                status, headers = (scripted, {}) if isinstance(scripted, int) else scripted
                return reply.json(_error(status, _STATUS_NAMES.get(status, "UNKNOWN"),
                                         f"scripted poll failure: HTTP {status}"), status, dict(headers))
            if f.state == "PROCESSING":
                f.polls += 1
                if f.polls > self.processing_polls:
                    f.state = "FAILED" if self.fail_processing else "ACTIVE"
            body = f.resource(self.url, m["ver"])
        reply.json(body)

    def _file_list(self, request: Recorded, reply: Reply) -> None:
        """One page of the files held: ``pageToken`` is where it starts (the previous page's ``nextPageToken``)."""
        if self.list_status is not None:
            status = self.list_status
            return reply.json(_error(status, _STATUS_NAMES.get(status, "UNKNOWN"),
                                     f"scripted list failure: HTTP {status}"), status)
        size = min(int(request.query.get("pageSize", ["10"])[0]), self.max_page_size)
        start = int(request.query.get("pageToken", ["0"])[0] or 0)
        ver = _FILES.match(request.path)["ver"]
        with self._files_lock:
            held = list(self.files.values())
            page = [f.resource(self.url, ver) for f in held[start:start + size]]
        body: dict[str, Any] = {"files": page} if page else {}  # as the API: no "files" when there are none
        if start + size < len(held):
            body["nextPageToken"] = str(start + size)
        reply.json(body)

    def _check_files(self, body: dict) -> tuple[int, dict] | None:
        """The error the real API gives when a referenced file is unknown or not ACTIVE, or None."""
        for content in body.get("contents", []):
            for part in content.get("parts", []):
                data = _field(part, "fileData", "file_data") or {}
                uri = _field(data, "fileUri", "file_uri")
                if not uri or not uri.startswith(self.url):
                    continue
                name = "files/" + uri.rsplit("/", 1)[-1]
                f = self.files.get(name)
                if f is None:
                    return 403, _error(403, "PERMISSION_DENIED",
                                       f"You do not have permission to access the File {name} or it may not exist.")
                if f.state != "ACTIVE":
                    return 400, _error(400, "FAILED_PRECONDITION",
                                       f"The File {name} is not in an ACTIVE state and usage is not allowed.")
        return None

    @staticmethod
    def _check_turns(body: dict) -> dict | None:
        """The real API's 400 for contents that do not start with ``user`` and alternate ``user``/``model``."""
        roles = [content.get("role") or "user" for content in body.get("contents", [])]
        if (roles and roles[0] != "user") or any(a == b for a, b in itertools.pairwise(roles)):
            return _error(400, "INVALID_ARGUMENT",
                          "Please ensure that multiturn requests alternate between user and model.")
        return None

    def _generate(self, request: Recorded, reply: Reply, *, stream: bool) -> None:
        body = request.json() or {}
        problem = self._check_files(body)
        if problem is not None:
            return reply.json(problem[1], problem[0])
        turns = self._check_turns(body)
        if turns is not None:
            return reply.json(turns, 400)
        model = _MODEL_CALL.match(request.path)["model"]
        if self.delay:
            time.sleep(self.delay)
        if self.block_reason:
            feedback: dict[str, Any] = {"blockReason": self.block_reason}
            if self.safety_ratings:
                feedback["safetyRatings"] = self.safety_ratings
            blocked = {"promptFeedback": feedback, "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}}
            return reply.sse([(None, blocked)]) if stream else reply.json(blocked)

        def chunk(text: str, last: bool) -> dict[str, Any]:
            # an empty piece has no content, as a withheld answer's last chunk at Google ("SAFETY": "When
            # streaming, the content field is empty if content filters block the output")
            cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}} if text else {}
            cand["index"] = 0
            out: dict[str, Any] = {"candidates": [cand], "modelVersion": model, "responseId": "fake-resp"}
            if last:
                cand["finishReason"] = self.finish_reason
                if self.safety_ratings:
                    cand["safetyRatings"] = self.safety_ratings
                out["usageMetadata"] = self.usage
            else:  # the real API repeats a running prompt count on every chunk
                out["usageMetadata"] = {"promptTokenCount": self.usage["promptTokenCount"],
                                        "totalTokenCount": self.usage["promptTokenCount"]}
            return out

        chunks = self.reply_chunks
        if not stream:
            if self.answer_bytes:
                return reply.raw(_replaced(json.dumps(chunk("".join(chunks), True)), self.answer_bytes),
                                 content_type="application/json; charset=UTF-8")
            return reply.json(chunk("".join(chunks), True))
        if self.answer_bytes:
            events = "".join(f"data: {json.dumps(chunk(t, i == len(chunks) - 1))}\n\n"
                             for i, t in enumerate(chunks))
            return reply.raw(_replaced(events, self.answer_bytes), content_type="text/event-stream")
        reply.sse([(None, chunk(t, i == len(chunks) - 1)) for i, t in enumerate(chunks)])
