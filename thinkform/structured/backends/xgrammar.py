"""xgrammar backend (the default): every constraint kind, compiled once, matched per request."""
from __future__ import annotations

import json
import re
from typing import Any, ClassVar

import torch
import xgrammar as xgr

from thinkform.cpus import usable_cpus
from thinkform.structured.backends.base import (BackendContext, CompiledGrammar, GrammarBackend, GrammarMatcher,
                                                Pending, split_pending)
from thinkform.structured.backends.registry import register_backend
from thinkform.structured.backends.text import without_cut_end
from thinkform.structured.backends.xgrammar_json import json_schema_grammar, unambiguous_hex_escapes
from thinkform.structured.ecma_regex import map_patterns
from thinkform.structured.json_string_pattern import segmented_regex, without_assertions
from thinkform.structured.pattern_length import bound_pattern_lengths
from thinkform.structured.schema_support import (answer_check_for, bounded_number, check_xgrammar_enforces,
                                                  complete_required, name_every_type, OTHER_BACKENDS_HINT)
from thinkform.structured.schema_walk import map_schemas
from thinkform.structured.xml_args import XML_ONLY_XGRAMMAR, xml_value_closers
from thinkform.structured.spec import Constraint, ConstraintError, GrammarOptions, rules_as_written
from thinkform.structured.unending import unending_rules
from thinkform.structured.vocab import xgrammar_tokenizer_info

COMPACT_SEPARATORS = (", ", ": ")
XGRAMMAR_CACHE_BYTES = 64 * 2**20
PARALLEL_FILL_ROWS = 128  # rows of one step's batched mask fill from which worker threads fill them
ANY_JSON_SCHEMA = {"type": ["object", "array"]}  # what SGLang's "$$ANY$$" admits, written compactly


class XGrammarMatcher(GrammarMatcher):
    def __init__(self, compiled: xgr.CompiledGrammar) -> None:
        self._m = xgr.GrammarMatcher(compiled)
        # can_terminate's answer for the current state: a decode step asks it three times a row (the mask's
        # EOS, the stop rules, a forced end), and every change of state goes through the methods below
        self._may_end: bool | None = None
        # is_terminated, asked after every token: the matcher terminates only by accepting a stop token
        # (terminate_without_stop_token is off), so it is asked of xgrammar only then
        self._stops = frozenset(self._m.stop_token_ids)
        self._terminated = False

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)

    def accept_token(self, token_id: int) -> bool:
        self._may_end = None
        accepted = self._m.accept_token(token_id)
        if accepted and token_id in self._stops:
            self._terminated = self._m.is_terminated()
        return accepted

    def accept_string(self, text: str) -> bool:
        self._may_end = None
        accepted = self._m.accept_string(text)
        self._terminated = self._m.is_terminated()
        return accepted

    def rollback(self, num_tokens: int) -> None:
        self._may_end = None
        self._m.rollback(num_tokens)
        self._terminated = self._m.is_terminated()

    def is_terminated(self) -> bool:
        return self._terminated

    def can_terminate(self) -> bool:
        # is_completed: the root rule is fully matched, which is exactly when the stop token is accepted.
        if self._may_end is None:
            self._may_end = self._m.is_completed()
        return self._may_end

    def find_jump_forward_bytes(self) -> bytes:
        try:
            return self._m.find_jump_forward_string().encode("utf-8")
        except UnicodeDecodeError as e:  # forced bytes that finish (or cut) a character: xgrammar's str fails
            return without_cut_end(e.object)


class XGrammarCompiled(CompiledGrammar):
    def __init__(self, compiled: xgr.CompiledGrammar, lark: bool = False) -> None:
        self.compiled = compiled
        self._lark = lark  # read from Lark: its rules are named as the user wrote them, `start` as `start`

    def new_matcher(self) -> GrammarMatcher:
        matcher = XGrammarMatcher(self.compiled)
        matcher.ending_hints = self.ending_hints
        return matcher

    def memory_bytes(self) -> int:
        return int(self.compiled.memory_size_bytes)

    def unending_rules(self) -> list[str]:
        return rules_as_written(unending_rules(str(self.compiled.grammar)), self._lark)


