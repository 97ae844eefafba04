"""benchmarks.soak, shortened (about a minute): a real server under mixed traffic with dropped streams, abandoned
requests, bad inputs and hot reloads (one of them poisoned) answers every other request, leaks no row, and writes the
docs/DESIGN.md §7 report. The figures of a long run (RSS growth, p99 ratio) are the benchmark's, recorded in
docs/BENCHMARKS.md, not asserted here."""

from __future__ import annotations

import json

from benchmarks.soak import main


def test_soak_short_run_has_no_failures_and_leaks_nothing(tmp_path, capsys):
    out = tmp_path / "soak.json"
    assert main(["--minutes", "0.3", "--baseline-seconds", "5", "--reload-every", "4", "--poison-every", "3",
                 "--clients", "3", "--max-tokens", "12", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"benchmark", "machine", "results", "targets"} and data["benchmark"] == "soak"
    base, soak = data["results"][0], data["results"][1]
    assert base["failed"] == 0 and soak["failed"] == 0, (base["failures_sample"], soak["failures_sample"])
    assert soak["drop"] > 0 and soak["bad"] > 0 and soak["stream"] > 0 and soak["complete"] > 0
    assert base["drop"] == base["bad"] == 0
    reloads = soak["reload_results"]
    assert reloads.get("ok", 0) >= 2 and reloads.get("refused as intended", 0) >= 1, reloads
    assert not [k for k in reloads if k.startswith("unexpected")], reloads
    targets = {t["name"]: t for t in data["targets"]}
    assert targets["running + waiting rows after the traffic"]["measured"] == 0
    assert targets["reloads not answered as intended"]["passed"]
    assert "targets" in capsys.readouterr().out
