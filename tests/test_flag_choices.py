"""Flags as SGLang users expect them: a choice flag's typo fails the start naming the flag and its values (SGLang's
argparse `choices`), /get_server_info reports the --tool-call-parser name given, --admin-api-key guards the admin
routes by SGLang's rule, and stream_options with stream false is refused (OpenAI, vLLM) on chat and completions."""
from __future__ import annotations

import dataclasses

import httpx
import pytest

import thinkform
from fake_engine import FakeEngine
from server_fixtures import error_response, running_server
from thinkform import args as args_module
from thinkform.args import EngineArgs
from thinkform.launch_server import main

QUESTION = [{"role": "user", "content": "Capital of France?"}]


class _ReachedTheLoad(Exception):
    """Raised where the server would load its model: every startup check passed."""


@pytest.fixture
def start(monkeypatch, capsys):
    """`start(*flags)`: launch_server's main up to the model load; (exit code or "loaded", stderr)."""
    def refuse_to_load(args: EngineArgs) -> None:
        raise _ReachedTheLoad

    monkeypatch.setattr(thinkform.Engine, "from_args", staticmethod(refuse_to_load))

    def run(*flags: str) -> tuple[object, str]:
        try:
            main([*flags, "--port", "0"])
        except SystemExit as e:
            return e.code, capsys.readouterr().err
        except _ReachedTheLoad:
            return "loaded", capsys.readouterr().err
        raise AssertionError("main returned without loading a model")

    return run


# ---------------------------------------------------------------- choice flags

@pytest.mark.parametrize("flag, typo, named, allowed", [
    ("--schedule-policy", "lmp", "--schedule-policy", "lpm"),
    ("--sampling-backend", "flashinfr", "--sampling-backend", "pytorch"),
    ("--dtype", "bf16", "--dtype", "bfloat16"),
    ("--attention-backend", "tirton", "--attention-backend", "triton"),
    ("--quantization", "int5", "--quantization", "int4"),
    ("--device", "cdua", "device", "cuda:N"),
    ("--tool-call-parser", "qwen26", "tool_call_parser", "qwen25"),
])
def test_a_typo_in_a_choice_flag_fails_the_start_naming_the_flag_and_its_values(start, flag, typo, named, allowed):
    code, err = start(flag, typo)
    assert code == 2, err  # argparse's usage error, before any model is loaded
    last = err.strip().splitlines()[-1]
    assert named in last and repr(typo) in last and allowed in last, last


@pytest.mark.parametrize("flag, value", [
    ("--schedule-policy", "lpm"), ("--schedule-policy", "fcfs"), ("--sampling-backend", "pytorch"),
    ("--dtype", "half"), ("--dtype", "float32"), ("--attention-backend", "fa3"), ("--attention-backend", "torch"),
    ("--device", "cpu"), ("--quantization", "none"),
])
def test_the_values_sglang_and_thinkform_take_still_start(start, flag, value):
    assert start(flag, value)[0] == "loaded"


@pytest.mark.parametrize("keyword, typo", [
    ("schedule_policy", "lmp"), ("sampling_backend", "flashinfr"), ("dtype", "bf16"), ("attention_backend", "tirton"),
    ("quantization", "int5"), ("device", "cdua"),
])
def test_engine_keywords_are_checked_when_the_arguments_are_built(keyword, typo):
    """Engine(...) builds its arguments with from_kwargs: the same typo fails there, before any model loads."""
    with pytest.raises(ValueError, match=rf"^{keyword}: unknown \w+ {typo!r} \(choose from "):
        EngineArgs.from_kwargs(**{keyword: typo})


def test_the_choices_are_the_values_the_engine_reads():
    """args.py lists them (it imports no torch); the engine's own tables are the truth they must follow."""
    from thinkform.engine import setup
    from thinkform.models import quant

    assert set(args_module.DTYPES) == {"auto", *setup._DTYPES}
    assert set(args_module.ATTENTION_BACKENDS) == {"auto", "triton", "torch", *setup._SGLANG_ATTENTION_BACKENDS}
    assert args_module.QUANTIZATIONS == quant.QUANTIZATIONS


# ---------------------------------------------------------------- /get_server_info's tool_call_parser

