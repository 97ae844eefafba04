"""OpenAI request bodies (docs/DESIGN.md §6) as strict pydantic models with bounds; responses are built as plain dicts
in OpenAI's shapes.

Validation is strict (`"echo": 0`, `"max_tokens": "5"` and `1.0` for an integer are refused, as the JSON types in
the schema say) and every field OpenAI's spec marks nullable accepts null, meaning "the default". Bounds here are
the hard schema limits; the configurable ones (max_tokens_limit, max_n, max_prompt_chars, ...) are checked against
the settings in server/api.py and written into `/openapi.json` by server/openapi.py's `finish_openapi`, together
with the rules JSON Schema can state (token-id range, the model ids, exactly one of prompt / messages), so the
published schema and the server agree. Every refusal answers 400 with `param` naming the field (unknown model: 404).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from server.sampling import SamplingParams

MAX_CHARS = 100_000_000  # hard ceiling of one prompt string; the served cap is settings.max_prompt_chars
INT64 = 2**63



def _integral(v: Any) -> Any:
    """JSON Schema counts 1.0 as an integer: accept integral floats for integer fields (strings and bools stay
    refused)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def IntIn(lo: int, hi: int) -> Any:  # noqa: N802 (a type)
    """An integer in [lo, hi] (integral floats accepted, see `_integral`)."""
    return Annotated[int, Field(ge=lo, le=hi), BeforeValidator(_integral)]

StopStr = Annotated[str, StringConstraints(min_length=1, max_length=256)]
PromptStr = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CHARS)]
TokenId = IntIn(0, 2**31 - 1)
Weight = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)]

_STRICT = ConfigDict(extra="forbid", strict=True)
MAX_LOGIT_BIAS = 1024  # entries in one request's logit_bias
TokenKey = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,9})$")]  # a token id, as OpenAI sends it
Bias = Annotated[float, Field(ge=-100.0, le=100.0, allow_inf_nan=False)]


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool | None = Field(None, description="Send a final chunk with usage (choices empty).")


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    name: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = Field(
        ..., description="The schema's name (OpenAI: a-z, A-Z, 0-9, _ and -, at most 64).")
    description: str | None = Field(None, max_length=4096)
    schema_: dict[str, Any] | None = Field(None, alias="schema", description=(
        "The JSON Schema the output must validate against (default: any JSON object)."))
    strict: bool | None = Field(None, description="Accepted; the output is always constrained to the schema.")


class TextFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = _STRICT
    type: Literal["json_object"]


class JsonSchemaResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaResponseFormat, Field(discriminator="type")]


class _Common(BaseModel):
    model_config = _STRICT

    model: str = Field("brainstacks", max_length=256, description=(
        "The composition: brainstacks (routed), brainstacks:base, brainstacks:all, brainstacks:<domain>."))
    max_tokens: IntIn(1, 1_000_000) | None = Field(None, description=(
        f"Most tokens to generate (default {SamplingParams.max_tokens})."))
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False, description="0 = greedy (default 1).")
    top_p: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                description="Nucleus sampling mass (default 1).")
    top_k: IntIn(-1, 1_000_000) | None = Field(None, description="Keep the k most likely tokens (0 or -1: off).")
    n: IntIn(1, 128) | None = Field(None, description="Samples per prompt (default 1).")
    stop: StopStr | Annotated[list[StopStr], Field(max_length=4)] | None = Field(
        None, description="Up to 4 strings; generation stops before the first occurrence.")
    seed: IntIn(-INT64, INT64 - 1) | None = Field(None, description="Makes sampling reproducible (an int64).")
    stream: bool | None = Field(None, description="Send server-sent events (text/event-stream).")
    stream_options: StreamOptions | None = Field(None, description="Streaming options (ignored without stream).")
    user: str | None = Field(None, max_length=256, description="End-user id (logged).")
    presence_penalty: Penalty | None = Field(None, description=(
        "Subtracted from the logit of every token already generated in this choice (OpenAI's definition)."))
    frequency_penalty: Penalty | None = Field(None, description=(
        "Subtracted from a token's logit once per time it was already generated in this choice."))
    logit_bias: dict[TokenKey, Bias] | None = Field(None, max_length=MAX_LOGIT_BIAS, description=(
        "Token id (as a string) to a bias in [-100, 100], added to that token's logit before sampling."))
    response_format: ResponseFormat | None = Field(None, description=(
        "text (default), json_object (the output is one JSON object) or json_schema (the output validates against "
        "json_schema.schema): constrained decoding, so the output parses unless finish_reason is length."))
    weights: dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], Weight] | None = Field(
        None, max_length=256, description="Extension: {domain: weight in [0, 1]} overriding the router.")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Common):
    """POST /v1/completions."""

    prompt: PromptStr | Annotated[list[PromptStr], Field(min_length=1, max_length=1024)] | Annotated[
        list[TokenId], Field(min_length=1, max_length=1_000_000)] = Field(
        ..., description="A string, a list of strings (one choice set each), or a list of token ids.")
    logprobs: IntIn(0, 20) | None = Field(None, description=(
        "Return the chosen token's logprob and this many alternatives."))
    echo: bool | None = Field(None, description="Prepend the prompt to each choice's text (not with logprobs).")


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: Annotated[str, StringConstraints(max_length=MAX_CHARS)]


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, StringConstraints(max_length=MAX_CHARS)] | Annotated[
        list[TextPart], Field(max_length=256)] | None = None
    name: str | None = Field(None, max_length=256)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


