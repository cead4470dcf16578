"""Notebook helpers, as SGLang's docs use them: start a server on a free port, wait for it, stop it; merge an
offline engine's stream into its text."""
from __future__ import annotations

import atexit
import shlex
import socket
import subprocess
import sys
import time
from typing import Any, AsyncIterator

import requests


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch_server_cmd(command: str, host: str = "127.0.0.1", port: int | None = None) -> tuple[subprocess.Popen, int]:
    """Start `command` (a `python -m thinkform.launch_server …` line) with `--port` appended;
    returns (process, port). `python` runs as this interpreter, so the same environment serves."""
    port = port or free_port(host)
    argv = shlex.split(command) + ["--port", str(port)]
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    process = subprocess.Popen(argv, stdout=None, stderr=None)
    # a script that dies before its terminate_process must not leave the server running
    atexit.register(terminate_process, process, 5.0)
    return process, port


def wait_for_server(base_url: str, timeout: float | None = None, process: subprocess.Popen | None = None,
                    api_key: str | None = None) -> None:
    """Block until GET {base_url}/health answers 200. Raises RuntimeError if `process` exits first,
    TimeoutError after `timeout` seconds (None: wait as long as the process lives)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with code {process.returncode} before it was ready")
        try:
            if requests.get(f"{base_url.rstrip('/')}/health", headers=headers, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"server at {base_url} not ready after {timeout} s")
        time.sleep(0.5)


def terminate_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (graceful: in-flight requests finish, port released), then SIGKILL after `timeout`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def print_highlight(text: object) -> None:
    """Print notebook output in bold blue (HTML inside Jupyter, ANSI in a terminal)."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
        if get_ipython() is not None:
            display(HTML(f"<strong style='color: #00008B;'>{str(text).replace(chr(10), '<br>')}</strong>"))
            return
    except ImportError:
        pass
    print(f"\033[1;34m{text}\033[0m", flush=True)


def trim_overlap(existing: str, chunk: str) -> str:
    """What `chunk` adds to `existing`: without the longest start of it that `existing` already ends with
    (a cumulative chunk repeats the whole text so far, an incremental one nothing)."""
    for size in range(min(len(existing), len(chunk)), 0, -1):
        if existing.endswith(chunk[:size]):
            return chunk[size:]
    return chunk


def stream_and_merge(llm: Any, prompt: str, sampling_params: dict[str, Any]) -> str:
    """The text of an offline engine's stream for `prompt`, its chunks merged (SGLang's docs' helper)."""
    text = ""
    for chunk in llm.generate(prompt, sampling_params, stream=True):
        text += trim_overlap(text, chunk["text"])
    return text


async def async_stream_and_merge(llm: Any, prompt: str, sampling_params: dict[str, Any]) -> AsyncIterator[str]:
    """Each new piece of an offline engine's async stream for `prompt` (SGLang's docs' helper)."""
    text = ""
    async for chunk in await llm.async_generate(prompt, sampling_params, stream=True):
        piece = trim_overlap(text, chunk["text"])
        text += piece
        yield piece
