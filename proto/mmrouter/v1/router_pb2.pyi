from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Modality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODALITY_UNSPECIFIED: _ClassVar[Modality]
    MODALITY_TEXT: _ClassVar[Modality]
    MODALITY_IMAGE: _ClassVar[Modality]
    MODALITY_AUDIO: _ClassVar[Modality]
    MODALITY_VIDEO: _ClassVar[Modality]
    MODALITY_DOCUMENT: _ClassVar[Modality]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_AUTO: _ClassVar[Task]
    TASK_CHAT: _ClassVar[Task]
    TASK_TRANSCRIBE: _ClassVar[Task]

class RuleOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RULE_OUTCOME_UNSPECIFIED: _ClassVar[RuleOutcome]
    RULE_OUTCOME_MATCHED: _ClassVar[RuleOutcome]
    RULE_OUTCOME_SKIPPED: _ClassVar[RuleOutcome]
    RULE_OUTCOME_NOT_MATCHED: _ClassVar[RuleOutcome]
    RULE_OUTCOME_NOT_EVALUATED: _ClassVar[RuleOutcome]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CONTENT_FILTER: _ClassVar[FinishReason]
    FINISH_REASON_REFUSAL: _ClassVar[FinishReason]
    FINISH_REASON_OTHER: _ClassVar[FinishReason]

class ProviderState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVIDER_STATE_UNSPECIFIED: _ClassVar[ProviderState]
    PROVIDER_STATE_READY: _ClassVar[ProviderState]
    PROVIDER_STATE_NOT_CONFIGURED: _ClassVar[ProviderState]
    PROVIDER_STATE_BROKEN: _ClassVar[ProviderState]
    PROVIDER_STATE_DISABLED: _ClassVar[ProviderState]

class MediaDeletionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEDIA_DELETION_STATUS_UNSPECIFIED: _ClassVar[MediaDeletionStatus]
    MEDIA_DELETION_STATUS_DELETED: _ClassVar[MediaDeletionStatus]
    MEDIA_DELETION_STATUS_NOT_FOUND: _ClassVar[MediaDeletionStatus]
    MEDIA_DELETION_STATUS_KEPT_IN_SESSION: _ClassVar[MediaDeletionStatus]
MODALITY_UNSPECIFIED: Modality
MODALITY_TEXT: Modality
MODALITY_IMAGE: Modality
MODALITY_AUDIO: Modality
MODALITY_VIDEO: Modality
MODALITY_DOCUMENT: Modality
ROLE_UNSPECIFIED: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
ROLE_SYSTEM: Role
TASK_UNSPECIFIED: Task
TASK_AUTO: Task
TASK_CHAT: Task
TASK_TRANSCRIBE: Task
RULE_OUTCOME_UNSPECIFIED: RuleOutcome
RULE_OUTCOME_MATCHED: RuleOutcome
RULE_OUTCOME_SKIPPED: RuleOutcome
RULE_OUTCOME_NOT_MATCHED: RuleOutcome
RULE_OUTCOME_NOT_EVALUATED: RuleOutcome
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CONTENT_FILTER: FinishReason
FINISH_REASON_REFUSAL: FinishReason
FINISH_REASON_OTHER: FinishReason
PROVIDER_STATE_UNSPECIFIED: ProviderState
PROVIDER_STATE_READY: ProviderState
PROVIDER_STATE_NOT_CONFIGURED: ProviderState
PROVIDER_STATE_BROKEN: ProviderState
PROVIDER_STATE_DISABLED: ProviderState
MEDIA_DELETION_STATUS_UNSPECIFIED: MediaDeletionStatus
MEDIA_DELETION_STATUS_DELETED: MediaDeletionStatus
MEDIA_DELETION_STATUS_NOT_FOUND: MediaDeletionStatus
MEDIA_DELETION_STATUS_KEPT_IN_SESSION: MediaDeletionStatus