FunctionName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class FunctionDef(BaseModel):
    model_config = _STRICT
    name: FunctionName
    description: str | None = Field(None, max_length=4096)
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments (default: any object).")
    strict: bool | None = Field(None, description="Accepted; a forced call's arguments are always constrained.")


class ToolDef(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = _STRICT
    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Common):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(..., min_length=1, max_length=1024)
    max_completion_tokens: IntIn(1, 1_000_000) | None = Field(None, description="Alias of max_tokens.")
    logprobs: bool | None = Field(None, description="Return logprobs of the chosen tokens.")
    top_logprobs: IntIn(0, 20) | None = Field(None, description="Alternatives per token (needs logprobs=true).")
    tools: Annotated[list[ToolDef], Field(max_length=128)] | None = Field(None, description=(
        "Functions the reply may call. A call is made only when tool_choice forces it (a named function, or "
        "required with one tool); with auto or none the reply is text."))
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(None, description=(
        "none / auto (default): a text reply; required (one tool) or {type: function, function: {name}}: the reply is "
        "that call, its arguments decoded under the function's parameters schema."))
    parallel_tool_calls: bool | None = Field(None, description="Accepted; a forced reply makes exactly one call.")


class RouteRequest(BaseModel):
    """POST /debug/route: exactly one of prompt or messages."""

    model_config = _STRICT
    prompt: PromptStr = Field(None, description="Raw prompt text.")
    messages: list[ChatMessage] = Field(None, min_length=1, max_length=1024, description="Or chat messages.")


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's shape): exactly one of prompt or messages."""

    model_config = _STRICT
    model: str | None = Field(None, max_length=256, description="Accepted for vLLM compatibility (one tokenizer).")
    prompt: Annotated[str, StringConstraints(max_length=MAX_CHARS)] = Field(None, description="Raw prompt text.")
    messages: list[ChatMessage] = Field(None, min_length=1, max_length=1024, description=(
        "Or chat messages, rendered with the chat template as /v1/chat/completions renders them."))
    add_special_tokens: bool | None = Field(None, description=(
        "Add the tokenizer's special tokens (e.g. BOS) as a completion's prompt gets them (default true)."))
    add_generation_prompt: bool | None = Field(None, description=(
        "messages only: end with the assistant turn's opening, as a chat completion does (default true)."))
    return_token_strs: bool | None = Field(None, description="Also return each token's string (default false).")


class DetokenizeRequest(BaseModel):
    """POST /detokenize (vLLM's shape)."""

    model_config = _STRICT
    model: str | None = Field(None, max_length=256, description="Accepted for vLLM compatibility (one tokenizer).")
    tokens: list[TokenId] = Field(..., max_length=1_000_000, description="Token ids to turn into text.")


# ---------------------------------------------------------------------------------------------------- responses
# Documented in /openapi.json (the schema fuzz validates every response against them); server/responses.py builds the
# bodies as plain dicts in these shapes.
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Extension(BaseModel):
    """The `brainstacks` extension: the router's (or the request's) weight per domain, and the bundle version."""

    weights: dict[str, float | None]
    bundle_version: int
    prompt_weights: list[dict[str, float | None]] | None = Field(None, description="Per prompt, when several.")


FinishReason = Literal["stop", "length", "cancelled", "tool_calls"] | None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float | None]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage
    brainstacks: Extension


class TopLogprob(BaseModel):
    token: str
    logprob: float | None
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None


class CalledFunction(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: CalledFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage
    brainstacks: Extension


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelObject(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


_DOMAIN = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
_PATH = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class AddStackRequest(BaseModel):
    """POST /admin/stacks: a PEFT LoRA directory or a stack directory (on the server's filesystem) as a new domain."""

    model_config = _STRICT
    domain: _DOMAIN = Field(..., description="The new domain's name (letters, digits, '_', '.', '-'; max 64).")
    path: _PATH = Field(..., description="A PEFT LoRA adapter directory (adapter_config.json + "
                                         "adapter_model.safetensors) or a stack directory (stack.json + "
                                         "stack.safetensors), readable by the server.")
    replace: bool | None = Field(None, description="Replace a domain of that name (default false: 400).")


class LoadLoraRequest(BaseModel):
    """POST /v1/load_lora_adapter (vLLM's shape): the same as POST /admin/stacks with domain = lora_name."""

    model_config = _STRICT
    lora_name: _DOMAIN = Field(..., description="The domain name; served as model 'brainstacks:<lora_name>'.")
    lora_path: _PATH = Field(..., description="A PEFT LoRA adapter directory readable by the server.")
    load_inplace: bool | None = Field(None, description="vLLM's: replace an adapter of that name (default false).")


class UnloadLoraRequest(BaseModel):
    """POST /v1/unload_lora_adapter (vLLM's shape): the same as DELETE /admin/stacks/{lora_name}."""

    model_config = _STRICT
    lora_name: _DOMAIN = Field(..., description="The domain to remove.")
    lora_int_id: int | None = Field(None, description="Accepted for vLLM compatibility; ignored.")