@register_backend
class XGrammarBackend(GrammarBackend):
    name: ClassVar[str] = "xgrammar"
    kinds: ClassVar[frozenset[str]] = frozenset(
        {"json_schema", "json_object", "regex", "ebnf", "structural_tag"})

    def __init__(self, ctx: BackendContext) -> None:
        super().__init__(ctx)
        # A row's fill mostly costs a few µs (xgrammar's cached masks): at batch 32, 0.03-0.6 ms in one
        # thread, and more with worker threads, whose hand-offs cost more than the rows (bench/gpu_bench.py's
        # profile part times both). Threads, half the CPUs this process may use ("auto" counts the host's,
        # see cpus.py), serve only the large batches whose rows outweigh them (vLLM's threshold too).
        half_the_cpus = max(1, usable_cpus() // 2)
        self._batch = xgr.BatchGrammarMatcher(1)
        self._parallel = xgr.BatchGrammarMatcher(half_the_cpus)
        # xgrammar's reading of the vocabulary, checked against the tokenizer's decoding (corrected, or the
        # tokenizer refused, where they disagree: vocab.checked_token_bytes)
        info = xgrammar_tokenizer_info(ctx.tokenizer, ctx.vocab_size, list(ctx.eos_token_ids))
        # its cache bounded: unbounded (xgrammar's default) it kept every grammar ever compiled (audit 29: 0.7 GB
        # more per 1,000 new schemas, for good); off, a new schema's compile took 81 ms instead of 5-7 (the
        # parts schemas share are cached there). 64 MiB keeps them (8 MiB did not: 61 ms); the engine's own
        # cache (cache.py) bounds the compiled grammars it hands out
        # compiles on half the CPUs too, as xgrammar's docs advise (vLLM's pool too): its default 8 threads a
        # compile on 2 cores slowed every running request's decode 13x for the minute a large schema compiled
        self._compiler = xgr.GrammarCompiler(info, max_threads=half_the_cpus, cache_enabled=True,
                                             cache_limit_bytes=XGRAMMAR_CACHE_BYTES)

    def fill_bitmasks(self, bitmask: torch.Tensor, pending: Pending) -> None:
        """xgrammar's matchers in one batched call; any other matcher row by row."""
        ours, rest = split_pending(pending, XGrammarMatcher)
        if ours:
            batch = self._parallel if len(ours) >= PARALLEL_FILL_ROWS else self._batch
            batch.batch_fill_next_token_bitmask([m._m for _, m in ours], bitmask, [row for row, _ in ours])
        super().fill_bitmasks(bitmask, rest)

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        self.check_kind(constraint)
        try:
            compiled = XGrammarCompiled(self._compile(constraint), lark=constraint.dialect == "lark")
        except ConstraintError:
            raise
        except Exception as e:  # xgrammar raises RuntimeError / ValueError / pydantic errors alike
            raise ConstraintError(f"invalid {constraint.field}: {_message(e)}", field=constraint.field) from e
        compiled.answer_check = answer_check_for(constraint)
        if constraint.kind == "structural_tag":
            compiled.ending_hints = xml_value_closers(constraint.data())
        return compiled

    def _compile(self, constraint: Constraint) -> xgr.CompiledGrammar:
        opts = self.ctx.options
        if constraint.kind == "json_schema":
            return self._compiler.compile_grammar(_json_grammar(constraint.source, opts, "json_schema"))
        if constraint.kind == "json_object":
            return self._compiler.compile_grammar(json_schema_grammar(
                ANY_JSON_SCHEMA, **{**_json_kwargs(opts), "strict_mode": False}))
        if constraint.kind == "regex":
            try:
                regex = segmented_regex(without_assertions(constraint.source))
            except ValueError as e:
                raise ConstraintError(f"regex: {e}{OTHER_BACKENDS_HINT}", field="regex") from e
            return self._compiler.compile_regex(unambiguous_hex_escapes(regex))
        if constraint.kind == "ebnf":
            source = constraint.source
            if constraint.dialect == "lark":  # vLLM's grammar fields' Lark, through xgrammar's Lark reader
                source = str(xgr.Grammar.from_lark(source))
            return self._compiler.compile_grammar(unambiguous_hex_escapes(source))
        return self._compiler.compile_structural_tag(json.dumps(structural_tag_format(constraint.data(), opts)))


def _json_grammar(schema: str | dict[str, Any], opts: GrammarOptions, field: str,
                  max_whitespace: int | None = None) -> str:
    """A JSON answer's schema, or a tool call's arguments', as its grammar: a pattern beside a length bounded,
    each required property listed, every type named where none is (schema_support), what xgrammar would drop
    refused (naming `field`), its strings mended (xgrammar_json), and whitespace after our policy
    (`max_whitespace` the format's own bound, if any)."""
    schema = _prepared(schema)
    check_xgrammar_enforces(schema, strict=opts.strict_mode, field=field)
    kwargs = _json_kwargs(opts)
    if opts.any_whitespace and max_whitespace:
        kwargs["max_whitespace_cnt"] = max_whitespace
    return json_schema_grammar(schema, **kwargs)


def _prepared(schema: str | dict[str, Any]) -> Any:
    """The schema as xgrammar must be given it: see `_json_grammar`."""
    schema = json.loads(schema) if isinstance(schema, str) else schema
    schema = map_patterns(schema, without_assertions)  # (checked on the answer: xgrammar ignores or refuses them)
    return complete_required(name_every_type(bound_pattern_lengths(schema)), every_object=True)


def _json_kwargs(opts: GrammarOptions) -> dict[str, Any]:
    if opts.any_whitespace:
        return {"any_whitespace": True, "max_whitespace_cnt": opts.max_whitespace, "strict_mode": opts.strict_mode}
    return {"any_whitespace": False, "separators": COMPACT_SEPARATORS, "strict_mode": opts.strict_mode}


def structural_tag_format(tag: dict[str, Any], opts: GrammarOptions) -> dict[str, Any]:
    """Either SGLang structural-tag form as xgrammar's `format` form, with our JSON whitespace policy."""
    if "format" in tag:
        fmt = tag["format"]
    else:
        fmt = {
            "type": "triggered_tags",
            "triggers": tag["triggers"],
            "tags": [{"type": "tag", "begin": s["begin"], "end": s["end"],
                      "content": {"type": "json_schema", "json_schema": s["schema"]}}
                     for s in tag["structures"]],
        }
    return {"type": "structural_tag", "format": _json_policy(fmt, opts)}


def _json_policy(node: Any, opts: GrammarOptions) -> Any:
    """Rewrite the plain-JSON schema formats of a structural tag as the grammar of their schema, compiled
    under our whitespace policy (xgrammar's json_schema format has no compact switch) with its strings
    mended (xgrammar_json: patterns and length-bounded strings)."""
    if isinstance(node, list):
        return [_json_policy(n, opts) for n in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "json_schema" and node.get("style", "json") == "json":  # a tool call's arguments
        grammar = _json_grammar(node["json_schema"], opts, "structural_tag", node.get("max_whitespace_cnt"))
        return {"type": "grammar", "grammar": grammar}
    if node.get("type") == "json_schema":
        return _xml_policy(node, opts)
    return {k: _json_policy(v, opts) for k, v in node.items()}


def _xml_policy(node: dict[str, Any], opts: GrammarOptions) -> dict[str, Any]:
    """A json_schema format in one of xgrammar's XML styles (tool-call arguments as `<parameter=k>v</parameter>`
    or `<arg_key>k</arg_key><arg_value>v</arg_value>`): compiled by xgrammar itself, as only it can. The same
    schema checks as for JSON (a keyword xgrammar would drop is refused: no other library compiles these
    styles), whitespace runs bounded, and numbers bounded in the grammar through the schema: the JSON number
    guard cannot follow XML (its raw strings are not JSON), so an integer gets the range of
    `max_number_digits` digits and a number that range too (xgrammar then writes at most 6 decimals and no
    exponent), inside any bounds of its own."""
    schema = map_schemas(_prepared(node["json_schema"]), lambda n: bounded_number(n, opts.max_number_digits))
    try:
        check_xgrammar_enforces(schema, strict=opts.strict_mode, field="structural_tag")
    except ConstraintError as e:  # no other backend to suggest
        raise ConstraintError(str(e).replace(OTHER_BACKENDS_HINT, "") + XML_ONLY_XGRAMMAR, field=e.field) from e
    return {**node, "json_schema": schema, "max_whitespace_cnt": node.get("max_whitespace_cnt") or opts.max_whitespace}


def _message(e: Exception) -> str:
    return xgrammar_reason(str(e))


# xgrammar's C++ errors carry a "[hh:mm:ss] /path/file.cc:line: " log prefix, at the start or inside another
# message (a Lark regex terminal's: "failed to compile regular expression: [06:10:45] /project/cpp/...cc:83: ...")
_LOG_PREFIX = re.compile(r"\[\d{1,2}:\d{2}:\d{2}\] \S+\.(?:cc|h|cpp):\d+: ")
# ... and a failed assertion its condition, C++ the user never wrote: "Check failed: (cond) is false: reason"
_CHECK_FAILED = re.compile(r"Check failed: .*? is false:\s*")


def xgrammar_reason(text: str) -> str:
    """The reason in an xgrammar error's text, without its log prefix, assertion text, or (a structural tag's)
    "Invalid structural tag error: " preamble."""
    reason = _CHECK_FAILED.sub("", _LOG_PREFIX.sub("", text.strip())).removeprefix("Invalid structural tag error: ")
    return reason or text.strip()
