"""`brainstacks serve` (docs/DESIGN.md §5), registered into the console script by brainstacks_cli.main.

    brainstacks serve [--bundle DIR] [--base DIR] [--host 127.0.0.1] [--port 8000] [--quantize nf4|fp4|none] [--watch]
                      [--ray --replicas N [--ray-address ADDR]]   (Ray Serve: server/ray_serve.py)

Every other ServerSettings field is a flag too (--max-batch, --api-key, ...), and every field can come from a
`BRAINSTACKS_<FIELD>` environment variable; a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import functools
import typing

# the contract flags first (docs/DESIGN.md §5), then the rest of ServerSettings in declaration order
_CONTRACT = ("bundle", "base", "host", "port", "quantize", "watch", "ray", "replicas", "ray_address")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def register(subparsers) -> None:
    """Add `serve` to the top-level parser."""
    from server.settings import ServerSettings

    p = subparsers.add_parser("serve", help="serve a bundle over the OpenAI-compatible HTTP API",
                              description="Serve a bundle (default: the embedded demo) over HTTP (docs/DESIGN.md §6).")
    fields = ServerSettings.model_fields
    order = list(_CONTRACT) + [n for n in fields if n not in _CONTRACT]
    for name in order:
        f = fields[name]
        help_text = f"{f.description} (default: {f.default!r}; env BRAINSTACKS_{name.upper()})"
        ann = f.annotation
        if ann is bool:
            p.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        choices = None
        args = typing.get_args(ann)
        if typing.get_origin(ann) is typing.Literal:
            choices = list(args)
        kind = str
        if ann is int:
            kind = int
        elif ann is float:
            kind = float
        p.add_argument(_flag(name), dest=name, type=kind, choices=choices, default=None, help=help_text,
                       metavar=None if choices else name.upper())
    p.set_defaults(func=serve)


def settings_from_args(args: argparse.Namespace):
    """ServerSettings from the environment, overridden by the flags given."""
    from server.settings import ServerSettings

    given = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields and v is not None}
    return ServerSettings(**given)


@functools.lru_cache(maxsize=1)
def draining_server_class():
    """The uvicorn.Server subclass `serve` runs (built on first use: `brainstacks --help` need not import uvicorn)."""
    import asyncio
    import contextlib

    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn, with the app's drain (ServerState.drain) started when shutdown begins: uvicorn alone waits for
        open connections before it runs the lifespan shutdown, so streams still open when its graceful timeout ends
        would be cut with no error event and no [DONE]."""

        async def shutdown(self, sockets=None) -> None:
            state = getattr(getattr(self.config.app, "state", None), "bs", None)
            drain = asyncio.create_task(asyncio.to_thread(state.drain)) if state is not None else None
            try:
                await super().shutdown(sockets)
            finally:
                if drain is not None:
                    with contextlib.suppress(Exception):
                        await drain

    return DrainingServer


def serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn
    from pydantic import ValidationError

    from brainstacks.errors import ConfigError
    from server.app import create_app

    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        raise ConfigError(f"invalid server settings: {e}") from e
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.ray:  # N replicas of the same app behind Ray Serve's proxy
        from server.ray_serve import serve_forever

        return serve_forever(settings)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, timeout_graceful_shutdown=int(settings.drain_timeout) + 5)
    server = draining_server_class()(config)
    state = app.state.bs

    def on_load_error(msg: str) -> None:
        server.should_exit = True

    state.on_load_error = on_load_error
    # uvicorn drains on SIGTERM, then re-raises the signal to the handler that was installed before it ran: make that
    # one a no-op, so a graceful shutdown exits 0 (an orchestrator's stop is not a crash)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    if state.load_error:
        raise ConfigError(f"cannot serve: {state.load_error}")
    return 0
