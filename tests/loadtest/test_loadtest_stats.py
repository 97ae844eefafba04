"""loadtest's pure parts: percentiles, SSE decoding, chunk reading, error buckets, request bodies, prompt files."""

from __future__ import annotations

import json

import httpx
import pytest

from loadtest.runner import LoadConfig, LoadReport, RequestResult, build_body, load_prompts
from loadtest.stats import SSEParser, error_kind, gaps, parse_event_data, parse_sse_lines, percentile, summarize


def test_percentile_matches_linear_interpolation():
    xs = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(xs, 0) == 15.0
    assert percentile(xs, 100) == 50.0
    assert percentile(xs, 50) == 35.0
    # rank (5-1)*0.4 = 1.6 -> 20 + 0.6*(35-20) = 29
    assert percentile(xs, 40) == pytest.approx(29.0)
    # order of input must not matter
    assert percentile(list(reversed(xs)), 40) == pytest.approx(29.0)


def test_percentile_against_numpy_on_random_data():
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    xs = rng.exponential(size=101).tolist()
    for q in (50, 95, 99, 12.5):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_percentile_edge_cases():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_empty_and_full():
    s = summarize([])
    assert s["count"] == 0 and s["p99"] is None and s["mean"] is None
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["count"] == 4 and s["mean"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0
    assert s["p50"] == pytest.approx(2.5)


def test_sse_parser_events_comments_multiline_and_eof():
    lines = [
        ": keep-alive comment",
        "data: {\"a\": 1}",
        "",
        "event: custom",
        "data:line1",
        "data: line2",
        "",
        "",  # a blank line without data dispatches nothing
        "id: 7",
        "data: [DONE]",  # no trailing blank line: flushed at EOF
    ]
    events = parse_sse_lines(lines)
    assert [e.data for e in events] == ["{\"a\": 1}", "line1\nline2", "[DONE]"]
    assert [e.event for e in events] == ["message", "custom", "message"]


def test_sse_parser_only_strips_one_space():
    p = SSEParser()
    assert p.feed("data:  two spaces") is None
    assert p.feed("").data == " two spaces"


def test_parse_event_data_completion_chat_usage_error_done():
    comp = parse_event_data(json.dumps({"object": "text_completion", "choices": [{"index": 0, "text": "Hi"}],
                                        "brainstacks": {"weights": {"math": 0.9}, "bundle_version": 3}}))
    assert comp.text == "Hi" and comp.usage is None and comp.error is None and comp.bundle_version == 3
    role_only = parse_event_data(json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
    assert role_only.text == ""  # OpenAI's first chat chunk carries no token
    chat = parse_event_data(json.dumps({"choices": [{"index": 0, "delta": {"content": "yo"}}]}))
    assert chat.text == "yo"
    usage = parse_event_data(json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}))
    assert usage.usage == {"prompt_tokens": 3, "completion_tokens": 5} and usage.text == ""
    err = parse_event_data(json.dumps({"error": {"message": "boom", "type": "server_error"}}))
    assert err.error == "boom"
    assert parse_event_data("[DONE]") is None
    assert parse_event_data("{not json").error.startswith("malformed chunk JSON")


def test_error_kind_buckets():
    assert error_kind(status=429) == "http_429"
    assert error_kind(status=503) == "http_503"
    assert error_kind(exc=httpx.ReadTimeout("slow")) == "ReadTimeout"
    assert error_kind(exc=httpx.ConnectError("refused"), status=500) == "ConnectError"
    assert error_kind(status=200, note="incomplete_stream") == "incomplete_stream"
    with pytest.raises(ValueError):
        error_kind(status=200)


def test_gaps():
    assert gaps([]) == [] and gaps([1.0]) == []
    assert gaps([1.0, 1.5, 3.0]) == [0.5, 1.5]


def test_build_body_completions_chat_and_stream():
    cfg = LoadConfig(url="http://x", prompts=["p0", {"messages": [{"role": "user", "content": "m1"}]}],
                     stream=True, max_tokens=7, extra_body={"seed": 1})
    path, body = build_body(cfg, 0)
    assert path == "/v1/completions" and body["prompt"] == "p0" and body["max_tokens"] == 7 and body["seed"] == 1
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    _, body = build_body(cfg, 1)
    assert body["prompt"] == "m1"
    cfg = LoadConfig(url="http://x", prompts=["p0"], endpoint="chat")
    path, body = build_body(cfg, 5)
    assert path == "/v1/chat/completions" and body["messages"] == [{"role": "user", "content": "p0"}]
    assert "stream" not in body


def test_config_bounds():
    for kwargs in ({"concurrency": 0}, {"requests": 0}, {"duration": 0}, {"reload_every": -1},
                   {"endpoint": "embeddings"}, {"prompts": []}):
        with pytest.raises(ValueError):
            LoadConfig(url="http://x", **kwargs)


def test_load_prompts_jsonl_and_text(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n\nplain line\n{"messages": [{"role": "user", "content": "b"}]}\n')
    assert load_prompts(f) == [{"prompt": "a"}, "plain line", {"messages": [{"role": "user", "content": "b"}]}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_prompts(bad)


def test_summary_counts_only_ok_requests_in_throughput():
    cfg = LoadConfig(url="http://x")
    results = [
        RequestResult(index=0, t_start=0.0, latency_s=1.0, ok=True, completion_tokens=10, usage_reported=True,
                      ttft_s=0.2, itl_s=[0.1, 0.3]),
        RequestResult(index=1, t_start=0.5, latency_s=1.5, ok=True, completion_tokens=6, usage_reported=False),
        RequestResult(index=2, t_start=0.5, latency_s=0.1, ok=False, status=429, error="http_429"),
    ]
    s = LoadReport(config=cfg, wall_s=2.0, results=results, reloads=[]).summary()
    assert s["ok"] == 2 and s["errors"] == 1 and s["errors_by_kind"] == {"http_429": 1}
    assert s["generated_tokens"] == 16 and s["tokens_per_s"] == 8.0 and s["requests_per_s"] == 1.0
    assert s["latency_s"]["count"] == 2 and s["latency_s"]["max"] == 1.5
    assert s["itl_s"]["count"] == 2 and s["ttft_s"]["count"] == 1
    assert s["usage_missing"] == 1
