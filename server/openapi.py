"""`/openapi.json` states what the server enforces: `finish_openapi` writes the served limits (settings.py) and, once
loaded, the model ids, domains and vocabulary into FastAPI's generated document, together with the rules JSON Schema
can state (exactly one of prompt / messages, echo without logprobs, top_logprobs with logprobs), so the published
schema and the server agree (tests/server/test_fuzz.py holds them to it).
"""

from __future__ import annotations

from typing import Any

from server.schemas import INT64


def _subs(node: dict) -> list[dict]:
    return node.get("anyOf", [node])


def _integral_bounds(node: Any) -> None:
    """Integer schemas get integer bounds (`0`, not `0.0`)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for k in ("minimum", "maximum"):
                if isinstance(node.get(k), float) and node[k].is_integer() and abs(node[k]) < 2**53:
                    node[k] = int(node[k])
        for v in node.values():
            _integral_bounds(v)
    elif isinstance(node, list):
        for v in node:
            _integral_bounds(v)


def below_pattern(n: int) -> str:
    """A regex of the decimal integers 0 .. n-1 (no leading zeros): a logit_bias key inside the vocabulary."""
    hi = str(n - 1)
    alts = ["[0-9]"] if len(hi) > 1 else [f"[0-{hi}]"]
    alts += [f"[1-9][0-9]{{{k - 1}}}" for k in range(2, len(hi))]  # every shorter length, in full
    if len(hi) > 1:
        for i, ch in enumerate(hi):  # same length: the prefix of hi, then a smaller digit, then anything
            lo = 1 if i == 0 else 0
            if int(ch) > lo:
                rest = len(hi) - i - 1
                alts.append(hi[:i] + f"[{lo}-{int(ch) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
        alts.append(hi)
    return "^(" + "|".join(alts) + ")$"


def finish_openapi(doc: dict, limits: dict[str, Any]) -> dict:
    """Make the generated OpenAPI document state what the server enforces.

    limits: max_tokens, n, logprobs, prompts (items), prompt_chars; once loaded (else None): prompt_tokens (the
    token-id prompt's length cap), vocab_size, model_ids, domains.
    """
    schemas = doc.get("components", {}).get("schemas", {})
    # an invalid request answers 400 in OpenAI's envelope, never FastAPI's 422
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            if isinstance(op, dict) and "422" in op.get("responses", {}):
                op["responses"].pop("422")
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)

    _integral_bounds(doc)
    for name in ("CompletionRequest", "ChatCompletionRequest"):  # exact int64 (pydantic writes 2**63 - 1 as a float)
        for sub in _subs(schemas.get(name, {}).get("properties", {}).get("seed", {})):
            if sub.get("type") == "integer":
                sub["minimum"], sub["maximum"] = -INT64, INT64 - 1
    if limits.get("model_ids"):
        for prm in doc.get("paths", {}).get("/v1/models/{model_id}", {}).get("get", {}).get("parameters", []):
            if prm.get("name") == "model_id":
                prm["schema"]["enum"] = list(limits["model_ids"])  # any other id answers 404 model_not_found
    chars = limits["prompt_chars"]
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        props = schemas.get(name, {}).get("properties", {})
        for prop in ("max_tokens", "max_completion_tokens"):
            for sub in _subs(props.get(prop, {})):
                if sub.get("type") == "integer":
                    sub["maximum"] = min(sub.get("maximum", limits["max_tokens"]), limits["max_tokens"])
        for prop, key in (("n", "n"), ("logprobs", "logprobs"), ("top_logprobs", "logprobs")):
            for sub in _subs(props.get(prop, {})):
                if sub.get("type") == "integer":
                    sub["maximum"] = min(sub.get("maximum", limits[key]), limits[key])
        if "model" in props and limits.get("model_ids"):
            props["model"]["enum"] = list(limits["model_ids"])
        if "logit_bias" in props and limits.get("vocab_size"):
            for sub in _subs(props["logit_bias"]):
                if sub.get("type") == "object":
                    sub["propertyNames"] = {"pattern": below_pattern(limits["vocab_size"])}
        if "weights" in props and limits.get("domains") is not None:
            for sub in _subs(props["weights"]):
                if sub.get("type") == "object":
                    sub["propertyNames"] = {"enum": list(limits["domains"])}
    prompt = schemas.get("CompletionRequest", {}).get("properties", {}).get("prompt", {})
    for sub in _subs(prompt):
        if sub.get("type") == "string":
            sub["maxLength"] = chars
        elif sub.get("type") == "array" and sub.get("items", {}).get("type") == "string":
            sub["maxItems"] = min(sub.get("maxItems", limits["prompts"]), limits["prompts"])
            sub["items"]["maxLength"] = chars
        elif sub.get("type") == "array" and sub.get("items", {}).get("type") == "integer":
            if limits.get("prompt_tokens"):
                sub["maxItems"] = min(sub.get("maxItems", limits["prompt_tokens"]), limits["prompt_tokens"])
            if limits.get("vocab_size"):
                sub["items"]["maximum"] = limits["vocab_size"] - 1
    for name in ("ChatMessage", "TextPart"):
        props = schemas.get(name, {}).get("properties", {})
        for prop in ("content", "text"):
            for sub in _subs(props.get(prop, {})):
                if sub.get("type") == "string":
                    sub["maxLength"] = chars
    for name in ("RouteRequest", "TokenizeRequest"):
        one = schemas.get(name)
        if one is not None:
            one["properties"]["prompt"]["maxLength"] = chars
            one["oneOf"] = [{"required": ["prompt"]}, {"required": ["messages"]}]
    detok = schemas.get("DetokenizeRequest", {}).get("properties", {}).get("tokens")
    if detok is not None and limits.get("vocab_size"):
        detok["items"]["maximum"] = limits["vocab_size"] - 1
    _cross_field_rules(schemas)
    return doc


def _cross_field_rules(schemas: dict) -> None:
    """The rules between fields of one request body that JSON Schema can state."""
    comp = schemas.get("CompletionRequest")
    if comp is not None:  # echo: true cannot be combined with logprobs
        comp["not"] = {"required": ["echo", "logprobs"],
                       "properties": {"echo": {"const": True}, "logprobs": {"type": "integer"}}}
    chat = schemas.get("ChatCompletionRequest")
    if chat is not None:
        text_only = {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"type": {"const": "text"}}}]}
        chat["allOf"] = [
            # top_logprobs needs logprobs: true
            {"if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
             "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}},
            # a forced call needs its tool (required: exactly one), and no JSON response_format beside it
            {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {"const": "required"}}},
             "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1, "maxItems": 1},
                                                            "response_format": text_only}}},
            {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {"type": "object"}}},
             "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1},
                                                            "response_format": text_only}}},
        ]
