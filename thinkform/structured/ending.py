"""Budget closing by search: the bytes that take a grammar from where an answer stands to a place it may end.

A grammar bounds what may be written, not how long. Under `root ::= "(" item ("," item)* ")"` with
`item ::= [a-z]+` a random model writes letters and commas until `max_new_tokens` cuts it; under a schema of
eight required strings the seed's closing tiers (closing.py) cannot get it out of a string whose bytes
may be `}` and `]` themselves. Either way the user gets no valid answer at all. When the tokens left fall
to the closing reserve, the gate asks this search for a short way to an end and appends it, then EOS:
`(ab,cd` + `)`, `{"a": "xy` + `", "b": "", …, "h": ""}`.

The search walks single bytes with the request's own matcher (accept, fill, rollback), so it serves every
backend and every constraint kind:
- a node's children are one byte per class: each punctuation mark and whitespace byte on its own, and
  of the lowercase letters, uppercase letters, digits and bytes of multi-byte characters the first and
  the last the grammar allows, so `[a-z]+` has two ways forward, not 26; class order puts closers first
  and openers last;
- first one greedy way: a child that ends the grammar, else a closer, else a child that changes the mask
  (leaves a loop; of several that lead back, one not taken from there lately), else the first child. A fill
  or two a step, and in our measurements it finds an ending as short as the breadth-first search's
  (bench/ending_search.py). Where no child changes the mask (inside `[a-z0-9.-]+\\.[a-z]{2,4}` a dot and a
  letter go on alike), it looks up to 4 bytes ahead with accepts alone for a way that may end or lets a
  closer or separator through (`.aa`, `.aa/`; 2,048 accepts a search at most, a look that tried every way
  from a mask not repeated there). A regex or EBNF grammar's own literal runs (literals.py) are tried whole at each
  step where they end the answer (`</answer>` out of `.*`, whose letters no mask tells apart), and where
  nothing else leads out, one that leads to a mask not seen lately; a JSON string's pattern runs, where the
  string cannot close yet, one after which it can (`END` out of `^.*END$`); a backslash is never a step (an
  escape only lengthens the way);
- where it fails, breadth-first over the same children; nodes of one level whose masks are equal count as
  one state and are expanded once (every reachable state has a way to an end, so dropping a twin never
  loses the last way);
- limits (SearchLimits): 16 nodes a level, 2048 mask fills in all (fills are the search's cost: up to
  ~0.4 ms each for xgrammar over a 152k vocabulary) and 1024 tokens in a way; past them there is no ending,
  and the answer is cut as it would have been. They count work, so a request closes the same way on every
  machine; 0.2 s only guards the engine loop against a matcher that slows down as a way grows (xgrammar
  under `(x+x+)+y`).

The gate looks when the closing reserve of tokens is left, and, for a grammar whose shortest answer is
longer than the reserve or not found (measured once per compiled grammar on its compile thread, before the
grammar is handed out, so the first request of a grammar is shaped as every later one and a seed gives the
same answer either way; p50 2 ms, p99 0.95 s over JSONSchemaBench), at 4× and 2× the reserve as well: a long ending is appended while it still fits. An answer that ends on its own before
its budget costs no search.

Past the matcher's own accepts and fills, the search's bookkeeping is kept small, since at batch 32 many
rows search on one decode step while the batch waits: masks are compared as bytes, a mask's children are
worked out once per vocabulary (they depend only on the few bytes of it that hold the single-byte tokens),
and an ending's spelling is looked up once (bench/ending_search_cost.py: 1.1 ms a search down to 0.24 ms
inside the seed's CapitalInfo JSON, the same ids found).
"""
from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import TYPE_CHECKING

import numpy as np
import torch

from thinkform.structured.bitmask import first_allowed, tokens_allowed
from thinkform.structured.literals import closing_candidates
from thinkform.structured.vocab import TokenVocab

if TYPE_CHECKING:
    from thinkform.structured.backends.base import CompiledGrammar, GrammarMatcher

