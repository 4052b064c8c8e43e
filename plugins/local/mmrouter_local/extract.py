"""Blocking extraction of each kind of media into labelled sections (run on worker threads)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from router import Media, Transcript
from router.mime import normalise_mime
from router.textdoc import document_head_text, document_text

from .asr import SpeechRecognizer
from .audio import MAX_AUDIO_SECONDS, NoAudioTrack, has_audio_track, iter_pcm16k
from .ocr import MAX_OCR_PIXELS, ImageTooLarge, TextReader, image_facts, open_image, to_bgr, upright
from .pdf import iter_pages
from .pool import one_at_a_time, raise_if_cancelled
from .video import read_frames


class UnreadableMedia(ValueError):
    """The media cannot be read by the local provider; the message says why."""


@dataclass
class Section:
    """One labelled piece of extracted text, e.g. ``[PDF report.pdf, page 2]``."""

    heading: str
    text: str

    def render(self) -> str:
        return f"[{self.heading}]\n{self.text.strip() or '(no text found)'}"


def label(media: Media, index: int) -> str:
    """A name for the media in headings: its filename, else a short id, else its position."""
    if media.filename:
        return media.filename
    if media.media_id:
        return media.media_id[:12]
    return f"#{index + 1}"


def source_of(media: Media) -> Path | bytes:
    """The stored file (streamed from disk) or the inline bytes."""
    if media.path is not None:
        return media.path
    if media.data is not None:
        return media.data
    raise UnreadableMedia("media given by URL cannot be fetched offline; upload it instead")


#: The text of an audio section when no speech was heard (the transcript's own text stays empty, as does a
#: transcription's answer).
NO_SPEECH = "(no speech found)"


def may_use_decoder(media: Media, *_: object) -> bool:
    """Whether transcribing ``media`` may need the speech decoder: False for a file without an audio track
    (a video without sound), or one that cannot be opened (either fails before the decoder is used)."""
    if media.path is None and media.data is None:
        return False  # refused before anything is read
    return has_audio_track(source_of(media))


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f}s"


def transcript_lines(transcript: Transcript) -> str:
    """One ``[start-end] text`` line per utterance."""
    return "\n".join(
        f"[{format_seconds(u.start)}-{format_seconds(u.end)}] {u.text}" for u in transcript.utterances
    )


def audio_sections(transcript: Transcript, name: str, kind: str = "Audio") -> list[Section]:
    """The section of an audio's (``kind`` "Audio") or a video's ("Video") ``transcript``, headed e.g.
    ``Audio talk.mp3: transcript, 3.0s``; :data:`NO_SPEECH` when no speech was heard."""
    what = "transcript" if kind == "Audio" else "audio transcript"
    heading = f"{kind} {name}: {what}, {format_seconds(transcript.duration_seconds)}"
    return [Section(heading, transcript_lines(transcript) or NO_SPEECH)]


#: The most bytes of a text document read (an answer holding more could not be sent anyway).
MAX_TEXT_BYTES = 16 * 1024 * 1024
#: The most pages of a multi-page TIFF (a fax, a scanner's batch) read by OCR; the rest are named only.
MAX_IMAGE_PAGES = 20
#: The image formats whose frames are pages, each read. Other formats' later frames (an animated GIF,
#: WebP or PNG, an MPO's second view) are not: the first frame is read.
PAGED_FORMATS = frozenset({"TIFF"})


def too_many_pixels(image) -> str | None:  # image: an opened, not yet decoded, Pillow image
    """Why ``image`` is too large to decode for OCR, or None (its size is known before decoding)."""
    if image.width * image.height > MAX_OCR_PIXELS:
        return f"the image is {image.width}x{image.height} pixels, over the {MAX_OCR_PIXELS:,} the local OCR reads"
    return None


def _head(media: Media, size: int) -> bytes:
    """At most ``size`` first bytes of ``media``, without reading the rest."""
    if media.data is not None:
        return media.data[:size]
    if media.path is None:
        raise UnreadableMedia("media given by URL cannot be read offline")
    with media.path.open("rb") as source:
        return source.read(size)


class Extractor:
    """The blocking work for each media kind, sharing one OCR engine and one speech decoder."""

    def __init__(self, frame_interval: float = 2.0, max_audio_seconds: float = MAX_AUDIO_SECONDS) -> None:
        self.frame_interval = frame_interval
        self.max_audio_seconds = max_audio_seconds
        self.ocr = TextReader()
        self.asr = SpeechRecognizer()

    def ocr_image_bytes(self, data: bytes, turn: str | None = None) -> list[str]:
        """OCR lines of an encoded image (an image in a PDF page), first turned by ``turn`` (the name of a
        ``PIL.Image.Transpose``: how the page shows it, see :func:`mmrouter_local.pdf.iter_pages`); one too
        large to decode is named only."""
        from PIL import Image

        try:
            image = open_image(data)
        except ImageTooLarge as e:
            return [f"({e}: not read)"]
        with image:
            problem = too_many_pixels(image)
            if problem:
                return [f"({problem}: not read)"]
            return self.ocr.read_lines(to_bgr(image if turn is None else image.transpose(Image.Transpose[turn])))

    def document(self, media: Media, name: str) -> list[Section]:
        """PDF text page by page (OCR for pages without text); plain text documents as they are."""
        return list(self.iter_document(media, name))

    def iter_document(self, media: Media, name: str) -> Iterator[Section]:
        """The sections of :meth:`document`, each as soon as its page is read (to stream them)."""
        mime = normalise_mime(media.mime_type)
        if mime.startswith("text/"):
            head = _head(media, MAX_TEXT_BYTES + 1)
            text = document_head_text(head[:MAX_TEXT_BYTES]) if len(head) > MAX_TEXT_BYTES else document_text(head)
            if len(head) > MAX_TEXT_BYTES:
                text += f"\n[... cut: the local provider reads the first {MAX_TEXT_BYTES} bytes of a text document]"
            yield Section(f"Document {name}", text)
            return
        if mime != "application/pdf":
            raise UnreadableMedia(f"cannot read {mime} documents offline; PDF and plain text are supported")
        pages = 0
        for page in iter_pages(source_of(media), self.ocr_image_bytes):
            suffix = ", OCR of a page without a text layer" if page.ocr else ""
            pages += 1
            yield Section(f"PDF {name}, page {page.number}{suffix}", page.text)
        if not pages:
            yield Section(f"PDF {name}", "(the PDF has no pages)")

    def image(self, media: Media, name: str) -> list[Section]:
        """Format and size of an image, then its OCR text in reading order; each page of a multi-page
        TIFF (up to :data:`MAX_IMAGE_PAGES`) in its own section, headed ``page 2 of 5``."""
        return list(self.iter_image(media, name))

    def iter_image(self, media: Media, name: str) -> Iterator[Section]:
        """The sections of :meth:`image`, each as soon as its page is read (to stream them)."""
        try:
            image = open_image(source_of(media))
        except UnreadableMedia:
            raise
        except ImageTooLarge as e:  # an icon holding a huge image: refused before Pillow decodes it
            raise UnreadableMedia(f"{e}: send a smaller image") from e
        except Exception as e:
            raise UnreadableMedia(f"not an image Pillow can open ({type(e).__name__})") from e
        with image:
            pages = self._page_count(image)
            for index in range(min(pages, MAX_IMAGE_PAGES)):
                raise_if_cancelled()  # each page is an OCR
                if index:
                    try:
                        image.seek(index)
                    except Exception as e:
                        raise UnreadableMedia(f"page {index + 1} of {pages} cannot be read ({type(e).__name__})") from e
                facts = image_facts(image)
                problem = too_many_pixels(image)
                if problem:  # decoding it would take gigabytes (a decompression bomb, or a huge scan)
                    raise UnreadableMedia(f"{problem}: send a smaller image")
                try:  # Pillow opens lazily: a truncated or corrupt file fails only here
                    page = upright(image)
                    bgr = to_bgr(page)
                except Exception as e:
                    raise UnreadableMedia(f"the image cannot be decoded ({type(e).__name__}: {e})") from e
                facts = replace(facts, width=page.width, height=page.height)  # as shown
                heading = f"Image {name}: {facts.describe()}" + (f", page {index + 1} of {pages}" if pages > 1 else "")
                yield Section(heading, "\n".join(self.ocr.read_lines(bgr)))
        if pages > MAX_IMAGE_PAGES:
            first = MAX_IMAGE_PAGES + 1
            which = f"page {first} of {pages}" if first == pages else f"pages {first}-{pages} of {pages}"
            yield Section(f"Image {name}: {which} not read",
                          f"(the local provider reads the first {MAX_IMAGE_PAGES} pages of an image)")

    @staticmethod
    def _page_count(image) -> int:  # image: an opened Pillow image
        """How many pages ``image`` has: a TIFF's frames, else 1 (see :data:`PAGED_FORMATS`)."""
        if image.format not in PAGED_FORMATS:
            return 1
        try:
            return max(1, int(getattr(image, "n_frames", 1)))
        except Exception:  # a broken chain of pages: the first is read
            return 1

    @one_at_a_time(may_use_decoder)
    def transcribe(self, media: Media) -> Transcript:
        """The speech in an audio file or a video's audio track; raises :class:`mmrouter_local.audio.AudioTooLong`
        for one over ``max_audio_seconds``, :class:`mmrouter_local.audio.NoAudioTrack` for a file without sound.
        The pool runs such jobs one at a time (there is one decoder); one without sound does not wait."""
        return self.asr.transcribe(iter_pcm16k(source_of(media), self.max_audio_seconds))

    @one_at_a_time(may_use_decoder)
    def audio(self, media: Media, name: str, kind: str = "Audio") -> tuple[Transcript | None, list[Section]]:
        """The transcript of the speech and its section, headed e.g. ``Audio talk.mp3: transcript, 3.0s``. A
        video without an audio track has no transcript (None), and its section says so."""
        try:
            transcript = self.transcribe(media)
        except NoAudioTrack:
            if kind == "Audio":
                raise
            return None, [Section(f"{kind} {name}: no audio track",
                                  "(the video has no audio track: there is no speech to transcribe)")]
        return transcript, audio_sections(transcript, name, kind)

    def video_frames(self, media: Media, name: str) -> list[Section]:
        """Text read on frames sampled every ``frame_interval`` seconds, one section per span."""
        spans = read_frames(source_of(media), self.frame_interval, self.ocr.read_lines)
        if not spans:
            return [Section(f"Video {name} frames", "(no on-screen text found)")]
        sections = []
        for span in spans:
            when = (format_seconds(span.start) if span.start == span.end
                    else f"{format_seconds(span.start)}-{format_seconds(span.end)}")
            sections.append(Section(f"Video {name} frames at {when}", "\n".join(span.lines)))
        return sections

    def unload(self) -> None:
        """Drop the loaded models (they load again if used)."""
        self.ocr = TextReader(self.ocr.min_score)
        self.asr.close()
        self.asr = SpeechRecognizer()
