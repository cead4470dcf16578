"""llguidance backend: JSON schema, regex, EBNF (GBNF or lark) and trigger-style structural tags."""
from __future__ import annotations

import json
import re
from typing import Any, ClassVar

import llguidance
import llguidance.hf
import torch
from llguidance import LLMatcher, StructTag, TokenizerWrapper

from thinkform.cpus import usable_cpus
from thinkform.structured.backends.base import (BackendContext, CompiledGrammar, GrammarBackend, GrammarMatcher,
                                                Pending, split_pending)
from thinkform.structured.backends.registry import register_backend
from thinkform.structured.backends.text import without_cut_end
from thinkform.structured.json_string_pattern import ecma_dots, without_assertions
from thinkform.structured.schema_support import (answer_check_for, bounded_multiple, complete_required,
                                                  without_unenforceable)
from thinkform.structured.schema_walk import map_schemas
from thinkform.structured.unending import unending_rules
from thinkform.structured.vocab import (CheckedBytes, added_token_ids, checked_token_bytes, misread_token, spell_text,
                                        token_text, tokenizer_name)
from thinkform.structured.spec import (Constraint, ConstraintError, GrammarOptions, has_xml_content, is_lark,
                                       rules_as_written)
from thinkform.structured.xml_args import XML_ONLY_XGRAMMAR

ANY_JSON_SCHEMA: dict[str, Any] = {"type": ["object", "array"]}


class LLGuidanceMatcher(GrammarMatcher):
    def __init__(self, matcher: LLMatcher, tokenizer: llguidance.LLTokenizer, eos_token_ids: frozenset[int]) -> None:
        self._m = matcher
        self._tok = tokenizer
        self._eos = eos_token_ids
        self._steps: list[int] = []  # tokens consumed per accept call, so rollback counts calls like xgrammar
        self._terminated_at: int | None = None  # step that accepted EOS (is_stopped() is true before it)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        # what llguidance.torch.fill_next_token_bitmask does, without importing torch.compile (6 s)
        words = bitmask[row]
        self._m.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * words.element_size())

    def accept_token(self, token_id: int) -> bool:
        if self._terminated_at is not None:
            return False
        if token_id in self._eos:
            # EOS is not fed to llguidance: it would not undo it on rollback; we track it ourselves.
            if not self._m.is_accepting():
                return False
            self._steps.append(0)
            self._terminated_at = len(self._steps)
            return True
        return self._consume([token_id])

    def accept_string(self, text: str) -> bool:
        if self._terminated_at is not None:
            return False
        return self._consume(self._tok.tokenize_str(text)) if text else True

    def _consume(self, tokens: list[int]) -> bool:
        # try_consume_tokens leaves the matcher usable on a rejected token (consume_token would not).
        done = self._m.try_consume_tokens(tokens)
        if done != len(tokens):
            if done:
                self._m.rollback(done)
            return False
        self._steps.append(done)
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > len(self._steps):
            raise ValueError(f"cannot roll back {num_tokens} steps, only {len(self._steps)} taken")
        count = sum(self._steps[len(self._steps) - num_tokens:]) if num_tokens else 0
        del self._steps[len(self._steps) - num_tokens:]
        if count:
            self._m.rollback(count)
        if self._terminated_at is not None and self._terminated_at > len(self._steps):
            self._terminated_at = None

    def is_terminated(self) -> bool:
        return self._terminated_at is not None

    def can_terminate(self) -> bool:
        return self._m.is_accepting()

    def find_jump_forward_bytes(self) -> bytes:
        return without_cut_end(self._m.compute_ff_bytes())


class LLGuidanceCompiled(CompiledGrammar):
    def __init__(self, prototype: LLMatcher, tokenizer: llguidance.LLTokenizer, eos_token_ids: frozenset[int],
                 constraint: Constraint | None = None) -> None:
        self._prototype = prototype
        self._tok = tokenizer
        self._eos = eos_token_ids
        self._constraint = constraint

    def new_matcher(self) -> GrammarMatcher:
        # Copying a built matcher skips re-parsing the grammar for each request.
        return LLGuidanceMatcher(self._prototype.deep_copy(), self._tok, self._eos)

    def unending_rules(self) -> list[str]:
        """llguidance cannot tell (its matcher meets the dead end later: a request failing with "token 0 is
        not allowed"); xgrammar's reading of the same source can: a GBNF or Lark grammar (read as llguidance
        read it: spec.is_lark), or a JSON schema that refers to itself ($ref: no recursion without one). Rules
        named as the user wrote them (Lark's `start`); [] where xgrammar cannot read it."""
        c = self._constraint
        if c is None or not (c.kind == "ebnf" or c.kind == "json_schema" and "$ref" in c.source):
            return []
        import xgrammar as xgr

        lark = is_lark(c)
        try:
            if c.kind == "json_schema":
                grammar = xgr.Grammar.from_json_schema(c.source)
            else:
                grammar = xgr.Grammar.from_lark(c.source) if lark else xgr.Grammar.from_ebnf(c.source)
        except Exception:  # noqa: BLE001 - a dialect or keyword only llguidance reads: no verdict
            return []
        return rules_as_written(unending_rules(str(grammar)), lark)


