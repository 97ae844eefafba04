"""Schema fuzz (schemathesis) of the served OpenAPI spec: the spec and the server must agree.

Positive cases (inputs the spec admits): no 5xx, no 400 (every rule the server enforces is in the spec; the three it
cannot state, UNSTATABLE below, answer 400 with their own codes and are the only 400s allowed), responses
conform to the documented status codes, content types and schemas, and other verbs get 405 with Allow. Negative
cases (inputs the spec refuses, POST bodies): each must be refused with a 4xx, never a 422 and never a 5xx.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    ensure_resource_availability,
    ignored_auth,
    missing_required_header,
    not_a_server_error,
    unsupported_method,
    use_after_free,
)
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.settings import ServerSettings

from .conftest import LiveServer, build_bundle


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from brainstacks.tiny_models import tiny_base

    # a byte-level BPE tokenizer (the tiny qwen2 base's), so response_format is served, as on real checkpoints
    base = tiny_base(tmp_path_factory.mktemp("fuzz_base") / "base", family="qwen2", seed=0)
    bundle = build_bundle(tmp_path_factory.mktemp("fuzz") / "bundle", base)
    settings = ServerSettings(bundle=str(bundle), quantize="none", max_tokens_limit=8, max_n=2, max_prompts=4,
                              max_prompt_tokens=128, max_prompt_chars=64, max_batch=8, max_waiting=64)
    s = LiveServer(create_app(settings)).start()
    yield s
    s.stop()


def _error_code(response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except Exception:
        return None


# the rules JSON Schema cannot state: a prompt's token count against the context, whether a schema object is one
# llguidance can use, whether tool_choice names one of the request's own tools, and whether a runtime adapter's
# path holds an adapter for this base (the server's filesystem)
UNSTATABLE = ("context_length_exceeded", "invalid_schema", "tool_not_found", "invalid_adapter")


def accepted_unless_too_many_tokens(ctx, response, case):
    """positive_data_acceptance, except the two rules the OpenAPI document cannot state."""
    if response.status_code == 400 and _error_code(response) in UNSTATABLE:
        return None
    return positive_data_acceptance(ctx, response, case)


def never_422(ctx, response, case):
    assert response.status_code != 422, f"422 for {case.operation.label}: OpenAI answers 400"


# every check schemathesis has (max_response_time aside: a timing, not conformance); the stateful ones
# (use_after_free, ensure_resource_availability) and ignored_auth (no security scheme: the server runs keyless here)
# pass vacuously, unsupported_method sends other verbs and wants 405 with Allow
POSITIVE = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
            response_schema_conformance, accepted_unless_too_many_tokens, never_422, unsupported_method,
            missing_required_header, ignored_auth, use_after_free, ensure_resource_availability]
NEGATIVE = [not_a_server_error, status_code_conformance, content_type_conformance, negative_data_rejection, never_422]


def fuzz(op, mode, checks, n: int):
    """One hypothesis run over `op` (schemathesis' own pytest loader does not work with pytest 9 here)."""
    from hypothesis import given

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def run(case):
        case.call_and_validate(checks=checks, timeout=60)

    return run


def test_spec_and_server_agree(fuzz_server):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    labels = sorted(op.label for op in ops)
    assert "POST /v1/completions" in labels and "POST /v1/chat/completions" in labels
    tested = []
    for op in ops:
        modes = [(GenerationMode.POSITIVE, POSITIVE, 40)]
        if op.method.upper() == "POST" and op.label != "POST /admin/reload":
            modes.append((GenerationMode.NEGATIVE, NEGATIVE, 25))
        for mode, checks, n in modes:
            fuzz(op, mode, checks, n)()
            tested.append((op.label, mode.value))
    assert len({label for label, _ in tested}) == len(ops) >= 12
    assert ("POST /v1/completions", "negative") in tested
    # the fuzz really generated: both successful completions and refusals reached the server
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(fuzz_server.url + "/metrics").text)
    samples = [s for f in families for s in f.samples if s.name == "brainstacks_requests_total"]
    by = {(s.labels["endpoint"], s.labels["status"]): s.value for s in samples}
    print(sorted(by.items()))
    assert by.get(("/v1/completions", "200"), 0) > 0 and by.get(("/v1/chat/completions", "200"), 0) > 0
    assert by.get(("/v1/completions", "400"), 0) > 0  # the negative cases were refused
    assert not any(status.startswith("5") for ep, status in by if ep != "/health")  # /health: 503 until ready
