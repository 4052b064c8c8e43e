"""The Gemini models this plugin offers, with their inputs, context and prices."""

from __future__ import annotations

from router import FEATURE_STREAMING, OUTPUT_TEXT, Modality, ModelInfo, Price

#: Every Gemini 2.5 model reads text, images, audio, video and PDF documents.
ALL_INPUTS = frozenset(
    {Modality.TEXT, Modality.IMAGE, Modality.AUDIO, Modality.VIDEO, Modality.DOCUMENT}
)
#: The media formats Gemini takes (ai.google.dev/gemini-api/docs: image, audio, video and document
#: understanding; the audio list also has what Vertex AI lists, such as m4a and webm). Not BMP, TIFF, SVG
#: or Matroska video: the API answers 400 INVALID_ARGUMENT. Text documents of any ``text/*`` type are sent
#: (as ``text/plain`` when Gemini does not list the type).
MIME_TYPES = frozenset({
    "image/png", "image/jpeg", "image/webp", "image/heic", "image/heif",
    "audio/wav", "audio/mpeg", "audio/aiff", "audio/x-aiff", "audio/aac", "audio/ogg", "audio/flac",
    "audio/mp4", "audio/webm", "audio/opus", "audio/mpga", "audio/pcm",
    "video/mp4", "video/mpeg", "video/mov", "video/quicktime", "video/avi", "video/x-msvideo", "video/x-flv", "video/mpg",
    "video/webm", "video/wmv", "video/x-ms-wmv", "video/3gpp",
    "application/pdf", "application/json", "application/x-javascript", "application/x-python", "text/*",
})
#: What Gemini is given by URL: every media, the URL sent as a ``fileData`` part's ``file_uri`` (Gemini
#: fetches it), as a Files API upload is referenced.
URL_INPUTS = ALL_INPUTS - {Modality.TEXT}
#: Context window of the Gemini 2.5 models, in tokens.
CONTEXT_TOKENS = 1_048_576
#: The input tokens Gemini counts per PDF page (ai.google.dev/gemini-api/docs/document-processing: "each
#: document page is equivalent to 258 tokens"): a session's PDFs are counted at this rate for Gemini, so
#: that a 700-page contract it took whole stays in its history (the router's own estimate is 1,500 a page).
PDF_PAGE_TOKENS = 258


def _model(name: str, price: Price) -> ModelInfo:
    # output limit: 65,536 tokens for every Gemini 2.5 model
    return ModelInfo(
        name=name,
        inputs=ALL_INPUTS,
        outputs=frozenset({OUTPUT_TEXT}),
        features=frozenset({FEATURE_STREAMING}),
        context_tokens=CONTEXT_TOKENS,
        price=price,
        default_max_output_tokens=8192,
        max_output_tokens=65_536,
        input_mime_types=MIME_TYPES,
        url_inputs=URL_INPUTS,
        pdf_page_tokens=PDF_PAGE_TOKENS,
    )


#: Public list prices (USD per million tokens, paid tier, prompts up to 200k tokens;
#: thinking tokens are billed as output; audio input costs more on the Flash models). Config may
#: override them. Cached input (implicit caching, on by default) is the "context caching" price of
#: ai.google.dev/gemini-api/docs/pricing (2026-11: 10% of the input price; 25% when caching came out): 2.5 Pro $0.125,
#: 2.5 Flash $0.03, 2.5 Flash-Lite $0.01 for text, image and video. Cached audio is listed at 10% of the
#: audio price ($0.10, $0.03), but a model has one cached rate: cached audio is priced at the text one.
#: 2.5 Pro costs more past 200k prompt tokens (the whole call: input $2.50, output $15.00, cached
#: $0.25); the Flash models have one price at every length.
MODELS: list[ModelInfo] = [
    _model("gemini-2.5-pro", Price(input_per_mtok=1.25, output_per_mtok=10.00, cached_input_per_mtok=0.125,
                                   long_context_above_tokens=200_000, long_context_input_per_mtok=2.50,
                                   long_context_output_per_mtok=15.00, long_context_cached_input_per_mtok=0.25)),
    _model("gemini-2.5-flash", Price(input_per_mtok=0.30, output_per_mtok=2.50, audio_input_per_mtok=1.00,
                                     cached_input_per_mtok=0.03)),
    _model("gemini-2.5-flash-lite", Price(input_per_mtok=0.10, output_per_mtok=0.40, audio_input_per_mtok=0.30,
                                          cached_input_per_mtok=0.01)),
]
#: What a configured model (``providers.gemini.models``, see :class:`router.ModelSpec`) leaves unset is
#: taken from this one (and its inputs are all it may name).
TYPICAL = MODELS[0]
