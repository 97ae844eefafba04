"""loadtest: an HTTP-only load generator for OpenAI-compatible servers (run `python -m loadtest --help`).

It imports nothing of the Brainstacks project. Public API:

    from loadtest import LoadConfig, run, run_load, format_table, write_json, plot_latency
"""

from loadtest.report import format_table, plot_latency, write_json
from loadtest.runner import LoadConfig, LoadReport, ReloadResult, RequestResult, load_prompts, run, run_load

__all__ = [
    "LoadConfig", "LoadReport", "RequestResult", "ReloadResult", "load_prompts", "run", "run_load",
    "format_table", "plot_latency", "write_json",
]
