"""A real HTTP server for tests: uvicorn on a free loopback port, in a thread."""
from __future__ import annotations

import contextlib
import re
import threading
import time
from typing import Any, Iterator

import httpx
import uvicorn

from thinkform.server import create_app
from thinkform.utils import free_port


@contextlib.contextmanager
def running_server(engine: Any, api_key: str | None = None) -> Iterator[str]:
    """Serve `engine` until the block ends; yields the base URL (http://127.0.0.1:PORT)."""
    port = free_port()
    config = uvicorn.Config(create_app(engine, api_key=api_key), host="127.0.0.1", port=port,
                            log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def sse_events(response: httpx.Response) -> list[Any]:
    """The JSON payloads of an SSE response, with the final [DONE] as the string "[DONE]"."""
    import json

    events = []
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        payload = line[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def error_response(r: httpx.Response, status: int, param: str | None = None, match: str = "") -> dict:
    """Assert an OpenAI-style error object with this status (and param / message pattern); return it."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param, err
    assert re.search(match, err["message"]), err
    return err
