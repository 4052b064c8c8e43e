"""The Claude models this provider offers: what they take, hold and cost."""

from __future__ import annotations

from router import FEATURE_STREAMING, OUTPUT_TEXT, Modality, ModelInfo, Price

from .limits import MAX_REQUEST_BYTES

#: Every Claude model here reads text, images and documents and writes text.
#: Prompt-cache reads cost 0.1x the input price on every Claude model (platform.claude.com/docs/en/
#: build-with-claude/prompt-caching, "Pricing", 2026-11); writes cost more, see ``provider.CACHE_WRITE_EXTRA``.
CACHE_READ_SHARE = 0.1
CLAUDE_INPUTS = frozenset({Modality.TEXT, Modality.IMAGE, Modality.DOCUMENT})
#: Image media types the API accepts, after normalising aliases (:func:`router.mime.normalise_mime`).
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
#: The formats Claude takes: those images, PDF documents and any ``text/*`` document (sent as plain text).
CLAUDE_MIME_TYPES = IMAGE_TYPES | {"application/pdf", "text/*"}
#: What Claude is given by URL (a ``url`` source, which Anthropic fetches): images and PDF documents. A text
#: document is sent as its text, so a text document given by URL is refused (:mod:`.convert`).
CLAUDE_URL_INPUTS = frozenset({Modality.IMAGE, Modality.DOCUMENT})


def _claude(name: str, input_per_mtok: float, output_per_mtok: float, default_max: int,
            max_output: int, context: int = 200_000) -> ModelInfo:
    return ModelInfo(
        name=name,
        inputs=CLAUDE_INPUTS,
        outputs=frozenset({OUTPUT_TEXT}),
        features=frozenset({FEATURE_STREAMING}),
        context_tokens=context,
        price=Price(input_per_mtok=input_per_mtok, output_per_mtok=output_per_mtok,
                    cached_input_per_mtok=round(input_per_mtok * CACHE_READ_SHARE, 6)),
        default_max_output_tokens=default_max,
        max_output_tokens=max_output,
        input_mime_types=CLAUDE_MIME_TYPES,
        url_inputs=CLAUDE_URL_INPUTS,
        # the Messages API version the anthropic 2.x SDK speaks refuses sampling parameters (provider.py):
        # a request's temperature is left out, and the answer's route says so
        takes_temperature=False,
        # 32 MB per request, its media base64-encoded (limits.py, which refuses a larger one before sending):
        # declared so that routing and ExplainRoute pass Claude by for a larger request, with a reason
        max_request_bytes=MAX_REQUEST_BYTES,
    )


#: The models, the default routing target (claude-sonnet-4-6) first, with their default ``max_tokens``
#: and the largest each accepts (its output limit). Prices are Anthropic's public list prices in US
#: dollars per million tokens (cache reads at :data:`CACHE_READ_SHARE` of the input price). claude-sonnet-4-5 reaches end of life on 2026-11-30 (the SDK warns);
#: it stays listed for rules that name it until then. claude-opus-4-1 was retired on 2026-08-05 (gone
#: from the anthropic 2.14 SDK's model list) and is no longer offered. claude-sonnet-4-6 holds 1M tokens
#: and writes up to 128K at the same flat price (platform.claude.com/docs/en/models/sonnet-4-6/overview,
#: "Context window: 1M tokens · Max output: 128K tokens · $3 / $15 per MTok", read 2026-11); its larger
#: window also allows 600 PDF pages and images per request (see :mod:`.limits`).
#: Newer models are added by configuration (``providers.anthropic.models``, see :class:`router.ModelSpec`),
#: which takes the rest from :data:`TYPICAL`.
MODELS: list[ModelInfo] = [
    _claude("claude-sonnet-4-6", 3.0, 15.0, 8192, 128_000, context=1_000_000),
    _claude("claude-sonnet-4-5", 3.0, 15.0, 8192, 64_000),
    _claude("claude-opus-4-5", 5.0, 25.0, 8192, 64_000),
    _claude("claude-haiku-4-5", 1.0, 5.0, 8192, 64_000),
]
#: What a configured model leaves unset is taken from this one (and its inputs are all it may name).
TYPICAL = MODELS[0]


def max_tokens_for(model: ModelInfo, requested: int) -> int:
    """``max_tokens`` for a call: the request's value if set, else the model's default,
    never above the model's output limit and never below 1."""
    wanted = requested if requested > 0 else model.default_max_output_tokens
    if model.max_output_tokens > 0:
        wanted = min(wanted, model.max_output_tokens)
    return max(1, wanted)
