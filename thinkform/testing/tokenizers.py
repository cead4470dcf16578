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


def build_tiny_tokenizer(marker_is_special: bool = True, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Train a tiny byte-level BPE tokenizer and wrap it as a transformers fast tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is reachable
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    if marker_is_special:
        wrapped.add_special_tokens({"additional_special_tokens": list(MARKER_TOKENS)})
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
