"""The model catalogue: what each OpenAI model takes and gives, its context and its price.

Prices are OpenAI's public list prices in US dollars (per million tokens, or
per hour of audio for duration-billed transcription); the config file can
override them (``prices:`` in the router config). Transcription models billed
by tokens also carry OpenAI's per-minute estimate as ``per_audio_hour`` so the
router can estimate before a call; a call is priced by tokens or by audio
seconds (whichever the API billed), never both, so cost is not counted twice.
Prompt tokens read from OpenAI's automatic prompt cache are priced at
``cached_input_per_mtok`` where OpenAI lists a cached-input price.

Extra models (OpenAI's newer ones, or those of OpenAI-compatible servers such as vLLM, Ollama or
llama.cpp) come from ``providers.openai.models``::

    models:
      - name: llama3.2-vision
        inputs: [text, image]          # text, image, audio (the plugin cannot send document or video)
        outputs: [text]                # or [transcript] for a speech-to-text model
        context_tokens: 131072
        max_output_tokens: 4096        # its output limit: larger requests are capped to it
        price: {input_per_mtok: 0, output_per_mtok: 0, per_audio_hour: 0, audio_input_per_mtok: 0,
                cached_input_per_mtok: 0}   # 0: cached prompt tokens cost input_per_mtok
        transcription_format: json     # json | verbose_json | diarized_json (transcript models)
        takes_temperature: true        # false: options.temperature is not sent (OpenAI's reasoning models)

``price`` is required for a model of OpenAI's own API (a provider whose base_url is OpenAI's): a model
left unpriced there would be billed $0. Elsewhere (a local server) it defaults to 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from router import (
    FEATURE_DIARIZATION,
    FEATURE_STREAMING,
    OUTPUT_TEXT,
    OUTPUT_TRANSCRIPT,
    Modality,
    ModelInfo,
    Price,
)
from router.errors import ConfigError

#: Response formats of ``/audio/transcriptions`` this plugin understands.
TRANSCRIPTION_FORMATS = ("json", "verbose_json", "diarized_json")

#: The image formats chat models take (platform.openai.com/docs/guides/images-vision: png, jpeg, webp, gif).
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
#: The audio formats audio-input chat models take (``input_audio.format``: wav or mp3).
CHAT_AUDIO_TYPES = frozenset({"audio/wav", "audio/mpeg"})
#: The formats ``/audio/transcriptions`` takes, each with the extension a clip of it is uploaded under (the
#: API finds the format by the extension; transcribe.AUDIO_EXTENSIONS: flac, mp3, mp4, mpeg, mpga, m4a, ogg,
#: wav, webm). Not AAC (ADTS), AMR, AIFF or Matroska: the API answers 400 "Invalid file format".
TRANSCRIBE_SUFFIXES = {
    "audio/flac": ".flac", "audio/mpeg": ".mp3", "audio/mpga": ".mpga", "audio/mp4": ".m4a", "audio/ogg": ".ogg",
    "audio/opus": ".ogg", "audio/wav": ".wav", "audio/webm": ".webm", "video/mp4": ".mp4", "video/mpeg": ".mpeg",
    "video/webm": ".webm", "video/ogg": ".ogg",
}
TRANSCRIBE_TYPES = frozenset(TRANSCRIBE_SUFFIXES)
#: The media a chat model is given by URL (``ModelInfo.url_inputs``): images, whose URL goes as the
#: ``image_url`` itself. Audio is sent as bytes (``input_audio``, or an upload to transcribe): a clip given
#: by URL is refused before sending, so routing sends it to a model that takes URLs (AssemblyAI) instead.
URL_INPUTS = frozenset({Modality.IMAGE})

_TEXT_IMAGE = frozenset({Modality.TEXT, Modality.IMAGE})
_TEXT_AUDIO = frozenset({Modality.TEXT, Modality.AUDIO})
_AUDIO = frozenset({Modality.AUDIO})
_TRANSCRIPT = frozenset({OUTPUT_TRANSCRIPT})

#: The largest request OpenAI's transcription models take: "File uploads are currently limited to 25 MB"
#: (platform.openai.com/docs/guides/speech-to-text); "the maximum request size is 25 MiB" (help.openai.com
#: article 7031512, Audio API FAQ). The API counts the whole multipart body, the file and its envelope: it
#: answers a larger upload with 413 "Maximum content size limit (26214400) exceeded (N bytes read)" after
#: reading it.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
#: Room kept in the body for the multipart envelope around the file: the part headers (its name, at most
#: 255 characters, 4 bytes each in UTF-8), the boundaries and the other fields (model, response_format,
#: timestamp_granularities, language, temperature, chunking_strategy), about 600 bytes usually, 2 KiB at most.
ENVELOPE_BYTES = 8 * 1024
#: The largest file the built-in transcription models are sent: :data:`MAX_UPLOAD_BYTES` less the envelope
#: (26,206,208 bytes). They declare it (``ModelInfo.max_media_bytes``), so routing passes over them for a
#: larger file. Models an operator configures (OpenAI-compatible servers) have their own limits, unknown
#: here. transcribe.py refuses a larger file before uploading it.
MAX_FILE_BYTES = MAX_UPLOAD_BYTES - ENVELOPE_BYTES


@dataclass(frozen=True)
class Entry:
    """A model plus how this plugin calls it."""

    info: ModelInfo
    #: For transcript models: the response_format to ask for.
    transcription_format: str = ""
    #: The most tokens the model writes in one answer (0: unknown); larger requests are capped to it.
    max_output_tokens: int = 0
    #: Refuse animated GIFs before sending: OpenAI's chat models take "non-animated GIF" only
    #: (platform.openai.com/docs/guides/images-vision) and answer 400; a local server's may read them.
    still_gifs_only: bool = False

    @property
    def transcribes(self) -> bool:
        """True for speech-to-text models (served by ``/audio/transcriptions``)."""
        return OUTPUT_TRANSCRIPT in self.info.outputs


def _chat(name: str, inputs: frozenset[Modality], price: Price, context: int = 128_000,
          max_out: int = 16_384) -> Entry:
    formats = (IMAGE_TYPES if Modality.IMAGE in inputs else frozenset()) | (
        CHAT_AUDIO_TYPES if Modality.AUDIO in inputs else frozenset())
    return Entry(ModelInfo(name, inputs=inputs, context_tokens=context, price=price,
                           default_max_output_tokens=max_out, input_mime_types=formats,
                           url_inputs=inputs & URL_INPUTS, max_output_tokens=max_out), max_output_tokens=max_out,
                 still_gifs_only=Modality.IMAGE in inputs)


def _stt(name: str, price: Price, fmt: str, diarizes: bool = False, context: int = 16_000,
         max_seconds: float = 0) -> Entry:
    features = frozenset({FEATURE_DIARIZATION}) if diarizes else frozenset()
    return Entry(ModelInfo(name, inputs=_AUDIO, outputs=_TRANSCRIPT, features=features,
                           context_tokens=context, price=price, default_max_output_tokens=2_000,
                           input_mime_types=TRANSCRIBE_TYPES, max_audio_seconds=max_seconds,
                           max_media_bytes=MAX_FILE_BYTES, url_inputs=frozenset()), fmt)


#: The built-in catalogue, in preference order (the first model is the contract model).
BUILTIN: tuple[Entry, ...] = (
    # Cached input (prompt_tokens_details.cached_tokens) is half the input price: platform.openai.com/docs/pricing
    # ("Cached input" column, 2026-11: gpt-4o $1.25, gpt-4o-mini $0.075).
    _chat("gpt-4o", _TEXT_IMAGE, Price(2.50, 10.00, cached_input_per_mtok=1.25)),
    _chat("gpt-4o-mini", _TEXT_IMAGE, Price(0.15, 0.60, cached_input_per_mtok=0.075)),
    # Audio in chat: audio input tokens cost more than text ones (no cached-input price is listed for these).
    # gpt-4o(-mini)-audio-preview were shut down on 2026-05-07 (the openai SDK's types/shared/chat_model.py);
    # their successors, from developers.openai.com/api/docs/models/gpt-audio and .../gpt-audio-mini (read
    # 2026-11): gpt-audio text $2.50 / $10, audio input $32; gpt-audio-mini text $0.60 / $2.40 (its page
    # lists no audio price: $10, that of OpenAI's other mini audio models, gpt-realtime-mini). Both 128k
    # context, 16,384 output tokens. gpt-audio-mini is announced to shut down on 2027-01-20 (the SDK).
    _chat("gpt-audio", _TEXT_AUDIO, Price(2.50, 10.00, audio_input_per_mtok=32.00)),
    _chat("gpt-audio-mini", _TEXT_AUDIO, Price(0.60, 2.40, audio_input_per_mtok=10.00)),
    # whisper-1 is billed per minute (0.006 USD) and gives segments through verbose_json.
    _stt("whisper-1", Price(per_audio_hour=0.36), "verbose_json"),
    # Length caps: gpt-4o-transcribe-diarize answers longer audio with 400 "audio duration N seconds is longer
    # than 1400 seconds which is the maximum for this model"; the 1500 s of the other two is from memory.
    _stt("gpt-4o-transcribe", Price(2.50, 10.00, per_audio_hour=0.36, audio_input_per_mtok=6.00), "json",
         max_seconds=1500),
    _stt("gpt-4o-mini-transcribe", Price(1.25, 5.00, per_audio_hour=0.18, audio_input_per_mtok=3.00), "json",
         max_seconds=1500),
    _stt("gpt-4o-transcribe-diarize", Price(2.50, 10.00, per_audio_hour=0.36, audio_input_per_mtok=6.00),
         "diarized_json", diarizes=True, max_seconds=1400),
    _stt("gpt-transcribe", Price(per_audio_hour=0.27), "json"),
)


#: What this plugin can send a model: text, images (``image_url``) and audio (``input_audio``, or an upload
#: to transcribe); not documents or video, which routing then bridges (``local/extract``) or sends elsewhere.
SENDABLE = frozenset({Modality.TEXT, Modality.IMAGE, Modality.AUDIO})


def _modalities(value: Any, where: str) -> frozenset[Modality]:
    """The modalities of ``inputs`` (``where`` names the item, for errors); ConfigError for an unknown one
    or one the plugin cannot send (a model declared to take documents would be sent PDFs it never gets)."""
    names = [value] if isinstance(value, str) else list(value or [])
    try:
        result = frozenset(Modality(str(n).lower()) for n in names)
    except ValueError:
        choices = ", ".join(m.value for m in Modality)
        raise ConfigError(f"{where}.inputs must list modalities among {choices}, got {value!r}") from None
    if not result:
        raise ConfigError(f"{where}.inputs must not be empty")
    if not result <= SENDABLE:
        cannot = ", ".join(sorted(m.value for m in result - SENDABLE))
        can = ", ".join(sorted(m.value for m in SENDABLE))
        raise ConfigError(f"{where}.inputs: this plugin cannot send {cannot} (it sends {can})")
    return result


#: The keys of one item of ``providers.<provider>.models``.
SPEC_KEYS = ("name", "inputs", "outputs", "price", "context_tokens", "max_output_tokens", "transcription_format",
             "takes_temperature")
_PRICE_KEYS = tuple(f.name for f in fields(Price))


def _unknown_keys(given: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse a key not in ``known`` (a typo such as ``input`` for ``input_per_mtok`` would price a model at 0)."""
    unknown = [str(key) for key in given if key not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")


def entry_from_config(spec: Mapping[str, Any], index: int, provider: str = "openai", *,
                      price_required: bool = False) -> Entry:
    """Build a model from one item of ``providers.<provider>.models``; with ``price_required`` (a provider
    of OpenAI's own API), an item without ``price`` is a ConfigError: it would be billed $0."""
    where = f"providers.{provider}.models[{index}]"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: must be a mapping (name, inputs, price...), got {type(spec).__name__}")
    _unknown_keys(spec, SPEC_KEYS, where)
    name = str(spec.get("name") or "").strip()
    if not name:
        raise ConfigError(f"{where}.name is required")
    outputs = spec.get("outputs") or [OUTPUT_TEXT]
    outputs = frozenset([outputs] if isinstance(outputs, str) else outputs)
    if not outputs <= {OUTPUT_TEXT, OUTPUT_TRANSCRIPT}:
        raise ConfigError(f"{where}.outputs must be 'text' or 'transcript', got {sorted(outputs)}")
    transcribes = OUTPUT_TRANSCRIPT in outputs
    default_inputs = ["audio"] if transcribes else ["text"]
    inputs = _modalities(spec.get("inputs") or default_inputs, where)
    if price_required and spec.get("price") is None:
        raise ConfigError(f"{where}.price is required for a model of OpenAI's API, or its calls are billed $0: "
                          "give its list prices (price: {input_per_mtok: .., output_per_mtok: ..}; zeros for a "
                          "free model)")
    price_spec = spec.get("price") or {}
    if not isinstance(price_spec, Mapping):
        raise ConfigError(f"{where}.price: must map price names to numbers, got {type(price_spec).__name__}")
    _unknown_keys(price_spec, _PRICE_KEYS, f"{where}.price")
    try:
        price = Price(**{key: (int if key == "long_context_above_tokens" else float)(value)
                         for key, value in price_spec.items()})
        context = int(spec.get("context_tokens") or 128_000)
        limit = int(spec.get("max_output_tokens") or 0)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{where}: bad number ({exc})") from None
    temperature = spec.get("takes_temperature", True)
    if not isinstance(temperature, bool):
        raise ConfigError(f"{where}.takes_temperature must be true or false, got {temperature!r}")
    fmt = str(spec.get("transcription_format") or ("verbose_json" if "whisper" in name else "json"))
    if transcribes and fmt not in TRANSCRIPTION_FORMATS:
        raise ConfigError(f"{where}.transcription_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}")
    features = set() if transcribes else {FEATURE_STREAMING}
    if fmt == "diarized_json" and transcribes:
        features.add(FEATURE_DIARIZATION)
    # what this plugin can send: transcription uploads named by their type, chat audio as wav or mp3 (images
    # as they are: a local server may read more than OpenAI)
    formats = TRANSCRIBE_TYPES if transcribes else CHAT_AUDIO_TYPES if Modality.AUDIO in inputs else frozenset()
    info = ModelInfo(name, inputs=inputs, outputs=outputs, features=frozenset(features),
                     context_tokens=context, price=price, default_max_output_tokens=limit or 4096,
                     input_mime_types=formats, url_inputs=frozenset() if transcribes else inputs & URL_INPUTS,
                     takes_temperature=temperature, max_output_tokens=0 if transcribes else limit)
    return Entry(info, fmt if transcribes else "", max_output_tokens=limit)


def _spec_of(entry: Entry) -> dict[str, Any]:
    """A built-in model as an item of ``models:`` would give it (what :func:`entry_from_config` reads)."""
    info = entry.info
    return {"name": info.name, "inputs": sorted(m.value for m in info.inputs), "outputs": sorted(info.outputs),
            "price": asdict(info.price), "context_tokens": info.context_tokens,
            "max_output_tokens": entry.max_output_tokens,
            "transcription_format": entry.transcription_format or None,
            "takes_temperature": info.takes_temperature}


def catalogue(builtin: bool, extra: Iterable[Mapping[str, Any]], provider: str = "openai", *,
              openai_api: bool = False) -> dict[str, Entry]:
    """The models to offer, by name: the built-in ones (if wanted) then configured ones (which win).

    ``openai_api``: the provider talks to OpenAI's own API (``OpenAISettings.is_openai``), where a configured
    model needs a ``price`` (a built-in one given again keeps the built-in's)."""
    entries: dict[str, Entry] = {e.info.name: e for e in BUILTIN} if builtin else {}
    known = {e.info.name: e for e in BUILTIN}
    for index, spec in enumerate(extra):
        same = known.get(str(spec.get("name") or "").strip()) if isinstance(spec, Mapping) else None
        # a built-in model given again (a smaller context, a new price): what the item leaves out is the
        # built-in's, its price and inputs above all (left out, they were 0 and text only)
        entry = entry_from_config({**_spec_of(same), **spec} if same is not None else spec, index, provider,
                                  price_required=openai_api)
        if same is not None:  # what it takes does not change
            entry = replace(entry, still_gifs_only=same.still_gifs_only,
                            info=replace(entry.info, input_mime_types=same.info.input_mime_types,
                                         max_audio_seconds=same.info.max_audio_seconds,
                                         max_media_bytes=same.info.max_media_bytes,
                                         default_max_output_tokens=same.info.default_max_output_tokens
                                         if "max_output_tokens" not in spec else entry.info.default_max_output_tokens))
        entries[entry.info.name] = entry
    return entries
