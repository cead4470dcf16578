"""SGLang code against the offline Engine: its constructor arguments, generate() keywords, batch request ids,
sampling defaults from the model's generation_config.json, stop_regex, and the Engine methods scripts call."""
from __future__ import annotations

import json
import re

import pytest

from thinkform import Engine
from thinkform.args import EngineArgs
from thinkform.launch_server import make_parser

GREEDY = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}


@pytest.fixture(scope="module")
def model_with_generation_config(tiny_model_dirs, tmp_path_factory):
    """The llama tiny model, its generation_config.json saying what its author samples with: top_k 1."""
    import shutil

    path = tmp_path_factory.mktemp("gencfg") / "llama"
    shutil.copytree(tiny_model_dirs["llama"], path)
    config = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**config, "top_k": 1, "temperature": 0.6}))
    return path


def _texts(engine: Engine, params: dict, times: int = 3) -> set[str]:
    return {engine.generate("Hello there", {"max_new_tokens": 12, **params})["text"] for _ in range(times)}


def test_unset_sampling_params_come_from_the_models_generation_config(model_with_generation_config):
    with Engine(model_path=str(model_with_generation_config), dtype="float32") as engine:
        assert len(_texts(engine, {})) == 1  # top_k 1 from the file: greedy without asking
        assert len(_texts(engine, {"top_k": -1})) > 1  # what the request sets wins
    with Engine(model_path=str(model_with_generation_config), dtype="float32", sampling_defaults="openai") as engine:
        assert len(_texts(engine, {})) > 1


