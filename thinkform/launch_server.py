"""`python -m thinkform.launch_server --model-path … --reasoning-parser … --grammar-backend …`

Serves the OpenAI-compatible and native APIs. Ready when GET /health answers 200. Ctrl-C / SIGTERM stop
accepting connections, let in-flight requests finish (up to --graceful-shutdown-timeout, then abort
them), shut the engine down and release the port.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from types import FrameType
from typing import Iterator

import uvicorn

from thinkform.args import EngineArgs

logger = logging.getLogger("thinkform")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m thinkform.launch_server",
        description="thinkform server: OpenAI-compatible (/v1/chat/completions, /v1/completions, /v1/models) "
                    "and native (/generate, /health, /get_model_info, /get_server_info, /abort_request) APIs.")
    EngineArgs.add_cli_args(parser)
    return parser


def serve(args: EngineArgs) -> None:
    """Build the engine, serve until a signal, then shut everything down."""
    from thinkform import Engine
    from thinkform.server import create_app

    engine = Engine.from_args(args)
    try:
        app = create_app(engine)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                                timeout_graceful_shutdown=args.graceful_shutdown_timeout, access_log=False)
        server = uvicorn.Server(config)  # its SIGINT/SIGTERM handlers stop gracefully
        logger.info("thinkform serving %s on http://%s:%d", engine.served_model_name, args.host, args.port)
        with _signals_ignored_after_serving():
            server.run()
    finally:
        engine.shutdown()
    logger.info("thinkform stopped")


@contextlib.contextmanager
def _signals_ignored_after_serving() -> Iterator[None]:
    """uvicorn re-raises the stop signal once it has drained; with the default handlers that kills the
    process before the engine shuts down. Handlers that only log let the shutdown finish instead."""
    def note(sig: int, frame: FrameType | None) -> None:
        logger.info("received %s; shutting down", signal.Signals(sig).name)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_names(args: EngineArgs) -> None:
    """The names flags choose among, checked before anything loads (ValueError listing the known ones)."""
    from thinkform.reasoning import get_markers
    from thinkform.server.tools import get_tool_call_parser
    from thinkform.structured.backends import BACKENDS

    if args.reasoning_parser:
        get_markers(args.reasoning_parser)
    if args.tool_call_parser:
        get_tool_call_parser(args.tool_call_parser)
    if args.grammar_backend not in BACKENDS:
        raise ValueError(f"grammar_backend: unknown backend {args.grammar_backend!r}; choose one of: "
                         f"{', '.join(sorted(BACKENDS))}")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    ns = parser.parse_args(argv)
    try:
        args = EngineArgs.from_cli_args(ns)
        check_names(args)
    except ValueError as e:  # a typo in a flag: argparse's one-line usage error (exit 2), not a traceback
        parser.error(str(e))
    logging.basicConfig(level=args.log_level.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
