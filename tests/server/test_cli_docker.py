"""`brainstacks serve` CLI (docs/DESIGN.md §5), the Dockerfile's entrypoint, a real process: serve, stream, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from brainstacks_cli.main import build_parser
from server.cli import settings_from_args

from .conftest import build_bundle

ROOT = Path(__file__).resolve().parents[2]


def test_serve_flags_and_env_precedence(monkeypatch):
    monkeypatch.setenv("BRAINSTACKS_PORT", "9001")
    monkeypatch.setenv("BRAINSTACKS_MAX_BATCH", "4")
    args = build_parser().parse_args(["serve", "--bundle", "/b", "--base", "/m", "--host", "0.0.0.0", "--quantize",
                                      "fp4", "--watch", "--max-batch", "8"])
    s = settings_from_args(args)
    assert (s.bundle, s.base, s.host, s.quantize, s.watch) == ("/b", "/m", "0.0.0.0", "fp4", True)
    assert s.port == 9001 and s.max_batch == 8  # env fills what the flags leave out; flags win
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--quantize", "int3"])


def _dockerfile_json(instr: str) -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    m = re.search(rf"^{instr}\s+(\[.*\])\s*$", text, re.M)
    assert m, f"Dockerfile has no exec-form {instr}"
    return json.loads(m.group(1))


@pytest.mark.parametrize("extra", [[], ["--watch", "--quantize", "none"]])
def test_dockerfile_entrypoint_is_a_valid_serve_invocation(monkeypatch, extra):
    text = (ROOT / "Dockerfile").read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    for k, v in re.findall(r"(BRAINSTACKS_[A-Z_]+)=(\S+)", code):  # the image's ENV defaults
        monkeypatch.setenv(k, v)
    argv = _dockerfile_json("ENTRYPOINT") + _dockerfile_json("CMD") + extra  # `docker run IMAGE ...extra`
    assert argv[0] == "brainstacks"
    s = settings_from_args(build_parser().parse_args(argv[1:]))
    assert argv[1] == "serve" and s.bundle == "/bundle" and s.host == "0.0.0.0"
    assert s.watch == bool(extra)
    assert re.search(rf"^EXPOSE {s.port}$", text, re.M)
    assert re.search(r"^ARG DEVICE=cuda$", text, re.M) and "runtime-cpu" in text and "FROM runtime-${DEVICE}" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_process_streams_then_shuts_down_gracefully(tmp_path, core_base_dir):
    bundle = build_bundle(tmp_path / "bundle", core_base_dir)
    port = _free_port()
    env = {**os.environ, "BRAINSTACKS_MAX_TOKENS_LIMIT": "200", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "brainstacks_cli", "serve", "--bundle", str(bundle), "--port",
                             str(port), "--quantize", "none", "--drain-timeout", "20"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        with httpx.stream("POST", url + "/v1/completions", timeout=60,
                          json={"prompt": "two plus two", "max_tokens": 150, "stream": True}) as r:
            lines = r.iter_lines()
            first = next(ln for ln in lines if ln.startswith("data: "))
            assert '"text_completion"' in first
            proc.send_signal(signal.SIGTERM)  # in-flight stream must still finish
            rest = [ln for ln in lines if ln.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read()
    assert '"event": "access"' in out and "/v1/completions" in out  # structured access log with the request id