def lltokenizer(ctx: BackendContext) -> llguidance.LLTokenizer:
    """llguidance's tokenizer: its own reading of the tokenizer.json where that agrees with the bytes the
    other backends read (vocab.checked_token_bytes, on the ids checked there: ~5 ms on Qwen's vocabulary);
    where it reads a token otherwise (a `Sequence[ByteFallback, Metaspace]` decoder: '▁the' as
    b'\xe2\x96\x81the') or cannot read the tokenizer at all (a Metaspace or WordPiece decoder: "can't
    determine decoder type"), built from those checked bytes and the tokenizer's own encoding. A ValueError
    naming a token where it still reads one otherwise."""
    tokenizer, eos = ctx.tokenizer, list(ctx.eos_token_ids)
    checked = checked_token_bytes(tokenizer, ctx.vocab_size)
    try:
        own = llguidance.hf.from_tokenizer(tokenizer, n_vocab=ctx.vocab_size, eos_token=eos)
    except ValueError:
        own = None
    if own is not None and misread_token(checked, lambda i: own.decode_bytes([i])) is None:
        return own
    built = llguidance.LLTokenizer(TokenizerWrapper(_CheckedTokenizer(tokenizer, checked, eos)),
                                   n_vocab=ctx.vocab_size, eos_token=eos)
    wrong = misread_token(checked, lambda i: built.decode_bytes([i]))
    if wrong is not None:
        token_id, got = wrong
        raise ValueError(
            f"tokenizer {tokenizer_name(tokenizer)}: llguidance would read token {token_id} "
            f"{token_text(tokenizer, token_id)!r} as {got!r} but the tokenizer decodes it as "
            f"{checked.token_bytes[token_id]!r}; use --grammar-backend xgrammar")
    return built


class _CheckedTokenizer:
    """What llguidance's TokenizerWrapper reads: the checked bytes of every id, the added and special tokens
    (and padding rows) as its special ones, and the tokenizer's encoding of text (sentencepiece's prefix
    space dropped: vocab.spell_text)."""

    def __init__(self, tokenizer: Any, checked: CheckedBytes, eos: list[int]) -> None:
        self.eos_token_id = eos[0] if eos else tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self.tokens = list(checked.token_bytes)
        self.special_token_ids = sorted(added_token_ids(tokenizer) | set(range(checked.num_tokens, len(self.tokens))))
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):  # TokenizerWrapper asks with bytes once: refused, it hands text instead
            raise TypeError("text only")
        return spell_text(self._tokenizer, self.tokens, text)[0]