_CLOSERS = b"\"')]}>"
_OPENERS = b"([{<"
_SEPARATORS = b"/:;,=?&@#"
_MAX_REPEATS = 32  # how far a closer that leaves the mask as it was is tried in a run (nesting depth)
_LOOKAHEAD_DEPTH = 4  # bytes a way through a loop whose mask never changes is looked for (`a.aa`: a domain)
_LOOKAHEAD_PROBES = 1024  # accepts one such look may spend (a few milliseconds; no fills)
_LOOKAHEAD_TOTAL = 2048  # accepts all of one search's looks may spend
_LOOKAHEAD_WIDTH = 8  # bytes tried at each step of it (the first classes: closers, separators, a digit, a letter)
_RECENT_MASKS = 4  # steps back a mask counts as where the way has been
_CHILDREN_CACHED = 4096  # masks' byte-token regions whose children are kept (a few per grammar state)
_SPELLED_CACHED = 1024  # endings whose spelling is kept (the rows of one schema mostly share a few)
_OTHER_PUNCTUATION = bytes(c for c in range(0x21, 0x7F)
                           if not chr(c).isalnum() and c not in _CLOSERS and c not in _OPENERS)
# Class order decides which of several ways is taken, and which of two twins is kept. Closers
# come first and openers last, so that `0)` (a way out) is kept over `(0` (a way in) where their masks
# agree; separators come before letters and digits, so that `a b` (a second word) is kept over `aab` (a
# longer first word) where a grammar counts words.
_CLASSES: tuple[bytes, ...] = (
    *(bytes([c]) for c in _CLOSERS), b" ", b"\n", b"\t", b"\r", *(bytes([c]) for c in _OTHER_PUNCTUATION),
    b"0123456789", b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", *(bytes([c]) for c in _OPENERS),
    bytes(range(0x80, 0x100)),
)


@dataclass(frozen=True)
class SearchLimits:
    max_width: int = 16  # nodes a level of the breadth-first search
    max_fills: int = 2048  # mask fills in all
    max_length: int = 1024  # tokens in a way (single bytes mostly: twelve empty JSON fields take ~170)
    max_seconds: float = 0.2  # of the search's CPU time: a guard against matchers that slow down as a way grows


# Measuring a grammar's shortest answer runs on its compile thread before the grammar is handed out, with
# room for a long answer (twenty required fields); the clock only guards against pathological matchers.
MEASURE_LIMITS = SearchLimits(max_fills=8192, max_length=4096, max_seconds=2.0)


class _Exhausted(Exception):
    """The search spent its fills or its time."""


def _allows(mask: bytes, token_id: int) -> bool:
    """Whether a packed mask's bytes allow `token_id`: bit j of int32 word i is bit j % 8 of byte 4i + j // 8
    (numpy's native order, little-endian wherever torch runs), so token t is bit t % 8 of byte t // 8."""
    return bool((mask[token_id >> 3] >> (token_id & 7)) & 1)


def _as_words(mask: bytes) -> np.ndarray:
    """A mask's bytes as its int32 words again (a read-only view, no copy)."""
    return np.frombuffer(mask, dtype=np.int32)


@dataclass(slots=True)
class _Walk:
    """One search: the matcher it drives and what it may still spend. Masks are the bytes of the packed
    int32 words: one copy out of the scratch row, and they compare and hash as they are (the search asks
    of a mask mostly whether it is one seen before)."""

    matcher: GrammarMatcher
    scratch: torch.Tensor
    row: np.ndarray  # scratch[0] as numpy: viewing the tensor anew costs more than a fill
    limits: SearchLimits
    fills_left: int
    deadline: float
    literals: list[list[int]]  # the grammar's literal runs as single-byte ids (literals.py)
    closing: list[list[int]]  # what may end the answer at once: its remaining fixed text, each literal
    looked: set[bytes] = field(default_factory=set)  # masks a whole look-ahead found nothing from
    look_budget: int = _LOOKAHEAD_TOTAL  # accepts left to this walk's look-aheads (dear where they fail)
    literals_tried: set[bytes] = field(default_factory=set)  # masks whose literal way out was looked for
    exits_tried: set[bytes] = field(default_factory=set)  # masks whose literal string exit was looked for
    depth: int = 0  # tokens accepted and not rolled back: what find() undoes, however the search ends

    def mask(self) -> bytes:
        if self.fills_left <= 0:
            raise _Exhausted
        self.fills_left -= 1
        self.matcher.fill_bitmask(self.scratch, 0)
        return self.row.tobytes()

    def take(self, ids: list[int]) -> int:
        """Accept `ids` up to the first the grammar rejects; how many were taken (the matcher left after them)."""
        taken = 0
        for t in ids:
            if not self.accept(t):
                break
            taken += 1
        return taken

    def accept(self, token_id: int) -> bool:
        # an ambiguous grammar can make one accept cost milliseconds deep in a way (xgrammar under
        # `(x+x+)+y`): the clock is checked at each one. The search's own CPU time, not the wall clock: a busy
        # machine must not change what it finds (audit 29: the same request ended "tool_calls" or "length"
        # as the load went)
        if time.thread_time() > self.deadline:
            raise _Exhausted
        if not self.matcher.accept_token(token_id):
            return False
        self.depth += 1
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            self.matcher.rollback(num_tokens)
            self.depth -= num_tokens