class Media(_message.Message):
    __slots__ = ("modality", "mime_type", "data", "media_id", "url", "filename")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    modality: Modality
    mime_type: str
    data: bytes
    media_id: str
    url: str
    filename: str
    def __init__(self, modality: _Optional[_Union[Modality, str]] = ..., mime_type: _Optional[str] = ..., data: _Optional[bytes] = ..., media_id: _Optional[str] = ..., url: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class Part(_message.Message):
    __slots__ = ("text", "media")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    text: str
    media: Media
    def __init__(self, text: _Optional[str] = ..., media: _Optional[_Union[Media, _Mapping]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("role", "parts")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    role: Role
    parts: _containers.RepeatedCompositeFieldContainer[Part]
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., parts: _Optional[_Iterable[_Union[Part, _Mapping]]] = ...) -> None: ...

class Options(_message.Message):
    __slots__ = ("task", "diarization", "speakers_expected", "language", "max_output_tokens", "temperature")
    TASK_FIELD_NUMBER: _ClassVar[int]
    DIARIZATION_FIELD_NUMBER: _ClassVar[int]
    SPEAKERS_EXPECTED_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    task: Task
    diarization: bool
    speakers_expected: int
    language: str
    max_output_tokens: int
    temperature: float
    def __init__(self, task: _Optional[_Union[Task, str]] = ..., diarization: _Optional[bool] = ..., speakers_expected: _Optional[int] = ..., language: _Optional[str] = ..., max_output_tokens: _Optional[int] = ..., temperature: _Optional[float] = ...) -> None: ...

class RoutingHints(_message.Message):
    __slots__ = ("provider", "model", "tags")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class MultimodalRequest(_message.Message):
    __slots__ = ("messages", "options", "hints", "session_id", "metadata", "turn_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    HINTS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    options: Options
    hints: RoutingHints
    session_id: str
    metadata: _containers.ScalarMap[str, str]
    turn_id: str
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., options: _Optional[_Union[Options, _Mapping]] = ..., hints: _Optional[_Union[RoutingHints, _Mapping]] = ..., session_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., turn_id: _Optional[str] = ...) -> None: ...

class Utterance(_message.Message):
    __slots__ = ("speaker", "start_seconds", "end_seconds", "text", "confidence")
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    END_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    speaker: str
    start_seconds: float
    end_seconds: float
    text: str
    confidence: float
    def __init__(self, speaker: _Optional[str] = ..., start_seconds: _Optional[float] = ..., end_seconds: _Optional[float] = ..., text: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class Word(_message.Message):
    __slots__ = ("text", "start_seconds", "end_seconds", "speaker", "confidence")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    END_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    text: str
    start_seconds: float
    end_seconds: float
    speaker: str
    confidence: float
    def __init__(self, text: _Optional[str] = ..., start_seconds: _Optional[float] = ..., end_seconds: _Optional[float] = ..., speaker: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class Transcript(_message.Message):
    __slots__ = ("text", "utterances", "words", "language", "duration_seconds")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    utterances: _containers.RepeatedCompositeFieldContainer[Utterance]
    words: _containers.RepeatedCompositeFieldContainer[Word]
    language: str
    duration_seconds: float
    def __init__(self, text: _Optional[str] = ..., utterances: _Optional[_Iterable[_Union[Utterance, _Mapping]]] = ..., words: _Optional[_Iterable[_Union[Word, _Mapping]]] = ..., language: _Optional[str] = ..., duration_seconds: _Optional[float] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "audio_seconds", "cost_usd", "audio_input_tokens", "cached_input_tokens")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    AUDIO_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    audio_seconds: float
    cost_usd: float
    audio_input_tokens: int
    cached_input_tokens: int
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., audio_seconds: _Optional[float] = ..., cost_usd: _Optional[float] = ..., audio_input_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ...) -> None: ...

class RuleTrace(_message.Message):
    __slots__ = ("rule", "outcome", "reason")
    RULE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rule: str
    outcome: RuleOutcome
    reason: str
    def __init__(self, rule: _Optional[str] = ..., outcome: _Optional[_Union[RuleOutcome, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("provider", "model", "ok", "error", "latency_ms")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    ok: bool
    error: str
    latency_ms: float
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("purpose", "provider", "model", "latency_ms", "usage")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    provider: str
    model: str
    latency_ms: float
    usage: Usage
    def __init__(self, purpose: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., latency_ms: _Optional[float] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("rule", "provider", "model", "fallbacks", "bridges", "trace", "attempts", "steps", "latency_ms", "notes")
    RULE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    BRIDGES_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    rule: str
    provider: str
    model: str
    fallbacks: _containers.RepeatedScalarFieldContainer[str]
    bridges: _containers.RepeatedScalarFieldContainer[str]
    trace: _containers.RepeatedCompositeFieldContainer[RuleTrace]
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    latency_ms: float
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rule: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., fallbacks: _Optional[_Iterable[str]] = ..., bridges: _Optional[_Iterable[str]] = ..., trace: _Optional[_Iterable[_Union[RuleTrace, _Mapping]]] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., latency_ms: _Optional[float] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("text", "transcript", "usage", "route", "finish_reason")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    text: str
    transcript: Transcript
    usage: Usage
    route: Route
    finish_reason: FinishReason
    def __init__(self, text: _Optional[str] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., route: _Optional[_Union[Route, _Mapping]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: MultimodalRequest
    def __init__(self, request: _Optional[_Union[MultimodalRequest, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("answer",)
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    answer: Answer
    def __init__(self, answer: _Optional[_Union[Answer, _Mapping]] = ...) -> None: ...

class StreamGenerateRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: MultimodalRequest
    def __init__(self, request: _Optional[_Union[MultimodalRequest, _Mapping]] = ...) -> None: ...

class RouteChosen(_message.Message):
    __slots__ = ("route",)
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    route: Route
    def __init__(self, route: _Optional[_Union[Route, _Mapping]] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("answer",)
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    answer: Answer
    def __init__(self, answer: _Optional[_Union[Answer, _Mapping]] = ...) -> None: ...

class StreamGenerateResponse(_message.Message):
    __slots__ = ("route_chosen", "text_delta", "transcript", "usage", "done")
    ROUTE_CHOSEN_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    route_chosen: RouteChosen
    text_delta: TextDelta
    transcript: Transcript
    usage: Usage
    done: Done
    def __init__(self, route_chosen: _Optional[_Union[RouteChosen, _Mapping]] = ..., text_delta: _Optional[_Union[TextDelta, _Mapping]] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ...) -> None: ...

class UploadMetadata(_message.Message):
    __slots__ = ("modality", "mime_type", "filename", "size_bytes")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    modality: Modality
    mime_type: str
    filename: str
    size_bytes: int
    def __init__(self, modality: _Optional[_Union[Modality, str]] = ..., mime_type: _Optional[str] = ..., filename: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class UploadMediaRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: UploadMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[UploadMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadMediaResponse(_message.Message):
    __slots__ = ("media_id", "size_bytes", "mime_type", "modality")
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    media_id: str
    size_bytes: int
    mime_type: str
    modality: Modality
    def __init__(self, media_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., mime_type: _Optional[str] = ..., modality: _Optional[_Union[Modality, str]] = ...) -> None: ...

class ExplainRouteRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: MultimodalRequest
    def __init__(self, request: _Optional[_Union[MultimodalRequest, _Mapping]] = ...) -> None: ...

class ExplainRouteResponse(_message.Message):
    __slots__ = ("route",)
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    route: Route
    def __init__(self, route: _Optional[_Union[Route, _Mapping]] = ...) -> None: ...

class Price(_message.Message):
    __slots__ = ("input_per_mtok", "output_per_mtok", "per_audio_hour", "audio_input_per_mtok", "cached_input_per_mtok", "long_context_above_tokens", "long_context_input_per_mtok", "long_context_output_per_mtok", "long_context_cached_input_per_mtok")
    INPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    PER_AUDIO_HOUR_FIELD_NUMBER: _ClassVar[int]
    AUDIO_INPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    LONG_CONTEXT_ABOVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LONG_CONTEXT_INPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    LONG_CONTEXT_OUTPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    LONG_CONTEXT_CACHED_INPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    input_per_mtok: float
    output_per_mtok: float
    per_audio_hour: float
    audio_input_per_mtok: float
    cached_input_per_mtok: float
    long_context_above_tokens: int
    long_context_input_per_mtok: float
    long_context_output_per_mtok: float
    long_context_cached_input_per_mtok: float
    def __init__(self, input_per_mtok: _Optional[float] = ..., output_per_mtok: _Optional[float] = ..., per_audio_hour: _Optional[float] = ..., audio_input_per_mtok: _Optional[float] = ..., cached_input_per_mtok: _Optional[float] = ..., long_context_above_tokens: _Optional[int] = ..., long_context_input_per_mtok: _Optional[float] = ..., long_context_output_per_mtok: _Optional[float] = ..., long_context_cached_input_per_mtok: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "inputs", "outputs", "features", "context_tokens", "price", "input_mime_types", "max_audio_seconds", "max_output_tokens", "default_max_output_tokens", "url_inputs", "max_media_bytes", "takes_temperature", "max_document_pages", "cooldown_seconds", "cooldown_reason", "max_request_bytes", "languages")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    INPUT_MIME_TYPES_FIELD_NUMBER: _ClassVar[int]
    MAX_AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    URL_INPUTS_FIELD_NUMBER: _ClassVar[int]
    MAX_MEDIA_BYTES_FIELD_NUMBER: _ClassVar[int]
    TAKES_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENT_PAGES_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_REASON_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    inputs: _containers.RepeatedScalarFieldContainer[Modality]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedScalarFieldContainer[str]
    context_tokens: int
    price: Price
    input_mime_types: _containers.RepeatedScalarFieldContainer[str]
    max_audio_seconds: float
    max_output_tokens: int
    default_max_output_tokens: int
    url_inputs: _containers.RepeatedScalarFieldContainer[Modality]
    max_media_bytes: int
    takes_temperature: bool
    max_document_pages: int
    cooldown_seconds: float
    cooldown_reason: str
    max_request_bytes: int
    languages: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Modality, str]]] = ..., outputs: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[str]] = ..., context_tokens: _Optional[int] = ..., price: _Optional[_Union[Price, _Mapping]] = ..., input_mime_types: _Optional[_Iterable[str]] = ..., max_audio_seconds: _Optional[float] = ..., max_output_tokens: _Optional[int] = ..., default_max_output_tokens: _Optional[int] = ..., url_inputs: _Optional[_Iterable[_Union[Modality, str]]] = ..., max_media_bytes: _Optional[int] = ..., takes_temperature: _Optional[bool] = ..., max_document_pages: _Optional[int] = ..., cooldown_seconds: _Optional[float] = ..., cooldown_reason: _Optional[str] = ..., max_request_bytes: _Optional[int] = ..., languages: _Optional[_Iterable[str]] = ...) -> None: ...

class ProviderInfo(_message.Message):
    __slots__ = ("name", "plugin", "state", "reason", "models", "health")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    plugin: str
    state: ProviderState
    reason: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    health: ProviderHealth
    def __init__(self, name: _Optional[str] = ..., plugin: _Optional[str] = ..., state: _Optional[_Union[ProviderState, str]] = ..., reason: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., health: _Optional[_Union[ProviderHealth, _Mapping]] = ...) -> None: ...

class ProviderHealth(_message.Message):
    __slots__ = ("window_seconds", "succeeded_calls", "failed_calls", "last_failure_unix_seconds", "last_failure_reason", "last_failure_message")
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_CALLS_FIELD_NUMBER: _ClassVar[int]
    FAILED_CALLS_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    window_seconds: int
    succeeded_calls: int
    failed_calls: int
    last_failure_unix_seconds: float
    last_failure_reason: str
    last_failure_message: str
    def __init__(self, window_seconds: _Optional[int] = ..., succeeded_calls: _Optional[int] = ..., failed_calls: _Optional[int] = ..., last_failure_unix_seconds: _Optional[float] = ..., last_failure_reason: _Optional[str] = ..., last_failure_message: _Optional[str] = ...) -> None: ...

class ListProvidersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProvidersResponse(_message.Message):
    __slots__ = ("providers",)
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedCompositeFieldContainer[ProviderInfo]
    def __init__(self, providers: _Optional[_Iterable[_Union[ProviderInfo, _Mapping]]] = ...) -> None: ...

class ResetSessionRequest(_message.Message):
    __slots__ = ("session_id", "erase_media")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ERASE_MEDIA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    erase_media: bool
    def __init__(self, session_id: _Optional[str] = ..., erase_media: _Optional[bool] = ...) -> None: ...

class ResetSessionResponse(_message.Message):
    __slots__ = ("turns_removed", "media_removed")
    TURNS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    MEDIA_REMOVED_FIELD_NUMBER: _ClassVar[int]
    turns_removed: int
    media_removed: int
    def __init__(self, turns_removed: _Optional[int] = ..., media_removed: _Optional[int] = ...) -> None: ...

class DeleteMediaRequest(_message.Message):
    __slots__ = ("media_ids",)
    MEDIA_IDS_FIELD_NUMBER: _ClassVar[int]
    media_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, media_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MediaDeletion(_message.Message):
    __slots__ = ("media_id", "status", "sessions")
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    media_id: str
    status: MediaDeletionStatus
    sessions: int
    def __init__(self, media_id: _Optional[str] = ..., status: _Optional[_Union[MediaDeletionStatus, str]] = ..., sessions: _Optional[int] = ...) -> None: ...

class DeleteMediaResponse(_message.Message):
    __slots__ = ("media",)
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    media: _containers.RepeatedCompositeFieldContainer[MediaDeletion]
    def __init__(self, media: _Optional[_Iterable[_Union[MediaDeletion, _Mapping]]] = ...) -> None: ...