@register_backend
class LLGuidanceBackend(GrammarBackend):
    name: ClassVar[str] = "llguidance"
    kinds: ClassVar[frozenset[str]] = frozenset(
        {"json_schema", "json_object", "regex", "ebnf", "structural_tag"})

    def __init__(self, ctx: BackendContext) -> None:
        super().__init__(ctx)
        self._tok = lltokenizer(ctx)
        # its own threads: 80 % of the CPUs this process may use, at most 32 (llguidance's own rule)
        self._executor = llguidance.LLExecutor(max(1, min(32, usable_cpus() * 4 // 5)))

    def fill_bitmasks(self, bitmask: torch.Tensor, pending: Pending) -> None:
        """llguidance's matchers in parallel on its executor (what llguidance.torch's
        fill_next_token_bitmask_par does); any other matcher row by row."""
        ours, rest = split_pending(pending, LLGuidanceMatcher)
        if ours:
            if not bitmask.is_contiguous():
                raise ValueError("bitmask: must be contiguous")
            self._executor.unsafe_compute_mask_ptr([(m._m, row) for row, m in ours], bitmask.data_ptr(),
                                                   bitmask.shape[1] * 4, bitmask.shape[0])
        super().fill_bitmasks(bitmask, rest)

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        self.check_kind(constraint)
        gbnf_lark = None  # llguidance's Lark translation of a GBNF grammar: its errors quote that text
        try:
            if constraint.kind == "ebnf" and not is_lark(constraint):
                gbnf_lark = gbnf_as_lark(constraint.source)
                grammar = LLMatcher.grammar_from_lark(gbnf_lark)
            else:
                grammar = self._grammar(constraint)
        except ConstraintError:
            raise
        except Exception as e:  # grammar_from_* raise ValueError on malformed input
            raise ConstraintError(f"invalid {constraint.field}: {e}", field=constraint.field) from e
        matcher = LLMatcher(self._tok, grammar, log_level=0)
        if matcher.is_error():
            error = matcher.get_error().strip()
            if gbnf_lark is not None:
                error = gbnf_error(error, gbnf_lark, constraint.source)
            raise ConstraintError(f"invalid {constraint.field}: {error}", field=constraint.field)
        compiled = LLGuidanceCompiled(matcher, self._tok, frozenset(self.ctx.eos_token_ids), constraint)
        compiled.answer_check = answer_check_for(constraint, names_as_written=True)  # (unenforced_keywords)
        return compiled

    def _grammar(self, constraint: Constraint) -> str:
        opts = self.ctx.options
        if constraint.kind == "json_schema":
            schema = _bounded_multiples(complete_required(without_unenforceable(constraint.data())), opts)
            return LLMatcher.grammar_from_json_schema(
                strict_schema(schema) if opts.strict_mode else schema, overrides=json_options(opts))
        if constraint.kind == "json_object":
            return LLMatcher.grammar_from_json_schema(ANY_JSON_SCHEMA, overrides=json_options(opts))
        if constraint.kind == "regex":
            return LLMatcher.grammar_from_regex(ecma_dots(without_assertions(constraint.source)))
        if constraint.kind == "ebnf":  # Lark, as written (a GBNF is converted in compile: gbnf_as_lark)
            return llguidance.grammar_from("lark", constraint.source)
        return _structural_tag_grammar(constraint.data(), opts)


def gbnf_as_lark(gbnf: str) -> str:
    """A GBNF grammar as llguidance's Lark, by llguidance's converter, its four- and eight-digit `\\u` / `\\U`
    escapes first written so that the converter keeps them (it drops their leading zeros: `\\u00e9` became `\\ue9`, a
    lexer error, `\\U0010FFFF` `\\U10FFFF`, an invalid regex; llama.cpp's json.gbnf failed so). A ValueError
    quoting the user's text where the converter cannot read it."""
    from llguidance.gbnf_to_lark import gbnf_to_lark

    try:
        return gbnf_to_lark(_plain_unicode_escapes(gbnf))
    except Exception as e:  # noqa: BLE001 - the converter raises its own error class or Exception
        try:
            gbnf_to_lark(gbnf)  # the same failure as the user's text shows it, where the rewrite kept it
        except Exception as original:  # noqa: BLE001
            e = original
        raise ValueError(f"Failed to convert the grammar from GBNF to Lark: {e}") from None


# a GBNF comment, string literal or character class: escapes are rewritten only inside the latter two
_GBNF_PIECE = re.compile(r'#[^\r\n]*|"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]', re.DOTALL)
_GBNF_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|.)", re.DOTALL)


def _plain_unicode_escapes(gbnf: str) -> str:
    """Four- and eight-digit `\\u` / `\\U` escapes inside a GBNF string or character class as what llguidance's
    converter keeps: `\\xHH` below U+0100 (which stays an escape: a quote, backslash, bracket, `-` or `^` keeps no
    special meaning), the character itself above (none of those is special). A surrogate or a code point past
    U+10FFFF stays as written (llguidance refuses it)."""
    def char(m: re.Match[str]) -> str:
        digits = m.group(1) or m.group(2)
        if digits is None:
            return m.group(0)  # another escape, kept whole (`\\\\u0041` is a backslash, then `u0041`)
        code = int(digits, 16)
        if code < 0x100:
            return f"\\x{code:02x}"
        return m.group(0) if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF else chr(code)

    def piece(m: re.Match[str]) -> str:
        text = m.group(0)
        return text if text.startswith("#") else _GBNF_ESCAPE.sub(char, text)

    return _GBNF_PIECE.sub(piece, gbnf)


_ERROR_AT = re.compile(r"^(?:at )?(\d+)\((\d+)\): ")  # "3(13): lexer error", "at 3(8): invalid regex ..."
_EXCERPT = re.compile(r"^\s*\d+ \| ")  # "   3 | start: ..." (the quoted grammar, llguidance's Lark)
_LARK_RULE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:")
_GBNF_RULE = re.compile(r"(?m)^[ \t]*([A-Za-z0-9_-]+)[ \t]*::=")


def gbnf_error(error: str, lark: str, gbnf: str) -> str:
    """llguidance's error on its Lark translation of a GBNF grammar, said of the user's grammar: the reason,
    and the rule it is in under the user's name (`root`, `foo-bar`), not the translation's excerpt (`start`,
    `FOO_BAR`, escapes it rewrote). The error as it is where its form is not the one known."""
    lines = error.splitlines()
    at = _ERROR_AT.match(lines[0]) if lines else None
    if at is None:
        return error
    body = []
    for line in lines[1:]:
        if _EXCERPT.match(line):
            break
        body.append(line)
    reason = re.sub(r" \(at .*\)$", "", lines[0][at.end():])  # the lexer's position in the translation
    reason = reason.removesuffix(" (in regex): regex parse error:")
    detail = next((line.removeprefix("error: ") for line in body if line.startswith("error: ")), None)
    if detail:
        reason = f"{reason}: {detail}"
    rule = None
    translated = lark.splitlines()
    for number in range(min(int(at.group(1)), len(translated)), 0, -1):
        if (m := _LARK_RULE.match(translated[number - 1])) is not None:
            rule = m.group(1)
            break
    if rule is None:
        return reason
    names = {}
    for name in _GBNF_RULE.findall(gbnf):
        lark_name = "start" if name == "root" else re.sub(r"([a-z])([A-Z])", r"\1_\2", name.replace("-", "_"))
        names.setdefault(lark_name.lower(), name)
    return f"rule {names.get(rule.lower(), rule)!r}: {reason}"


def _bounded_multiples(schema: Any, opts: GrammarOptions) -> Any:
    return map_schemas(schema, lambda node: bounded_multiple(node, opts.max_number_digits))


def json_options(opts: GrammarOptions) -> dict[str, Any]:
    """llguidance's JSON options matching xgrammar's: compact `, ` / `: `, or bounded whitespace; a `oneOf`
    read as `anyOf` (as xgrammar reads an overlapping one), its exclusivity checked on the answer."""
    if opts.any_whitespace:
        return {"whitespace_flexible": True, "whitespace_pattern": rf"[\x20\x0A\x0D\x09]{{0,{opts.max_whitespace}}}",
                "coerce_one_of": True}
    return {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "coerce_one_of": True}


_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames",
               "additionalProperties", "unevaluatedItems", "unevaluatedProperties")


def strict_schema(schema: Any) -> Any:
    """xgrammar's strict_mode for llguidance: objects admit only the properties the schema names,
    unless the schema says otherwise (llguidance, like JSON Schema, admits extra ones by default).

    An `allOf` of objects (OpenAPI's base + extension) is closed as a whole: its branches (and the local
    `$defs` they name) stay open, and the object that holds the `allOf` lists every branch's properties and
    admits no others. Closing each branch would make them exclude each other (a 400 for a satisfiable schema)."""
    if not isinstance(schema, dict):
        return schema
    return _strict(schema, schema, _composed_defs(schema), close=True)


def _composes(node: dict[str, Any]) -> bool:
    """An `allOf` of several branches, which together make one object (one branch is a `$ref` wrapper)."""
    return isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1


def _strict(schema: Any, root: dict[str, Any], composed: set[str], close: bool) -> Any:
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _strict(sub, root, composed, not (key in ("$defs", "definitions") and name in composed))
                        for name, sub in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            branch_close = key != "allOf" or not _composes(out)
            out[key] = [_strict(sub, root, composed, branch_close) for sub in out[key]]
    for key in _SUBSCHEMAS:
        if key in out:
            out[key] = ([_strict(s, root, composed, True) for s in out[key]] if isinstance(out[key], list)
                        else _strict(out[key], root, composed, True))
    if close and _composes(out):
        names = _branch_properties(out["allOf"], root)
        if names:
            out["properties"] = {**{name: {} for name in names}, **(out.get("properties") or {})}
    # Like xgrammar, only objects that name properties are closed; a bare {"type": "object"} stays open.
    if close and "properties" in out and "additionalProperties" not in out and "unevaluatedProperties" not in out:
        out["additionalProperties"] = False
    return out


def _local_def(ref: Any) -> str | None:
    for prefix in ("#/$defs/", "#/definitions/"):
        if isinstance(ref, str) and ref.startswith(prefix) and "/" not in ref[len(prefix):]:
            return ref[len(prefix):]
    return None


def _composed_defs(schema: Any) -> set[str]:
    """Names of local definitions some `allOf` uses as a branch (they stay open, their users are closed)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for branch in node.get("allOf") or [] if _composes(node) else []:
                name = _local_def(branch.get("$ref")) if isinstance(branch, dict) else None
                if name is not None:
                    found.add(name)
            for value in node.values():
                walk(value)

    walk(schema)
    return found


def _branch_properties(branches: list[Any], root: dict[str, Any], depth: int = 0) -> list[str]:
    """The property names an `allOf`'s branches list (through local `$ref`s and nested `allOf`s), in order."""
    names: list[str] = []
    for branch in branches:
        if isinstance(branch, dict) and (name := _local_def(branch.get("$ref"))) is not None:
            branch = (root.get("$defs") or root.get("definitions") or {}).get(name, {})
        if not isinstance(branch, dict):
            continue
        nested = _branch_properties(branch["allOf"], root, depth + 1) if depth < 8 and _composes(branch) else []
        for prop in [*(branch.get("properties") or {}), *nested]:
            if prop not in names:
                names.append(prop)
    return names


def _structural_tag_grammar(tag: dict[str, Any], opts: GrammarOptions) -> str:
    """Free text with JSON tool calls after triggers, as llguidance lazy-trigger lark.

    The legacy form maps directly; of the `format` form only the same shape (triggered_tags whose tags
    hold a json_schema) maps, anything richer needs xgrammar."""
    if "structures" in tag:
        items, triggers = _legacy_items(tag), tag["triggers"]
    else:
        if has_xml_content(tag):
            raise ConstraintError("grammar backend 'llguidance' cannot compile a structural_tag whose json_schema "
                                  f"content has an XML style{XML_ONLY_XGRAMMAR}; use --grammar-backend xgrammar "
                                  "or auto", field="structural_tag")
        items, triggers = _format_items(tag["format"]), tag["format"].get("triggers") or []
    tags = []
    for begin, schema, end in items:
        trigger = next((t for t in triggers if begin.startswith(t)), None)
        if trigger is None:
            raise ConstraintError(f"structural_tag begin {begin!r} does not start with any trigger",
                                  field="structural_tag")
        schema = _bounded_multiples(complete_required(without_unenforceable(schema)), opts)
        schema = strict_schema(schema) if opts.strict_mode else schema
        schema = {**schema, "x-guidance": {**schema.get("x-guidance", {}), **json_options(opts)}}
        # Triggers are matched as text (assume_special=False): markers need not be special tokens.
        tags.append(StructTag(trigger=trigger, begin=begin, grammar=schema, end=end))
    return StructTag.to_grammar(tags, assume_special=False)


def _legacy_items(tag: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    return [(s["begin"], s["schema"], s["end"]) for s in tag["structures"]]


def _unsupported_format(fmt: dict[str, Any]) -> ConstraintError:
    """A format llguidance does not compile: where xgrammar, which compiles the others, refuses it too (a
    format type it does not know, a tag with no content), its reason, with no advice to use it; else that advice."""
    import xgrammar as xgr

    from thinkform.structured.backends.xgrammar import xgrammar_reason

    try:
        xgr.Grammar.from_structural_tag(json.dumps({"type": "structural_tag", "format": fmt}))
    except Exception as e:  # noqa: BLE001 - InvalidStructuralTagError, RuntimeError, ...
        return ConstraintError(f"invalid structural_tag: {xgrammar_reason(str(e))}", field="structural_tag")
    return ConstraintError(
        "grammar backend 'llguidance' supports structural_tag only as triggered tags with JSON-schema "
        "content (the legacy 'structures' form or format type 'triggered_tags'); use --grammar-backend "
        "xgrammar or auto for other structural tag formats", field="structural_tag")


def _format_items(fmt: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    if fmt.get("type") != "triggered_tags" or fmt.get("at_least_one") or fmt.get("stop_after_first"):
        raise _unsupported_format(fmt)
    items = []
    for t in fmt.get("tags", []):
        content = t.get("content", {})
        if (t.get("type", "tag") != "tag" or content.get("type") != "json_schema"
                or not isinstance(t.get("begin"), str) or not isinstance(t.get("end"), str)
                or content.get("style", "json") != "json"):
            raise _unsupported_format(fmt)
        schema = content["json_schema"]
        items.append((t["begin"], json.loads(schema) if isinstance(schema, str) else schema, t["end"]))
    if not items:
        raise _unsupported_format(fmt)
    return items