def test_odd_generation_config_values_never_stop_the_model_from_serving(tiny_model_dirs, tmp_path):
    """transformers' top_k 0 means no top-k (ours: -1); a value no request could give (top_p 0) is left
    out with a warning instead of failing the start."""
    import shutil

    from thinkform.models.loader import generation_defaults

    path = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["llama"], path)
    (path / "generation_config.json").write_text(json.dumps({"top_k": 0, "top_p": 0.0, "temperature": 0.7}))
    assert generation_defaults(path) == {"top_k": -1, "top_p": 0.0, "temperature": 0.7}
    with Engine(model_path=str(path), dtype="float32") as engine:
        assert engine.parts.sampling_defaults == {"top_k": -1, "temperature": 0.7}
        assert engine.generate("Hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2


def test_preferred_sampling_params_fill_what_a_request_leaves_unset(tiny_model_dirs):
    with Engine(model_path=str(tiny_model_dirs["llama"]), dtype="float32",
                preferred_sampling_params=json.dumps({"temperature": 0})) as engine:
        assert len(_texts(engine, {})) == 1
    with pytest.raises(ValueError, match="preferred_sampling_params"):
        EngineArgs.from_kwargs(preferred_sampling_params="[1, 2]")


def test_sglang_engine_arguments_are_accepted_at_their_neutral_values(tiny_model_dirs):
    with Engine(model_path=str(tiny_model_dirs["llama"]), trust_remote_code=True, tp_size=1, dp_size=1,
                enable_metrics=True, kv_cache_dtype="auto", log_requests=False) as engine:
        assert engine.generate("Hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2
    for bad in ({"tp_size": 2}, {"skip_tokenizer_init": True}, {"kv_cache_dtype": "fp8_e5m2"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EngineArgs.from_kwargs(**bad)
    with pytest.raises(ValueError, match="unknown engine argument"):
        EngineArgs.from_kwargs(no_such_thing=1)
    # what RL launchers and SGLang's docs pass (audit 29: refused as unknown), at values that ask for nothing
    neutral = {"enable_lora": False, "lora_paths": None, "base_gpu_id": 0, "enable_memory_saver": False,
               "cpu_offload_gb": 0, "speculative_algorithm": None, "allow_auto_truncate": False,
               "json_model_override_args": "{}", "weight_version": "default", "schedule_conservativeness": 1.3}
    EngineArgs.from_kwargs(**neutral)
    for bad in ({"enable_lora": True}, {"base_gpu_id": 1}, {"speculative_algorithm": "EAGLE"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EngineArgs.from_kwargs(**bad)
    ns = make_parser().parse_args(["--trust-remote-code", "--tp", "1", "--enable-metrics", "--skip-server-warmup",
                                   "--sampling-defaults", "openai"])
    assert EngineArgs.from_cli_args(ns).sampling_defaults == "openai"
    with pytest.raises(ValueError, match="tp_size"):
        EngineArgs.from_cli_args(make_parser().parse_args(["--tp-size", "2"]))


def test_generate_takes_sglangs_keywords_at_the_values_that_ask_for_nothing(engine64):
    out = engine64.generate("Hi", {"max_new_tokens": 2}, lora_path=None, image_data=None, custom_logit_processor=None,
                            return_hidden_states=False, token_ids_logprob=None, top_logprobs_num=None,
                            logprob_start_len=None)
    assert out["meta_info"]["completion_tokens"] == 2
    outs = engine64.generate(["Hi", "Yo"], {"max_new_tokens": 2}, image_data=[None, None], lora_path=[None, None])
    assert [o["meta_info"]["completion_tokens"] for o in outs] == [2, 2]  # per prompt, as SGLang takes them
    with pytest.raises(ValueError, match="lora_path"):
        engine64.generate(["Hi", "Yo"], {"max_new_tokens": 2}, lora_path=[None, "adapter"])
    with pytest.raises(ValueError, match="return_hidden_states"):
        engine64.generate("Hi", {"max_new_tokens": 2}, return_hidden_states=True)
    with pytest.raises(TypeError, match="no_such_keyword"):
        engine64.generate("Hi", no_such_keyword=1)
    out = engine64.generate("Hi", {"max_new_tokens": 2}, input_embeds=None, routed_dp_rank=None, cache_salt=None)
    assert out["meta_info"]["completion_tokens"] == 2
    with pytest.raises(ValueError, match="input_embeds"):
        engine64.generate("Hi", {"max_new_tokens": 2}, input_embeds=[[0.5]])


def test_top_logprobs_num_goes_past_openais_twenty(engine64):
    """Audit 29: SGLang takes any count up to the vocabulary (distillation asks for more than 20)."""
    out = engine64.generate("Hi", {**GREEDY, "max_new_tokens": 2}, return_logprob=True, top_logprobs_num=50)
    tops = out["meta_info"]["output_top_logprobs"]
    assert [len(t) for t in tops] == [50, 50]
    assert all(a[0] >= b[0] for t in tops for a, b in zip(t, t[1:]))  # best first
    with pytest.raises(ValueError, match="top_logprobs_num"):
        engine64.generate("Hi", {"max_new_tokens": 1}, return_logprob=True, top_logprobs_num=10**6)


def test_server_info_carries_sglangs_internal_states(engine64):
    engine64.generate(["Hello"] * 2, {**GREEDY, "max_new_tokens": 48})  # past a 40-step window
    state = engine64.get_server_info()["internal_states"][0]
    assert state["last_gen_throughput"] > 0
    assert state["memory_usage"]["token_capacity"] == engine64.get_server_info()["max_total_num_tokens"]
    info = engine64.get_model_info()
    assert info["has_image_understanding"] is False and info["has_audio_understanding"] is False


def test_a_batchs_rids_are_per_prompt_and_abort_one_prompt_only(engine64):
    prompts = ["Hello", "The answer is", "Give me"]
    outs = engine64.generate(prompts, {"max_new_tokens": 2}, rid=["r-a", "r-b", "r-c"])
    assert [o["meta_info"]["id"] for o in outs] == ["r-a", "r-b", "r-c"]
    outs = engine64.generate(prompts, {"max_new_tokens": 2}, rid="batch")
    assert [o["meta_info"]["id"] for o in outs] == ["batch_0", "batch_1", "batch_2"]
    outs = engine64.generate(prompts[:2], {"max_new_tokens": 2, "n": 2}, rid=["x", "y"])
    assert [o["meta_info"]["id"] for o in outs] == ["x-0", "x-1", "y-0", "y-1"]
    stream = engine64.generate(prompts, {**GREEDY, "max_new_tokens": 400}, rid=["s0", "s1", "s2"], stream=True)
    next(stream)
    assert engine64.abort_request("s1") is True
    finals = {}
    for chunk in stream:
        if chunk["meta_info"]["finish_reason"] is not None:
            finals[chunk["meta_info"]["id"]] = chunk["meta_info"]["finish_reason"]["type"]
    assert finals == {"s0": "length", "s1": "abort", "s2": "length"}
    for bad in (["only-one"], ["d", "d", "d"]):
        with pytest.raises(ValueError, match="rid"):
            engine64.generate(prompts, {"max_new_tokens": 1}, rid=bad)


def test_abort_all_flush_cache_and_info(engine64):
    stream = engine64.generate("Hello", {**GREEDY, "max_new_tokens": 2000}, stream=True)
    next(stream)
    assert engine64.flush_cache() is False  # a request is in flight: its pages are in use
    assert engine64.abort_request(abort_all=True) is True
    assert list(stream)[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    engine64.generate("The answer is always forty two", GREEDY)
    assert engine64.generate("The answer is always forty two", GREEDY)["meta_info"]["cached_tokens"] > 0
    assert engine64.flush_cache() is True
    assert engine64.generate("The answer is always forty two", GREEDY)["meta_info"]["cached_tokens"] == 0
    assert engine64.get_model_info()["is_generation"] is True
    info = engine64.get_server_info()
    assert info["context_length"] == engine64.context_length and info["version"]
    assert info["max_total_num_tokens"] == engine64.parts.pool.num_pages * engine64.parts.pool.page_size
    assert info["served_model_name"] == engine64.served_model_name and info["tokenizer_path"]


def test_stop_regex_ends_the_output_where_it_matches(engine64):
    whole = engine64.generate("Hello", GREEDY)["text"]
    cut = len(whole) // 2
    pattern = "".join(f"\\x{ord(c):02x}" if ord(c) < 256 else c for c in whole[cut:cut + 2])
    out = engine64.generate("Hello", {**GREEDY, "stop_regex": pattern})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": pattern}
    assert whole.startswith(out["text"]) and out["text"] == whole[:whole.index(whole[cut:cut + 2])]
    # vLLM's include_stop_str_in_output keeps the match; SGLang's no_stop_trim trims nothing (audit 31: it cut
    # the last token's text after the match, which SGLang's detokenizer keeps)
    through = whole[:whole.index(whole[cut:cut + 2]) + 2]
    vllm = engine64.generate("Hello", {**GREEDY, "stop_regex": [pattern], "include_stop_str_in_output": True})
    assert vllm["text"] == through
    kept = engine64.generate("Hello", {**GREEDY, "stop_regex": [pattern], "no_stop_trim": True})
    assert kept["output_ids"] == vllm["output_ids"] and kept["text"].startswith(through)
    assert kept["text"] == engine64.tokenizer.decode(kept["output_ids"], skip_special_tokens=True)
    for bad in ("(", "x*"):
        with pytest.raises(ValueError, match="stop_regex"):
            engine64.generate("Hello", {"stop_regex": bad})


def test_a_stream_never_sends_text_a_stop_regex_then_cuts(engine64):
    """The match spans two tokens: its first part is held back until the match is decided, so streamed text
    only grows and ends as the non-streamed text (a match that never completes is sent once it cannot)."""
    ids = engine64.generate("Hello", GREEDY)["output_ids"]
    tok = engine64.tokenizer
    k = next(i for i in range(3, len(ids) - 1) if tok.decode(ids[i]) and tok.decode(ids[i + 1]))
    pair = tok.decode(ids[k])[-1] + tok.decode(ids[k + 1])[0]
    for pattern in (re.escape(pair), re.escape(pair[0]) + "ZZZ"):  # the second never completes
        params = {**GREEDY, "stop_regex": pattern}
        final = engine64.generate("Hello", params)["text"]
        texts = [c["text"] for c in engine64.generate("Hello", params, stream=True)]
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:])) and texts[-1] == final
        assert all(final.startswith(t) for t in texts)


def test_no_stop_trim_keeps_a_stop_tokens_text(engine64):
    ids = engine64.generate("Hello", GREEDY)["output_ids"]
    stop = ids[5]
    trimmed = engine64.generate("Hello", {**GREEDY, "stop_token_ids": [stop]})
    kept = engine64.generate("Hello", {**GREEDY, "stop_token_ids": [stop], "no_stop_trim": True})
    assert trimmed["output_ids"] == kept["output_ids"] == ids[:ids.index(stop) + 1]
    assert kept["text"] == engine64.tokenizer.decode(kept["output_ids"]) != trimmed["text"]


def test_sampling_seed_is_seed(engine64):
    a = engine64.generate("Hello", {"max_new_tokens": 8, "sampling_seed": 11})["text"]
    assert a == engine64.generate("Hello", {"max_new_tokens": 8, "seed": 11})["text"]
    with pytest.raises(ValueError, match="sampling_seed"):
        engine64.generate("Hello", {"sampling_seed": 1, "seed": 2})


def test_token_ids_logprob_gives_those_tokens_logprobs_everywhere(engine64):
    """SGLang's token_ids_logprob (classifiers read the logprob of "Yes" / "No" at each step): the listed
    ids' logprobs at every output position and at every scored prompt position, equal to the same tokens'
    entries where they are the sampled or the prompt token."""
    ids = engine64.tokenizer.encode("Hello there friend")
    out = engine64.generate("Hello there friend", {**GREEDY, "max_new_tokens": 6}, return_logprob=True,
                            logprob_start_len=0, top_logprobs_num=1, token_ids_logprob=[ids[1], 7])
    meta = out["meta_info"]
    by_id = meta["output_token_ids_logprobs"]
    assert len(by_id) == 6 and all([t for _, t, _ in row] == [ids[1], 7] for row in by_id)
    for row, (value, tid, _), top in zip(by_id, meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert all(v <= top[0][0] + 1e-6 for v, _, _ in row)
        if tid in (ids[1], 7):
            assert dict((t, v) for v, t, _ in row)[tid] == pytest.approx(value, abs=1e-6)
    prompt_rows = meta["input_token_ids_logprobs"]
    assert prompt_rows[0] is None and len(prompt_rows) == len(ids)
    assert dict((t, v) for v, t, _ in prompt_rows[1])[ids[1]] == pytest.approx(meta["input_token_logprobs"][1][0],
                                                                                 abs=1e-6)
    with pytest.raises(ValueError, match="token_ids_logprob"):
        engine64.generate("Hi", GREEDY, return_logprob=True, token_ids_logprob=[10**9])


# ---- audit 32: what SGLang scripts do that broke here ---------------------------------------------------

def test_a_script_ending_without_shutdown_exits_cleanly(tiny_model_dirs, tmp_path):
    """SGLang's engine shuts down at exit by itself: a script that broke out of a stream and ended without
    shutdown() was killed inside torch (`terminate called without an active exception`, exit 134)."""
    import subprocess
    import sys
    script = tmp_path / "script.py"
    script.write_text(
        "from thinkform import Engine\n"
        f"llm = Engine(model_path={str(tiny_model_dirs['qwen2'])!r})\n"
        "for chunk in llm.generate('Hello', {'max_new_tokens': 200, 'ignore_eos': True}, stream=True):\n"
        "    break\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_sglang_attributes_and_doc_helpers(engine64):
    """SGLang scripts read `engine.tokenizer_manager.tokenizer` and `engine.server_args`; its offline-engine
    docs import stream_and_merge / async_stream_and_merge (from sglang.utils: thinkform.utils here)."""
    import asyncio

    from thinkform.utils import async_stream_and_merge, stream_and_merge, trim_overlap
    assert engine64.tokenizer_manager.tokenizer is engine64.tokenizer
    assert engine64.server_args is engine64.args and engine64.tokenizer_manager.server_args is engine64.args
    whole = engine64.generate("Hello", GREEDY)["text"]
    assert stream_and_merge(engine64, "Hello", GREEDY) == whole

    async def pieces() -> list[str]:
        return [piece async for piece in async_stream_and_merge(engine64, "Hello", GREEDY)]
    assert "".join(asyncio.run(pieces())) == whole
    assert trim_overlap("Hello wor", "Hello world") == "ld" and trim_overlap("abc", "def") == "def"


def test_sglang_generate_keywords_at_values_that_ask_nothing(engine64):
    """sgl-model-gateway's dp-aware mode sends data_parallel_rank on every request; priority is ignored with
    priority scheduling off (SGLang's default); newer keywords at their defaults. Other values are refused
    by name, and a keyword SGLang has not is a TypeError naming the method."""
    from thinkform.engine.errors import RequestFieldError
    out = engine64.generate("Hello", GREEDY, data_parallel_rank=0, routed_dp_rank=0, priority=5, session_id=None,
                            mm_hashes=None, kv_router_hint=None, return_entropy=False)
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": GREEDY["max_new_tokens"]}
    for name, value in (("data_parallel_rank", 1), ("return_entropy", True), ("return_prompt_token_ids", True)):
        with pytest.raises(RequestFieldError, match=f"{name}: not supported") as e:
            engine64.generate("Hello", GREEDY, **{name: value})
        assert e.value.field == name
    import asyncio
    with pytest.raises(TypeError, match=r"async_generate\(\) got an unexpected keyword argument 'frobnicate'"):
        asyncio.run(engine64.async_generate("Hello", GREEDY, frobnicate=1))
    assert engine64.generate("Hello", {**GREEDY, "stop_token_ids": {0, 1}})["text"] is not None  # SGLang's Set[int]


def test_sglang_constructor_values_start_the_engine():
    """Launchers forward SGLang's ServerArgs, whose unset fields are None; SGLang's kernel names and dtype
    spellings pick a kernel or spell a dtype thinkform has."""
    import torch

    from thinkform.engine.setup import attention_backend, resolve_dtype
    args = EngineArgs.from_kwargs(max_running_requests=None, chunked_prefill_size=None, page_size=None,
                                  quantization=None, max_queued_requests=None, mem_fraction_static=None,
                                  cuda_graph_max_bs=None, enable_lora=None, stream_output=False, model_impl="auto")
    defaults = EngineArgs()
    assert (args.max_running_requests, args.chunked_prefill_size, args.page_size, args.quantization) == (
        defaults.max_running_requests, defaults.chunked_prefill_size, defaults.page_size, defaults.quantization)
    assert args.context_length is None  # None stays None where it is the default
    cpu = torch.device("cpu")
    assert attention_backend("flashinfer", cpu) == "torch" and attention_backend("torch_native", cpu) == "torch"
    assert resolve_dtype("half", cpu) is torch.float16 and resolve_dtype("float", cpu) is torch.float32
    with pytest.raises(ValueError, match="stream_output"):
        EngineArgs.from_kwargs(stream_output=True)


def test_sglangs_launch_spellings_and_config_file(tmp_path, monkeypatch):
    """Audit (SGLang's server flags): `--model`, the long parallelism spellings and `--config FILE` (SGLang's first
    launch example) were refused; `--stream-output` wanted a value; bad values ended in tracebacks."""
    from thinkform.launch_server import config_file_args

    parse = lambda argv: EngineArgs.from_cli_args(make_parser().parse_args(config_file_args(argv)))  # noqa: E731
    args = parse(["--model", "m", "--tensor-parallel-size", "1", "--data-parallel-size", "1"])
    assert args.model_path == "m"
    config = tmp_path / "config.yaml"
    config.write_text("model-path: from-file\nport: 31000\nreasoning_parser: qwen3\ntrust-remote-code: true\n")
    args = parse(["--config", str(config), "--port", "32000"])
    assert (args.model_path, args.port, args.reasoning_parser) == ("from-file", 32000, "qwen3")  # the line wins
    with pytest.raises(ValueError, match="stream_output"):
        parse(["--stream-output"])
    for argv, field in ((["--log-level", "verbose"], "log_level"), (["--page-size", "0"], "page_size"),
                        (["--context-length", "-5"], "context_length")):
        with pytest.raises(ValueError, match=field):
            parse(argv)


def test_a_context_past_the_models_positions_is_refused_unless_asked_for(monkeypatch):
    """As SGLang: a linear rope scaling's factor counts; SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN (1 or true)."""
    from thinkform.engine.setup import served_context
    from thinkform.models.config import ModelConfig

    cfg = ModelConfig(arch="X", model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=2,
                      num_heads=1, num_kv_heads=1, head_dim=8, max_position_embeddings=4096, extra={})
    with pytest.raises(ValueError, match=r"context_length: 100000 is longer than the model's 4096 positions"):
        served_context(100000, cfg)
    scaled = ModelConfig(arch="X", model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=2,
                         num_heads=1, num_kv_heads=1, head_dim=8, max_position_embeddings=4096,
                         rope_scaling={"rope_type": "linear", "factor": 4.0}, extra={})
    assert served_context(16384, scaled) == 16384
    monkeypatch.setenv("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "True")
    assert served_context(100000, cfg) == 100000


def test_log_requests_logs_what_its_level_asks_for(tiny_model_dirs, caplog):
    """Audit (SGLang's flags): --log-requests was accepted and changed nothing; SGLang logs each request's
    sampling params and (level 2, its default) its prompt and output, cut to 2048 characters."""
    import logging

    from thinkform import Engine

    with Engine(model_path=str(tiny_model_dirs["qwen2"]), log_requests=True) as engine, \
            caplog.at_level(logging.INFO, logger="thinkform"):
        engine.generate("Hello there", {"max_new_tokens": 3, "temperature": 0})
    details = [r.getMessage() for r in caplog.records if "sampling_params=" in r.getMessage()]
    assert len(details) == 1 and "max_new_tokens=3" in details[0] and "prompt='Hello there'" in details[0]
    assert "output=" in details[0] and "stop=[]" not in details[0]  # what the request set, not every default


def test_a_request_whose_details_cannot_be_logged_still_finishes(tiny_model_dirs, monkeypatch):
    """Review: a decode error while logging a request's details left it unanswered forever."""
    import threading

    from thinkform import Engine

    with Engine(model_path=str(tiny_model_dirs["qwen2"]), log_requests=True) as engine:
        monkeypatch.setattr(type(engine.loop), "_request_details", lambda self, seq: 1 / 0)
        box: dict = {}
        waiter = threading.Thread(target=lambda: box.setdefault("out", engine.generate(
            "Hello", {"max_new_tokens": 2, "temperature": 0})), daemon=True)
        waiter.start()
        waiter.join(60)
        assert "out" in box, "the request was never answered"
    assert box["out"]["meta_info"]["finish_reason"]["type"] == "length"


def test_a_config_files_log_level_is_the_one_set_up(tmp_path):
    """Review: the YAML file's log_level reached the engine's arguments but not the logging set up before them."""
    import subprocess
    import sys

    config = tmp_path / "c.yaml"
    config.write_text("model_path: /nonexistent/model\nlog_level: warning\n")
    code = ("import logging, sys; from thinkform.launch_server import main\n"
            "try:\n    main(['--config', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
            "print('root level', logging.getLogger().level)")
    out = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=120)
    assert "root level 30" in out.stdout, out.stdout + out.stderr