class EndingSearch:
    """Per vocabulary, shared by all requests: the byte classes' token ids, the limits, and each compiled
    grammar's shortest answer (measured once, on its compile thread)."""

    def __init__(self, vocab: TokenVocab, limits: SearchLimits = SearchLimits(),
                 measure_limits: SearchLimits = MEASURE_LIMITS) -> None:
        pairs = [(vocab.byte_ids[b], k) for k, members in enumerate(_CLASSES) for b in members if b in vocab.byte_ids]
        self._ids = np.array([t for t, _ in pairs], dtype=np.int64)
        self._classes = np.array([k for _, k in pairs], dtype=np.int64)
        self._closers = frozenset(vocab.byte_ids[b] for b in _CLOSERS if b in vocab.byte_ids)
        # bytes whose coming through, where they could not before, shows a look-ahead has left a loop: the
        # closers, and the separators after which a URL, a path or a list goes on (`.aa/` out of a host)
        self._way_out_ids = [vocab.byte_ids[b] for b in _CLOSERS + _SEPARATORS if b in vocab.byte_ids]
        self._class_of = dict(zip(self._ids.tolist(), self._classes.tolist()))
        self._ascii = frozenset(vocab.byte_ids[b] for b in range(0x80) if b in vocab.byte_ids)
        self._spaces = frozenset(vocab.byte_ids[b] for b in b" \t\n\r" if b in vocab.byte_ids)
        self._openers = frozenset(vocab.byte_ids[b] for b in _OPENERS if b in vocab.byte_ids)
        self._newline = vocab.byte_ids.get(ord("\n"))
        self._backslash = vocab.byte_ids.get(ord("\\"))
        self._quote = vocab.byte_ids.get(ord('"'))
        self._minus = vocab.byte_ids.get(ord("-"))
        self._letters = np.array([vocab.byte_ids[b] for b in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  if b in vocab.byte_ids], dtype=np.int64)
        self._words = (vocab.vocab_size + 31) // 32
        self._vocab = vocab
        self._eos = frozenset(vocab.eos_token_ids)
        self.limits, self.measure_limits = limits, measure_limits
        self._shortest: weakref.WeakKeyDictionary[CompiledGrammar, int | None] = weakref.WeakKeyDictionary()
        self._longest_call: weakref.WeakKeyDictionary[CompiledGrammar, int | None] = weakref.WeakKeyDictionary()
        # the children of a mask depend only on the bits of the single-byte tokens, a few bytes of it (the
        # first 32 for byte-level BPE): that slice keys them, shared by every walk of every thread (a dict's
        # get and set are atomic; the tuples are never changed)
        low, high = (int(self._ids.min()), int(self._ids.max())) if self._ids.size else (0, -8)
        self._region = slice(low >> 3, (high >> 3) + 1)
        self._byte_at = (self._ids >> 3) - (low >> 3)  # each id's byte in the region and bit in that byte
        self._bit_at = (self._ids & 7).astype(np.uint8)
        self._children_of: dict[bytes, tuple[int, ...]] = {}
        # the tokenizer's encode costs ~30 µs a call, and the rows of one grammar mostly end alike
        # (lru_cache is thread-safe: measure() spells on compile threads while the loop thread does)
        self._spelled = lru_cache(maxsize=_SPELLED_CACHED)(partial(_spelled, vocab))
        self._scratch = threading.local()  # each thread's fill row: a search runs on one thread at a time

    def measure(self, compiled: CompiledGrammar) -> None:
        """Remember the length in tokens of the grammar's shortest answer (None: not found), for
        shortest_answer. Meant to run where the grammar was compiled, off the engine loop, before its
        requests get it."""
        if compiled in self._shortest:
            return
        # the calls first: wait_measured looks for the shortest answer
        self._longest_call[compiled] = self._longest_call_of(compiled)
        ids = self.ending_tokens(compiled.new_matcher(), empty_ok=False, limits=self.measure_limits,
                                 literals=compiled.closing_literals)
        self._shortest[compiled] = None if ids is None else len(ids)

    def _longest_call_of(self, compiled: CompiledGrammar) -> int | None:
        """Of the tool calls a structural tag may open first, the longest shortest one in tokens (its opening,
        its shortest arguments and end, EOS included): what an answer must have room for whichever tool the
        model picks. None where the grammar opens no call or none was measured."""
        lengths = []
        for group in compiled.call_openings:  # one call's openings, the longest first: one is measured
            for opening in group:
                matcher = compiled.new_matcher()
                if not matcher.accept_string(opening):
                    continue  # not a first call (a second call's begin, a section's begin that must come first)
                rest = self.ending_tokens(matcher, empty_ok=False, limits=self.measure_limits,
                                          literals=compiled.closing_literals)
                if rest is not None:
                    lengths.append(len(self._vocab.encode_text(opening)) + len(rest))
                break
        return max(lengths, default=None)

    def shortest_answer(self, compiled: CompiledGrammar) -> int | None:
        """The measured length of the grammar's shortest answer in tokens, EOS included; None if unknown
        (not found within the measure's limits, or not measured)."""
        return self._shortest.get(compiled)

    def longest_call(self, compiled: CompiledGrammar) -> int | None:
        """_longest_call_of as measured (None: no call measured, or not measured yet)."""
        return self._longest_call.get(compiled)

    def wait_measured(self, compiled: CompiledGrammar, timeout: float = 10.0) -> bool:
        """Whether the grammar was measured within `timeout` seconds (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while compiled not in self._shortest:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def ending_tokens(self, matcher: GrammarMatcher, *, empty_ok: bool = True, limits: SearchLimits | None = None,
                      literals: tuple[bytes, ...] = (), banned: frozenset[int] = frozenset()) -> list[int] | None:
        """Token ids that end the answer from the matcher's state: a short way to where the grammar may end,
        spelled in as few tokens as the tokenizer finds, then EOS unless the grammar terminated by itself.
        None when the search finds no way within its limits. The matcher is left as it was. `literals`: the
        grammar's literal runs (CompiledGrammar.closing_literals), tried whole where bytes cannot tell.
        `banned`: tokens the spelling may not use (a JSON const's `<|im_start|>` spelled as the special token,
        which the text then hides): with one the ending goes as the search's own bytes."""
        path = self.find(matcher, empty_ok=empty_ok, limits=limits, literals=literals)
        if path is None:
            return None
        ending = self._vocab.bytes_of(path)
        spelled = list(self._spelled(ending))
        if any(t in banned for t in spelled):
            spelled = path
        for ids in (spelled, path):
            terminated = self._accepted(matcher, ids)
            if terminated is not None:
                return ids if terminated else ids + [self._vocab.eos_token_ids[0]]
        return None

    def find(self, matcher: GrammarMatcher, *, empty_ok: bool = True, limits: SearchLimits | None = None,
             literals: tuple[bytes, ...] = ()) -> list[int] | None:
        """Token ids (single bytes where the grammar allows them) from the matcher's state to one where the
        grammar may end ([] when it may end now and `empty_ok`), or None. The matcher is left as it was."""
        if empty_ok and matcher.can_terminate():
            return []
        limits = limits or self.limits
        scratch, row = self._scratch_row()
        walk = _Walk(matcher, scratch, row, limits,
                     limits.max_fills, time.thread_time() + limits.max_seconds,
                     self._byte_ids(literals), self._byte_ids(tuple(closing_candidates(literals))))
        try:
            found = self._greedy(walk)
            return found if found is not None else self._breadth_first(walk)
        except _Exhausted:
            return None
        finally:
            walk.rollback(walk.depth)  # what a search cut short (deep in a look-ahead, say) had accepted

    def _scratch_row(self) -> tuple[torch.Tensor, np.ndarray]:
        """This thread's (1, words) int32 fill tensor and its row as numpy, made once per thread."""
        held = getattr(self._scratch, "row", None)
        if held is None:
            scratch = torch.empty((1, self._words), dtype=torch.int32)
            held = self._scratch.row = (scratch, scratch.numpy()[0])
        return held

    def _greedy(self, walk: _Walk) -> list[int] | None:
        """One way, taken step by step: a child that ends the grammar if there is one, else the first closer
        or ASCII child (in class order) whose mask differs from its parent's, else the first child.
        A fill or two a step; it finds the long endings (the remaining required fields of a JSON object)
        that the breadth-first search runs out of fills for."""
        path: list[int] = []
        words = walk.mask()
        # the masks of the last few steps: going back to one is a loop (`.` and a letter in an email's name);
        # not the whole way, where masks repeat without loops (after each of several fields' values)
        seen: deque[bytes] = deque([words], maxlen=_RECENT_MASKS)
        runs: dict[tuple[int, bytes], bool] = {}  # (closer, mask): whether writing it again closes something
        taken: deque[tuple[int, bytes]] = deque(maxlen=2 * _RECENT_MASKS)  # the last steps, (child, mask before)
        try:
            while len(path) < walk.limits.max_length:
                children = self._children(words)
                last = self._last_child(walk, children)
                if last is not None:
                    return path + [last]
                closing = self._closing_literal(walk)
                if closing is not None:
                    return path + closing
                hinted = self._hint(walk, words) or self._string_exit(walk, words)
                if hinted is not None:
                    path += hinted[0]
                    words = hinted[1]
                    continue
                here = words
                step = self._step(walk, children, here, seen, runs, taken)
                if step is None:
                    return None
                if step[1] == here:
                    # every child keeps the mask (inside `[a-z0-9.-]+\.[a-z]{2,4}` a dot and letters go on
                    # alike): look a few bytes ahead for a way that ends or lets a closer through
                    ahead = None
                    if here not in walk.looked and walk.look_budget > 0:
                        ahead, complete = self._look_ahead(walk, children, words)
                        if complete:  # a look that tried every way from here would find nothing here again
                            walk.looked.add(here)
                    if ahead is None and here not in walk.literals_tried:
                        walk.literals_tried.add(here)
                        ahead = self._literal_out(walk, here, seen)
                    if ahead is not None:
                        path += ahead
                        words = walk.mask()
                        seen.append(words)
                        continue
                child, words = step
                seen.append(words)
                taken.append((child, here))
                if not walk.accept(child):
                    return None
                path.append(child)
            return None
        finally:
            walk.rollback(walk.depth)

    @staticmethod
    def _last_child(walk: _Walk, children: tuple[int, ...]) -> int | None:
        """The first child after which the grammar may end, if any (no fills: an accept and a rollback each)."""
        for child in children:
            if walk.accept(child):
                ends = walk.matcher.can_terminate()
                walk.rollback(1)
                if ends:
                    return child
        return None

    def _hint(self, walk: _Walk, here: bytes) -> tuple[list[int], bytes] | None:
        """(its bytes' ids, the mask after it): the first of the matcher's ending hints the grammar takes
        whole here and that leads elsewhere (an XML value's closing tag out of its raw text); the matcher is
        left after it. None: no hint applies (the matcher as it was)."""
        for hint in walk.matcher.ending_hints:
            ids = [self._vocab.byte_ids.get(b) for b in hint]
            if None in ids:
                continue
            taken = walk.take(ids)
            if taken == len(ids):
                after = walk.mask()
                if after != here:
                    return ids, after
            if taken:
                walk.rollback(taken)
        return None

    def _string_exit(self, walk: _Walk, here: bytes) -> tuple[list[int], bytes] | None:
        """(its bytes' ids, the mask after it): the first of the grammar's literals that lets a JSON string
        close where it could not (`END` out of a value whose pattern is `^.*END$`, `done` out of
        `^(\\w+ )+done$`, where the masks of the loop's bytes alternate and no byte leads out); the matcher is
        left after it. Looked for once per mask of a walk, and only where the string cannot close here."""
        if self._quote is None or not walk.literals or here in walk.exits_tried or _allows(here, self._quote):
            return None
        walk.exits_tried.add(here)
        # one byte that lets the string close is shorter than any literal (`a` of `^[a-z]+$`, not another
        # property's `http`): _step takes it
        for child in self._children(here):
            if child in self._ascii and child not in (self._backslash, self._quote) and walk.accept(child):
                try:
                    closes = _allows(walk.mask(), self._quote)
                finally:
                    walk.rollback(1)
                if closes:
                    return None
        for ids in walk.literals:
            taken = walk.take(ids)
            if taken == len(ids):
                after = walk.mask()
                if _allows(after, self._quote):
                    return ids, after
            if taken:
                walk.rollback(taken)
        return None

    def _step(self, walk: _Walk, children: tuple[int, ...], here: bytes, seen: deque[bytes],
              runs: dict[tuple[int, bytes], bool], taken: deque[tuple[int, bytes]]) -> tuple[int, bytes] | None:
        """(child, its mask), the first in class order of: a closer that changes the mask, or that leaves it as
        it was but, written again, closes something (`)` deep in parentheses; not a `'` or `}` in an email
        address's name, which closes nothing however many are written); an ASCII child, not an opener, that
        goes somewhere this way has not been (`@` after `.` in a name, never back and forth between `.` and a
        letter; "not been" counts the last few steps only); an ASCII child that goes anywhere else, one not
        taken from this mask lately first; else the first child (a counted run: `0` in `\\d{4}`, rather than
        Unicode digits)."""
        first = spacing = moved = opening = None
        # an XML call's grammar (it has ending hints) allows whitespace between its tags that only lengthens the
        # way; elsewhere whitespace keeps its place in class order (SQL's keywords need their spaces)
        late_spaces = bool(walk.matcher.ending_hints)
        for child in children:
            if child not in self._ascii and first is not None:
                break
            if not walk.accept(child):
                continue
            try:
                after = walk.mask()
            finally:
                walk.rollback(1)
            if first is None:
                first = (child, after)
            if child == self._backslash:
                continue  # an escape only lengthens the way (in a JSON string `\"` then `\` again, for ever)
            if child in self._closers:
                if child == self._quote and after != here and not any(_allows(after, c) for c in self._way_out_ids):
                    # a quote after which neither a closer nor a separator may come opens a string that must
                    # hold text first (`"` before `http://`): a way in, taken only where no closer and no ASCII
                    # child to a new mask came first (`n` of `null` does), ahead of a way back
                    opening = opening or (child, after)
                    continue
                if after != here or self._closes_in_a_run(walk, child, here, runs):
                    return child, after
            elif child in self._ascii and after != here:
                if late_spaces and child in self._spaces:
                    if spacing is None or child == self._newline:
                        spacing = (child, after)
                elif after not in seen and child not in self._openers and not self._a_sign(child, after):
                    return child, after
                elif moved is None or ((moved[0], here) in taken and (child, here) not in taken
                                       and after == moved[1]):
                    # of twin ways back (to one mask), one not taken from here lately: `.` then `@` after a
                    # name's letters, where taking the first each time loops (`a.a.a.a`)
                    moved = (child, after)
        # there, whitespace only where nothing else goes anywhere, a newline first: the templates' own
        # separator, and the first byte of ends like `\n</function>`
        return opening or moved or spacing or first

    def _byte_ids(self, texts: tuple[bytes, ...] | list[bytes]) -> list[list[int]]:
        return [ids for ids in ([self._vocab.byte_ids.get(b) for b in text] for text in texts) if None not in ids]

    @staticmethod
    def _closing_literal(walk: _Walk) -> list[int] | None:
        """The first of the grammar's closing candidates (literals.closing_candidates) after which it may end
        (`</answer>` after `.*`); the matcher as it was. A few accepts: most fail at their first byte."""
        for ids in walk.closing:
            taken = walk.take(ids)
            ends = taken == len(ids) and walk.matcher.can_terminate()
            if taken:
                walk.rollback(taken)
            if ends:
                return ids
        return None

    @staticmethod
    def _literal_out(walk: _Walk, here: bytes, seen: deque[bytes]) -> list[int] | None:
        """Where no byte changes the mask and nothing a few bytes ahead leads out: the first of the grammar's
        literals it takes whole that leads to a mask the way has not seen lately (`</a>` out of `.*` in
        `<a>.*</a><b>.*</b>`); the matcher is left after it. None: none does (the matcher as it was)."""
        for ids in walk.literals:
            taken = walk.take(ids)
            if taken == len(ids):
                mask = walk.mask()
                if mask != here and mask not in seen:
                    return ids
            if taken:
                walk.rollback(taken)
        return None

    def _a_sign(self, child: int, after: bytes) -> bool:
        """Whether `child` is a number's minus sign (only digits may follow it): a later digit goes first, so a
        number the ending writes is `0`, not `-1` (a `-` in a name, where letters may follow, keeps its place)."""
        return child == self._minus and not tokens_allowed(_as_words(after), self._letters).any()

    def _look_ahead(self, walk: _Walk, children: tuple[int, ...], words: bytes) -> tuple[list[int] | None, bool]:
        """(a way, whether the look covered every way it tries). The way: 2 to `_LOOKAHEAD_DEPTH` bytes,
        shortest first, after which the grammar may end or takes a closer or separator it does not take here
        (`.aa` and then `"` for an email address in JSON, `/` after a URL's host); the matcher is left after
        it (None: no such way, the matcher as it was). Where every child keeps the mask, the mask cannot tell
        one state from another, so this walks with accepts alone (no fills): the ASCII children, one per class
        (one letter, one digit, each punctuation mark), `_LOOKAHEAD_WIDTH` of them, and `_LOOKAHEAD_PROBES`
        accepts at most, out of the walk's `_LOOKAHEAD_TOTAL`."""
        probes, classes = [], set()
        for child in children:
            # (not a backslash: the closer after it is an escape, not a way out)
            if child in self._ascii and child != self._backslash and self._class_of.get(child) not in classes:
                classes.add(self._class_of.get(child))
                probes.append(child)
        probes = probes[:_LOOKAHEAD_WIDTH]
        blocked = [c for c in self._way_out_ids if not _allows(words, c)]
        granted = min(_LOOKAHEAD_PROBES, walk.look_budget)
        budget = [granted]

        def below(depth: int) -> list[int] | None:
            for probe in probes:
                if budget[0] <= 0:
                    return None
                budget[0] -= 1
                if not walk.accept(probe):
                    continue
                found = self._way_out(walk, blocked, budget) if depth == 1 else below(depth - 1)
                if found is not None:
                    return [probe, *found]
                walk.rollback(1)
            return None

        try:
            for depth in range(2, _LOOKAHEAD_DEPTH + 1):
                found = below(depth)
                if found is not None:
                    return found, True
            return None, budget[0] > 0
        finally:
            walk.look_budget -= granted - max(0, budget[0])

    @staticmethod
    def _way_out(walk: _Walk, blocked: list[int], budget: list[int]) -> list[int] | None:
        """[] where the grammar may end here, [byte] for the first of `blocked` it takes (accepted: the
        matcher is left after it), else None."""
        if walk.matcher.can_terminate():
            return []
        for closer in blocked:
            budget[0] -= 1
            if walk.accept(closer):
                return [closer]
        return None

    @staticmethod
    def _closes_in_a_run(walk: _Walk, child: int, here: bytes, runs: dict[tuple[int, bytes], bool]) -> bool:
        """Whether `child`, which leaves the mask as it was, changes it when written up to `_MAX_REPEATS`
        times in a row (the last `)` of nested parentheses) rather than never (a `}` inside a string). Known
        answers are kept for the walk: each level of a nesting has the same mask, and asks once."""
        known = runs.get((child, here))
        if known is not None:
            return known
        accepted, closes = 0, False
        try:
            for _ in range(_MAX_REPEATS):
                if not walk.accept(child):
                    closes = accepted > 0
                    break
                accepted += 1
                if walk.mask() != here:
                    closes = True
                    break
        finally:
            walk.rollback(accepted)
        runs[(child, here)] = closes
        return closes

    def _breadth_first(self, walk: _Walk) -> list[int] | None:
        """The shortest way (within the limits), level by level."""
        level: list[list[int]] = [[]]
        while level and len(level[0]) < walk.limits.max_length:
            twins: set[bytes] = set()
            following: list[list[int]] = []
            for path in level[:walk.limits.max_width]:  # the level is in class order: the likeliest ways out first
                found = self._expand(walk, path, twins, following)
                if found is not None:
                    return found
            level = following
        return None

    def _expand(self, walk: _Walk, path: list[int], twins: set[bytes], following: list[list[int]]) -> list[int] | None:
        """Fill the mask after `path`; unless a twin of this level was expanded already, try each child: the
        way to an end if one is found, else the children go to `following`. A node's mask is filled only
        when it is expanded, so the level where the search ends costs no fills."""
        taken = 0
        try:
            for t in path:
                if not walk.accept(t):
                    # the mask allowed what the matcher then refuses (llguidance at a special token's spelling):
                    # a dead end, not a broken search (it failed the request with a 500)
                    return None
                taken += 1
            words = walk.mask()
            if words in twins:
                return None
            twins.add(words)
            children = self._children(words)
            last = self._last_child(walk, children)
            if last is not None:
                return path + [last]
            following.extend(path + [child] for child in children)
        finally:
            walk.rollback(taken)
        return None

    def _children(self, words: bytes) -> tuple[int, ...]:
        """The first and the last allowed single-byte token of each class, in class order (`(x+x+)+y` needs
        the `y` after its run of `x`); where the grammar allows no single byte (a backend that insists on
        whole tokens for forced text), its first allowed token. A walk asks this at every step, of masks
        whose byte-token bits repeat (each letter inside a string): they are worked out once, by that slice."""
        region = words[self._region]
        children = self._children_of.get(region)
        if children is None:
            children = self._byte_children(region)
            if len(self._children_of) >= _CHILDREN_CACHED:
                self._children_of.clear()  # a bound, not an LRU: a clear costs one recount per state
            self._children_of[region] = children
        if children:
            return children
        token = first_allowed(_as_words(words), self._eos)
        return () if token is None else (token,)

    def _byte_children(self, region: bytes) -> tuple[int, ...]:
        """_children's single-byte tokens, from the mask's byte-token region."""
        allowed = np.flatnonzero((np.frombuffer(region, dtype=np.uint8)[self._byte_at] >> self._bit_at) & 1)
        classes = self._classes[allowed]
        edge = classes[1:] != classes[:-1]  # between two allowed ids of different classes
        # the first and the last allowed id of each class's run: the ids with an edge before or after them
        picks = np.concatenate(([True], edge)) | np.concatenate((edge, [True]))
        return tuple(self._ids[allowed[picks[:allowed.size]]].tolist())

    @staticmethod
    def _accepted(matcher: GrammarMatcher, ids: list[int]) -> bool | None:
        """Whether the matcher terminates after `ids` (None: it rejects them). The matcher is left as it was."""
        if not ids:
            return matcher.is_terminated()
        taken = 0
        try:
            for t in ids:
                if not matcher.accept_token(t):
                    return None
                taken += 1
            return matcher.is_terminated()
        finally:
            if taken:
                matcher.rollback(taken)


def _spelled(vocab: TokenVocab, ending: bytes) -> tuple[int, ...]:
    """The ending in few tokens. It may start inside a character the answer began (its last bytes), and the
    tokenizer spells only whole text: those bytes go one by one, the rest as text. (A function of the
    vocabulary, kept by EndingSearch in an LRU cache.)"""
    for head in range(min(4, len(ending)) + 1):
        try:
            ending[head:].decode("utf-8")
            return tuple([vocab.byte_ids[b] for b in ending[:head]] + vocab.encode_bytes(ending[head:]))
        except (UnicodeDecodeError, KeyError, ValueError):
            continue
    return ()
