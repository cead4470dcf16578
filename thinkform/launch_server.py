"""`python -m thinkform.launch_server --model-path … --reasoning-parser … --grammar-backend …`

Serves the OpenAI-compatible and native APIs. Ready when GET /health answers 200. Ctrl-C / SIGTERM stop
accepting connections, let in-flight requests finish (up to --graceful-shutdown-timeout, then abort
them), shut the engine down and release the port.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any, Iterator

import uvicorn

from thinkform.args import LOG_LEVELS, EngineArgs

logger = logging.getLogger("thinkform")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m thinkform.launch_server",
        description="thinkform server: OpenAI-compatible (/v1/chat/completions, /v1/completions, /v1/models) "
                    "and native (/generate, /health, /get_model_info, /get_server_info, /abort_request) APIs.")
    EngineArgs.add_cli_args(parser)
    parser.add_argument("--config", help="YAML file of flags (long names as keys), as SGLang's; the command line "
                                         "overrides it")
    return parser


# after the drain's deadline aborts what still runs, the time its clients' last events have to go out
_ABORTED_EVENTS_S = 2.0


def serve(args: EngineArgs, engine: Any) -> None:
    """Serve `engine` until a signal, then shut everything down."""
    from thinkform.server import create_app

    try:
        app = create_app(engine)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                                timeout_graceful_shutdown=args.graceful_shutdown_timeout + _ABORTED_EVENTS_S,
                                access_log=False)
        server = _DrainingServer(config, engine, args.graceful_shutdown_timeout)
        logger.info("thinkform serving %s on http://%s:%d", engine.served_model_name, args.host, args.port)
        with _signals_ignored_after_serving():
            server.run()
    finally:
        engine.shutdown()
    logger.info("thinkform stopped")


class _DrainingServer(uvicorn.Server):
    """uvicorn's server (its SIGINT/SIGTERM handlers stop gracefully) whose stop signal also starts the
    drain's deadline: there the engine aborts what still runs, so each client gets its answer's end
    (finish_reason "abort") before uvicorn cancels the handlers (a cut stream or a bare 500, a traceback each)."""

    def __init__(self, config: uvicorn.Config, engine: Any, grace_s: float) -> None:
        super().__init__(config)
        self._deadline = threading.Timer(grace_s, engine.abort_request, kwargs={"abort_all": True})
        self._deadline.daemon = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self._deadline.is_alive() and not self.should_exit:
            self._deadline.start()
        super().handle_exit(sig, frame)


def check_address(host: str, port: int) -> None:
    """Bind the address once before the model loads (minutes for a large one), as vLLM does: a port in use
    or a host this machine cannot serve fails now, naming the flag (ValueError)."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port: {port} is not a port number (0-65535)")
    try:
        # "" is every interface to uvicorn (asyncio), as None with AI_PASSIVE is to getaddrinfo
        family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ValueError(f"--host: cannot resolve {host!r} ({e.strerror})") from None
    try:
        socket.create_server(address, family=family).close()
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise ValueError(f"--host/--port: cannot listen on {host}:{port} ({reason})") from None


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


def config_file_args(argv: list[str]) -> list[str]:
    """SGLang's `--config FILE`: a YAML mapping of long flag names (dashes or underscores) to values, read as
    flags before the command line's, which override it. `true` gives a switch, `false` leaves it off, a list
    its values."""
    found = argparse.ArgumentParser(add_help=False)
    found.add_argument("--config")
    ns, rest = found.parse_known_args(argv)
    if ns.config is None:
        return argv
    import yaml

    try:
        with open(ns.config, encoding="utf-8") as f:
            mapping = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"config: cannot read {ns.config!r}: {e}") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"config: {ns.config!r} must hold a mapping of flag names to values")
    flags: list[str] = []
    for name, value in mapping.items():
        flag = "--" + str(name).replace("_", "-")
        if value is True:
            flags.append(flag)
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        elif value is not False and value is not None:  # `--flag=value`: a value may begin with '-'
            flags.append(f"{flag}={json.dumps(value) if isinstance(value, dict) else value}")
    return flags + rest


def check_device_and_paths(args: EngineArgs) -> None:
    """The device and the paths beside the model's, checked before anything loads (a ValueError naming them)."""
    if args.tokenizer_path and not os.path.exists(args.tokenizer_path):
        raise ValueError(f"tokenizer_path: {args.tokenizer_path!r} does not exist (a local tokenizer directory)")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device: {args.device!r} asked for, but this torch has no CUDA device "
                             f"(torch {torch.__version__}); use --device cpu or auto")


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
    try:
        argv = config_file_args(list(argv if argv is not None else sys.argv[1:]))
    except ValueError as e:
        parser.error(str(e))
    ns = parser.parse_args(argv)
    # the notes for SGLang-only flags are logged while the arguments are built: logging is set up first (at the
    # level asked for, where it is one; the arguments' own check refuses another)
    wanted = ns.log_level.lower()
    logging.basicConfig(level=(wanted if wanted in LOG_LEVELS else "info").upper(),
                        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    try:
        args = EngineArgs.from_cli_args(ns)
        check_names(args)
        check_device_and_paths(args)
        check_address(args.host, args.port)
    except ValueError as e:  # a typo in a flag: argparse's one-line usage error (exit 2), not a traceback
        parser.error(str(e))
    from thinkform import Engine

    try:
        engine = Engine.from_args(args)
    except (OSError, ValueError) as e:  # no model or tokenizer there, no config.json, ...: one line, no traceback
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    serve(args, engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
