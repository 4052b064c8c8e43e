"""The Claude models this provider offers: what they take, hold and cost."""

from __future__ import annotations

from router import FEATURE_STREAMING, OUTPUT_TEXT, Modality, ModelInfo, Price

#: Every Claude model here reads text, images and documents and writes text.
CLAUDE_INPUTS = frozenset({Modality.TEXT, Modality.IMAGE, Modality.DOCUMENT})

#: The largest ``max_tokens`` each model accepts (its output limit).
MAX_OUTPUT_TOKENS: dict[str, int] = {
    "claude-sonnet-4-6": 64_000,
    "claude-sonnet-4-5": 64_000,
    "claude-opus-4-5": 64_000,
    "claude-opus-4-1": 32_000,
    "claude-haiku-4-5": 64_000,
}


def _claude(name: str, input_per_mtok: float, output_per_mtok: float, default_max: int) -> ModelInfo:
    return ModelInfo(
        name=name,
        inputs=CLAUDE_INPUTS,
        outputs=frozenset({OUTPUT_TEXT}),
        features=frozenset({FEATURE_STREAMING}),
        context_tokens=200_000,
        price=Price(input_per_mtok=input_per_mtok, output_per_mtok=output_per_mtok),
        default_max_output_tokens=default_max,
    )


#: The models, the default routing target (claude-sonnet-4-6) first. Prices are Anthropic's
#: public list prices in US dollars per million tokens. claude-sonnet-4-5 reaches end of life on
#: 2026-11-30 (the SDK warns); it stays listed for rules that name it until then.
MODELS: list[ModelInfo] = [
    _claude("claude-sonnet-4-6", 3.0, 15.0, 8192),
    _claude("claude-sonnet-4-5", 3.0, 15.0, 8192),
    _claude("claude-opus-4-5", 5.0, 25.0, 8192),
    _claude("claude-opus-4-1", 15.0, 75.0, 4096),
    _claude("claude-haiku-4-5", 1.0, 5.0, 8192),
]


def max_tokens_for(model: ModelInfo, requested: int) -> int:
    """``max_tokens`` for a call: the request's value if set, else the model's default,
    never above the model's output limit and never below 1."""
    wanted = requested if requested > 0 else model.default_max_output_tokens
    limit = MAX_OUTPUT_TOKENS.get(model.name)
    if limit is not None:
        wanted = min(wanted, limit)
    return max(1, wanted)