@pytest.mark.parametrize("given", ["qwen25", "qwen", "glm"])
def test_server_info_reports_the_tool_call_parser_name_given(given):
    """qwen25 and qwen read hermes' format, glm GLM-4.5's: SGLang reports the name the user passed."""
    with running_server(FakeEngine(tool_call_parser=given)) as base:
        for path in ("/get_server_info", "/server_info"):
            assert httpx.get(f"{base}{path}").json()["tool_call_parser"] == given


# ---------------------------------------------------------------- --admin-api-key

def _keyed_engine(api_key: str | None, admin_api_key: str | None) -> FakeEngine:
    engine = FakeEngine()
    engine.args = dataclasses.replace(engine.args, api_key=api_key, admin_api_key=admin_api_key)
    return engine


def _status(base: str, method: str, path: str, key: str | None, **kwargs) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{base}{path}", headers=headers, **kwargs).status_code


ADMIN_CALLS = [("POST", "/flush_cache", {}), ("GET", "/flush_cache", {}),
               ("POST", "/abort_request", {"json": {"rid": "x"}}),
               ("POST", "/update_weights_from_disk", {"json": {"model_path": "x"}}),
               ("POST", "/release_memory_occupation", {"json": {}})]


def test_the_admin_key_alone_opens_the_admin_routes_when_both_keys_are_set():
    """SGLang's rule: with both keys set, an admin route takes the admin key only, every other route the API key
    only."""
    with running_server(_keyed_engine("user-key", "admin-key")) as base:
        for method, path, kwargs in ADMIN_CALLS:
            assert _status(base, method, path, "admin-key", **kwargs) != 401, path  # 200, or the 400 of a
            # route thinkform does not support: past the key either way
            assert _status(base, method, path, "user-key", **kwargs) == 401, path
            assert _status(base, method, path, None, **kwargs) == 401, path
        error_response(httpx.post(f"{base}/flush_cache", headers={"Authorization": "Bearer user-key"}), 401,
                       match="admin API key")
        assert _status(base, "GET", "/v1/models", "user-key") == 200
        assert _status(base, "GET", "/v1/models", "admin-key") == 401
        assert _status(base, "GET", "/health", None) == 200


def test_the_admin_key_alone_guards_only_the_admin_routes():
    with running_server(_keyed_engine(None, "admin-key")) as base:
        assert _status(base, "GET", "/v1/models", None) == 200
        assert _status(base, "POST", "/flush_cache", None) == 401
        assert _status(base, "POST", "/flush_cache", "admin-key") == 200


def test_without_an_admin_key_the_api_key_opens_the_admin_routes():
    with running_server(_keyed_engine("user-key", None)) as base:
        assert _status(base, "POST", "/flush_cache", "user-key") == 200
        assert _status(base, "POST", "/flush_cache", None) == 401


def test_the_admin_key_is_a_flag_and_never_shown(engine64, monkeypatch):
    from thinkform.launch_server import make_parser
    from thinkform.server import create_app
    from fastapi.testclient import TestClient

    ns = make_parser().parse_args(["--admin-api-key", "admin-key", "--api-key", "user-key"])
    given = EngineArgs.from_cli_args(ns)
    assert (given.admin_api_key, given.api_key) == ("admin-key", "user-key")
    monkeypatch.setattr(engine64, "args", dataclasses.replace(engine64.args, admin_api_key="admin-key",
                                                              api_key="user-key"))
    with TestClient(create_app(engine64)) as client:
        info = client.get("/get_server_info", headers={"Authorization": "Bearer user-key"}).json()
    assert "admin-key" not in str(info) and "user-key" not in str(info)
    assert "admin-key" not in str(engine64.get_server_info())  # the offline Engine's too


# ---------------------------------------------------------------- stream_options without stream

@pytest.mark.parametrize("path, body", [("/v1/chat/completions", {"messages": QUESTION}),
                                        ("/v1/completions", {"prompt": "Capital of France?"})])
def test_stream_options_without_stream_is_refused_on_both_routes(served, path, body):
    _, base = served
    for stream in (False, None):  # stream: false, or left out
        sent = {**body, "stream_options": {"include_usage": True}, **({} if stream is None else {"stream": stream})}
        error_response(httpx.post(f"{base}{path}", json=sent), 400, param="stream_options",
                       match="only allowed when stream is true")
    assert httpx.post(f"{base}{path}", json={**body, "stream_options": None}).status_code == 200
    with httpx.stream("POST", f"{base}{path}",
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    assert '"usage": {' in lines[-1] or '"usage":{' in lines[-1]  # the usage chunk still comes last
