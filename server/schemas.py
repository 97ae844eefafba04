"""OpenAI request bodies (DESIGN §6) as pydantic models with bounds; responses are built as plain dicts in OpenAI's shapes.

Bounds here are the hard schema limits (what the OpenAPI spec advertises); the configurable limits (max_tokens_limit,
max_n, prompt tokens, ...) are checked against settings in server/api.py and answer 400.
Unknown top-level fields are refused (422), as are unknown domains in the `weights` extension (400).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_CHARS = 1_000_000  # a prompt/message longer than this is refused before tokenizing

StopStr = Annotated[str, StringConstraints(min_length=1, max_length=256)]
PromptStr = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CHARS)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
Weight = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(False, description="Send a final chunk with usage (choices empty).")


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("brainstacks", max_length=256, description=(
        "The composition: brainstacks (routed), brainstacks:base, brainstacks:all, brainstacks:<domain>."))
    max_tokens: int | None = Field(None, ge=1, le=1_000_000, description="Most tokens to generate (default 16).")
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False, description="0 = greedy.")
    top_p: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=-1, le=1_000_000, description="Keep the k most likely tokens (0 or -1: off).")
    n: int = Field(1, ge=1, le=128, description="Samples per prompt.")
    stop: StopStr | Annotated[list[StopStr], Field(max_length=4)] | None = Field(
        None, description="Up to 4 strings; generation stops before the first occurrence.")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="Makes sampling reproducible.")
    stream: bool = Field(False, description="Send server-sent events.")
    stream_options: StreamOptions | None = Field(None, description="Streaming options (ignored without stream).")
    user: str | None = Field(None, max_length=256, description="End-user id (logged).")
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Accepted for compatibility; only 0 is supported.")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Accepted for compatibility; only 0 is supported.")
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
    logprobs: int | None = Field(None, ge=0, le=20, description="Return the chosen token's logprob and this many alternatives.")
    echo: Literal[False] = Field(False, description="Echoing the prompt is not supported.")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Annotated[str, StringConstraints(max_length=MAX_CHARS)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
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


class ChatCompletionRequest(_Common):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(..., min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000, description="Alias of max_tokens.")
    logprobs: bool = Field(False, description="Return logprobs of the chosen tokens.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Alternatives per token (needs logprobs).")


class RouteRequest(BaseModel):
    """POST /debug/route."""

    model_config = ConfigDict(extra="forbid")
    prompt: PromptStr | None = Field(None, description="Raw prompt text.")
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=1024, description="Or chat messages.")


class ReloadRequest(BaseModel):
    """POST /admin/reload (body optional)."""

    model_config = ConfigDict(extra="forbid")


def apply_limits(openapi: dict, limits: dict[str, dict[str, int]]) -> dict:
    """Write the server's configured limits into the request schemas of the OpenAPI document, so clients (and the
    schema fuzz) see the real bounds. limits: {property: {"maximum": v} or {"maxItems": v}}."""
    def patch(node: dict, bound: dict[str, int]) -> None:
        for sub in node.get("anyOf", [node]):
            if "maximum" in bound and sub.get("type") == "integer":
                sub["maximum"] = min(sub.get("maximum", bound["maximum"]), bound["maximum"])
            if "maxItems" in bound and sub.get("type") == "array" and sub.get("items", {}).get("type") == "string":
                sub["maxItems"] = min(sub.get("maxItems", bound["maxItems"]), bound["maxItems"])

    for name in ("CompletionRequest", "ChatCompletionRequest"):
        props = openapi.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {})
        for prop, bound in limits.items():
            if prop in props:
                patch(props[prop], bound)
    return openapi
