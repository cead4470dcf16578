"""`python -m thinkform.launch_server --model-path … --reasoning-parser … --grammar-backend …`

Serves the OpenAI-compatible and native APIs. Ready when GET /health answers 200. Ctrl-C / SIGTERM stop
accepting connections, let in-flight requests finish (up to --graceful-shutdown-timeout, then abort
them), shut the engine down and release the port.
"""
from __future__ import annotations

import argparse
import logging
import sys

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
        server = uvicorn.Server(config)  # installs SIGINT/SIGTERM handlers: graceful stop
        logger.info("thinkform serving %s on http://%s:%d", engine.served_model_name, args.host, args.port)
        server.run()
    finally:
        engine.shutdown()


def main(argv: list[str] | None = None) -> int:
    ns = make_parser().parse_args(argv)
    args = EngineArgs.from_cli_args(ns)
    logging.basicConfig(level=args.log_level.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
