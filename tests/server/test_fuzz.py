"""Schema fuzz (schemathesis) of the served OpenAPI spec: no input the spec admits may cause a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from server.app import create_app
from server.settings import ServerSettings

from .conftest import LiveServer, build_bundle


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, core_base_dir):
    bundle = build_bundle(tmp_path_factory.mktemp("fuzz") / "bundle", core_base_dir)
    settings = ServerSettings(bundle=str(bundle), quantize="none", max_tokens_limit=8, max_n=2, max_prompts=4,
                              max_prompt_tokens=128, max_batch=8, max_waiting=64)
    s = LiveServer(create_app(settings)).start()
    yield s
    s.stop()


def test_no_server_errors(fuzz_server):
    # schemathesis' own pytest loader (from_fixture) does not work with pytest 9 here; drive hypothesis directly
    from hypothesis import given

    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    labels = sorted(op.label for op in ops)
    assert "POST /v1/completions" in labels and "POST /v1/chat/completions" in labels
    tested = []
    for op in ops:

        @given(case=op.as_strategy())
        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def run(case):
            case.call_and_validate(checks=[not_a_server_error, status_code_conformance], timeout=60)

        run()
        tested.append(op.label)
    assert len(tested) == len(ops) >= 9
    # the fuzz really generated: both successful completions and refusals reached the server
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for f in text_string_to_metric_families(httpx.get(fuzz_server.url + "/metrics").text) for s in f.samples
               if s.name == "brainstacks_requests_total"]
    by = {(s.labels["endpoint"], s.labels["status"]): s.value for s in samples}
    print(sorted(by.items()))
    assert by.get(("/v1/completions", "200"), 0) > 0 and by.get(("/v1/chat/completions", "200"), 0) > 0
    assert not any(status.startswith("5") for ep, status in by if ep != "/health")  # /health: 503 until ready
