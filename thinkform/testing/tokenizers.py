"""A tiny byte-level BPE tokenizer for tests, trained in-process in well under a second.

ChatML-style (Qwen-like): `<|im_start|>`/`<|im_end|>`, `<|im_end|>` is EOS, and the chat template takes
`enable_thinking` (default True; False writes an empty `<think>\\n\\n</think>\\n\\n` block, as Qwen3 does).
With `marker_is_special=False` the reasoning markers are ordinary text, so `</think>` takes several tokens.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MARKER_TOKENS: tuple[str, ...] = ("<think>", "</think>")

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Words of the seed prompts, JSON punctuation, digits: enough merges for short, realistic token streams.
_CORPUS: tuple[str, ...] = (
    'Give me the information and population of the capital of France in the JSON format.',
    'What is the capital of France? Paris is the capital of France.',
    '{"name": "Paris", "population": 2147000}',
    '{"name":"Paris","population":2147000}',
    '{"name": "London", "population": 8982000, "country": "United Kingdom"}',
    '[1, 2, 3, 4, 5, 6, 7, 8, 9, 0] -12.5e+3 true false null',
    'Let me think step by step. First, the user wants the answer in JSON.',
    'Okay, so I need to figure out the population of Paris. I recall it is about 2 million.',
    'Please generate the information of the capital of France in the JSON format.',
    'The answer is 42. Hello world! How are you today?',
    'def f(x):\n    return x * 2\n',
    'city country name population capital answer reasoning think thinking',
    'abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789',
    '\n\n  \t {} [] : , " \\ / ( ) < > = + - * . ! ? _',
)


def _trained(special_tokens: tuple[str, ...], vocab_size: int, corpus: tuple[str, ...] = _CORPUS) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is reachable
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) * 4, trainer=trainer)
    return tok


def build_tiny_tokenizer(marker_is_special: bool = True, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Train a tiny byte-level BPE tokenizer and wrap it as a transformers fast tokenizer."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=_trained(SPECIAL_TOKENS, vocab_size),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    if marker_is_special:
        wrapped.add_special_tokens({"additional_special_tokens": list(MARKER_TOKENS)})
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


# gpt-oss's harmony format: its special tokens (`<|return|>` and `<|call|>` both stop), and a chat template
# shaped as gpt-oss's: tools in a developer message, a call written back with its recipient in the role
# header, the prompt ending inside the assistant's header.
HARMONY_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>",
                                   "<|end|>", "<|message|>", "<|call|>")
HARMONY_TEMPLATE = (
    "{%- if tools -%}<|start|>developer<|message|># Tools\n\nnamespace functions {\n"
    "{%- for t in tools %}type {{ t.function.name }} = (_: {{ t.function.parameters | tojson }}) => any;\n"
    "{%- endfor %}} // namespace functions<|end|>{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' and m.tool_calls -%}"
    "<|start|>assistant to=functions.{{ m.tool_calls[0].function.name }}<|channel|>commentary json<|message|>"
    "{{ m.tool_calls[0].function.arguments | tojson }}<|call|>"
    "{%- elif m.role == 'assistant' -%}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>"
    "{%- elif m.role == 'tool' -%}<|start|>functions.tool to=assistant<|channel|>commentary<|message|>"
    "{{ m.content | tojson }}<|end|>"
    "{%- else -%}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)
_HARMONY_CORPUS = _CORPUS + (
    "analysis commentary final assistant functions to=functions.get_weather json",
    'get_weather city {"city": "Paris"} weather sunny',
)


def build_harmony_tokenizer(vocab_size: int = 640) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE tokenizer with gpt-oss's special tokens and a harmony-shaped chat template."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=_trained(HARMONY_TOKENS, vocab_size, _HARMONY_CORPUS),
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=[t for t in HARMONY_TOKENS if t not in ("<|return|>", "<|endoftext|>")],
    )
    wrapped.chat_template = HARMONY_TEMPLATE
    return wrapped
