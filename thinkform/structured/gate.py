"""ReasoningGate: free while the model thinks, grammar-constrained after the end marker.

One gate per request, between the sampler and the grammar matcher. The engine drives it like this,
once per decode step of the request:

    ids = gate.forced_tokens(num_generated)      # thinking budget / answer reserve
    if ids:                                      # no sampling this step
        append ids to the output; gate.accept_forced(ids)
    else:
        masked = gate.fill_bitmask(bitmask, row) # False: leave the row unmasked (reasoning, unconstrained)
        token = sample(...)
        append gate.accept(token) to the output  # usually [token]; may be replacement ids
    stop on EOS / stop strings only where gate.may_stop(); stop at once when gate.finished

Phases: OPEN (the model may open reasoning with the start marker) → REASONING (no mask) → ANSWER
(grammar mask) → FINISHED (grammar terminated). Markers are matched on the tokens' raw bytes, so a marker
spelled in several tokens works like one special token; the marker itself never reaches the grammar.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from thinkform.reasoning.markers import ReasoningMarkers, first_end_in_headers, first_of
from thinkform.structured.bitmask import CombinedKeeps, narrow_unless_empty, set_word_bits
from thinkform.structured.closing import ClosingRules, closing_reserve
from thinkform.structured.ending import EndingSearch
from thinkform.structured.vocab import TokenVocab

if TYPE_CHECKING:  # the gate only calls the protocol; importing backends here would load every library
    from thinkform.structured.backends.base import GrammarMatcher

_WHITESPACE = b" \t\r\n"


class Phase(str, Enum):
    OPEN = "open"
    REASONING = "reasoning"
    ANSWER = "answer"
    FINISHED = "finished"


class GateError(RuntimeError):
    """The engine fed the gate a token its mask forbade, or called it out of order."""


class AnswerGuard(Protocol):
    """A rule over the answer's bytes that trims the grammar's mask (runaway.py's NumberGuard,
    utf8.py's Utf8Guard)."""

    def reset(self) -> None: ...

    def observe(self, data: bytes) -> None: ...

    def keep(self) -> np.ndarray: ...  # packed words of the tokens allowed next, one array per state


def default_answer_reserve(max_new_tokens: int | None) -> int:
    """Tokens kept for the answer when reasoning would eat the whole budget: min(128, max_new_tokens // 4)."""
    return 0 if max_new_tokens is None else min(128, max_new_tokens // 4)


def initial_phase(markers: ReasoningMarkers | None,
                  chat_template_kwargs: Mapping[str, Any] | None = None) -> Phase:
    """Where the output starts: no reasoning parser or thinking off → ANSWER; the prompt opened
    reasoning → REASONING; otherwise the model may open it itself → OPEN."""
    if markers is None or not markers.thinking_enabled(chat_template_kwargs):
        return Phase.ANSWER
    return Phase.REASONING if markers.starts_in_reasoning(chat_template_kwargs) else Phase.OPEN


_CHAR_GRACE = 3  # tokens a forced end of reasoning waits for the character the last one began


def _ends_inside_char(data: bytes) -> bool:
    """Whether `data` ends inside a UTF-8 character (a lead byte without all its continuation bytes)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for its lead
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return back < need
    return False


@dataclass(slots=True)
class _Snapshot:
    """Gate state before one output token, so rollback can restore it."""

    phase: Phase
    tail: bytes
    reasoning_tokens: int
    open_tokens: int
    answer_len: int
    matcher_steps: int = 0  # matcher steps this token caused (0, or 1: accept_token / accept_string)


class ReasoningGate:
    def __init__(
        self,
        vocab: TokenVocab,
        markers: ReasoningMarkers | None,
        phase: Phase | str = Phase.ANSWER,
        matcher: GrammarMatcher | None = None,
        *,
        max_new_tokens: int | None = None,
        max_reasoning_tokens: int | None = None,
        answer_reserve_tokens: int | None = None,
        guards: Sequence[AnswerGuard] = (),
        closing: ClosingRules | None = None,
        closing_scope: Callable[[bytes], bool] | None = None,
        closing_reserve_tokens: int | None = None,
        ending: EndingSearch | None = None,
        ending_early: bool = True,
        ending_growth: int = 0,
        ending_first: int = 0,
        call_room: int = 0,
        between_calls: Callable[[bytes], bool] | None = None,
        ending_literals: tuple[bytes, ...] = (),
        ending_added: frozenset[int] | None = None,
        combined_keeps: CombinedKeeps | None = None,
        answer_check: Callable[[bytes], bool] | None = None,
        closing_in_string: Callable[[], bool] | None = None,
        closing_unfinished_only: bool = False,
    ) -> None:
        phase = Phase(phase)
        if markers is None and phase in (Phase.OPEN, Phase.REASONING):
            raise ValueError(f"phase: '{phase.value}' needs reasoning markers (a --reasoning-parser)")
        if phase is Phase.FINISHED:
            raise ValueError("phase: a request cannot start finished")
        self.vocab = vocab
        self.markers = markers
        self.matcher = matcher
        self.phase = phase
        self.max_new_tokens = max_new_tokens
        self.max_reasoning_tokens = max_reasoning_tokens
        self.answer_reserve_tokens = (default_answer_reserve(max_new_tokens)
                                      if answer_reserve_tokens is None else answer_reserve_tokens)
        self.reasoning_tokens = 0  # tokens generated in reasoning, markers included (as SGLang counts)
        self._guards = tuple(guards)
        self._combined_keeps = combined_keeps if combined_keeps is not None else CombinedKeeps()
        self._closing = closing  # JSON answers: steer to the end when the token budget runs out (no ending found)
        # where closing applies, judged from the answer so far (inside a tool call's arguments); None: everywhere
        self._closing_scope = closing_scope
        # closing applies only where the grammar may not end (a text-only structural tag: inside its tags, never in
        # the free text beside them)
        self._closing_unfinished_only = closing_unfinished_only
        self._closing_in_string = closing_in_string  # the answer is inside a JSON string (its JSON guard says)
        self._closing_reserve = (closing_reserve_tokens if closing_reserve_tokens is not None else
                                 closing_reserve(max_new_tokens) if max_new_tokens is not None else 0)
        self._ending = ending  # finds an ending to append whole when the token budget runs out
        # tokens left at which the ending is looked for: early enough for a long one (unless the grammar's
        # shortest answer fits in the reserve), last at the reserve
        # what an ending may grow by in one step (a list item or an object begun): about a whole answer
        self._ending_growth = ending_growth
        # tool calls: the tokens a call of the longest tool needs, and whether the answer stands between two
        # calls (where it may end): there it ends unless one more such call still fits
        self._call_room = call_room
        self._between_calls = between_calls
        self._ending_literals = ending_literals  # the grammar's literal runs, for the search (literals.py)
        # the added tokens text written for the model (jump-forward, an ending) may not hold: all but a tool
        # call's markup (ending_added); none where ending_added is None (not restricted)
        self.forced_banned = vocab.added_ids - ending_added if ending_added is not None else frozenset()
        self._ending_points = [self._closing_reserve * k for k in ((4, 2, 1) if ending_early else (1,))
                               if self._closing_reserve > 0]
        if self._ending_points and ending_first > self._ending_points[0]:
            # a grammar whose shortest answer is longer than that is first looked at where it still fits
            self._ending_points.insert(0, ending_first)
        self.closed_by_budget = False  # this answer's end was written (or steered) because the budget ran out
        self._answer_check = answer_check  # schema keywords the grammar could not enforce, checked at the end
        self._checked: tuple[int, bool] | None = None  # (answer length, verdict) of the last check
        self._eos = frozenset(vocab.eos_token_ids)
        self._tail = b""  # REASONING: last bytes that may begin an end marker; OPEN: bytes that may be the start
        self._open_tokens = 0  # tokens spent in OPEN on a possible start marker
        self._answer = bytearray()  # answer bytes so far (the grammar's input)
        self._spelling_start = False  # appending the start marker's tokens for the model
        self._history: list[_Snapshot] = []
        self._endings: dict[int, list[int] | None] = {}  # the endings found, by the tokens taken before them
        self._kept: dict[int, list[int]] = {}  # endings from before a step that still end the answer (_kept_ending)
        self._watched: int | None = None  # the length of the last ending found that fitted: steps are checked
        # a plain grammar's (JSON, regex, EBNF) ending is never appended while the model's own answer may still fit:
        # where a look would append it, the model writes on and every step is checked from there (ending_instead);
        # appended at the look, it replaced answers that fitted (`"score": 987654, "ok": true` came back
        # `"score": 0, "ok": false` with 24 tokens unused). Calls in free text (a structural tag's, tools under
        # auto) keep the look's append: a call the model begins there cannot be undone back to its trigger, and
        # half a call is no answer (a pythonic call under required is one grammar, and waits)
        self._ending_may_wait = closing_scope is None and between_calls is None and not closing_unfinished_only
        self._ending_waits = False  # an ending that fits is known and every step is checked (no steering then)
        # a family with header ends (gpt-oss's bare ` to=functions.`, an end only in a message's header): whether
        # the bytes so far end inside a header, and (token index, the state before it) where a token changed it
        self._header_search: tuple[Any, ...] | None = None
        self._in_header = phase is Phase.REASONING  # the template opened the message: its header comes first
        self._header_flips: list[tuple[int, bool]] = []
        if markers is not None:
            self._start = markers.start.encode()
            self._ends = {end.encode(): vocab.encode_text(end) for end in markers.ends}
            # answer ends the grammar reads (its answer begins with them)
            self._grammar_ends = frozenset(end.encode() for end in markers.answer_ends
                                           if markers.grammar_reads_answer_ends)
            self._longest_end = max(len(end) for end in self._ends)
            self._start_ids = vocab.encode_text(markers.start)
            self._end_ids = self._ends[markers.end.encode()]
            self._close_ids = vocab.encode_text(markers.close_text)
            # a marker spelled by one token never appears inside the answer: `text.split("</think>")`
            # must find the real end of the reasoning
            self._marker_tokens = tuple(ids[0] for ids in (self._start_ids, self._end_ids) if len(ids) == 1)
            if markers.header_delimiters is not None:
                self._header_search = (tuple(end.encode() for end in markers.anywhere_ends),
                                       tuple(end.encode() for end in markers.header_ends),
                                       *(d.encode() for d in markers.header_delimiters))
                # only such a family pays for following its headers
                self._reasoning_bytes = self._reasoning_bytes_in_headers  # type: ignore[method-assign]
        else:
            self._marker_tokens = ()
        # padding rows never, EOS only where the grammar ends, a one-token marker never: in the answer and where
        # it may begin (OPEN, whose start marker's first token is set apart: it opens the reasoning; audit 29: a
        # lone `</think>` became the answer)
        self._answer_keep = vocab.keep_mask(self._eos | frozenset(self._marker_tokens))
        self._ending_keep = vocab.keep_mask(frozenset(self._marker_tokens))  # the same and EOS: the grammar may end

    # --- state ----------------------------------------------------------------------------------

    @property
    def constrained(self) -> bool:
        return self.matcher is not None

    @property
    def finished(self) -> bool:
        """The grammar terminated: the engine stops the request with finish_reason 'stop'."""
        return self.phase is Phase.FINISHED

    @property
    def guards(self) -> tuple[AnswerGuard, ...]:
        """The answer guards in use (reset and replayed over the remaining answer on rollback)."""
        return self._guards

    @property
    def in_reasoning(self) -> bool:
        return self.phase is Phase.REASONING

    @property
    def constraint_satisfied(self) -> bool | None:
        """True when the answer is a complete sentence of the grammar, False when cut short, None when
        unconstrained."""
        if self.matcher is None:
            return None
        complete = self.phase is Phase.FINISHED or (self.phase is Phase.ANSWER and self._grammar_may_end())
        return complete and self._answer_holds()

    def _answer_holds(self) -> bool:
        """The complete answer also satisfies what the grammar could not enforce (checked once per length)."""
        if self._answer_check is None:
            return True
        if self._checked is None or self._checked[0] != len(self._answer):
            self._checked = (len(self._answer), self._answer_check(bytes(self._answer)))
        return self._checked[1]

    def may_stop(self) -> bool:
        """Whether EOS / stop strings / stop token ids may end the request now."""
        if self.matcher is None or self.phase is Phase.FINISHED:
            return True
        return self.phase is Phase.ANSWER and self._grammar_may_end()

    def jump_forward(self) -> bytes:
        """Bytes the grammar forces next while answering (b'' otherwise)."""
        if self.matcher is None or self.phase is not Phase.ANSWER:
            return b""
        return self.matcher.find_jump_forward_bytes()

    def _grammar_may_end(self) -> bool:
        # EOS is never the first answer token: an empty answer is not an answer
        return bool(self._answer) and self.matcher is not None and self.matcher.can_terminate()

    # --- mask -----------------------------------------------------------------------------------

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> bool:
        """Write the allowed next tokens into bitmask[row]; False means: do not mask this row."""
        matcher = self.matcher_to_fill()
        if matcher is not None:
            matcher.fill_bitmask(bitmask, row)
        return self.finish_bitmask(bitmask, row)

    def matcher_to_fill(self) -> GrammarMatcher | None:
        """The matcher whose mask this row needs now (the engine fills a step's rows in one batch), or None."""
        return self.matcher if self.phase in (Phase.OPEN, Phase.ANSWER) else None

    def finish_bitmask(self, bitmask: torch.Tensor | np.ndarray, row: int) -> bool:
        """After the matcher filled bitmask[row] (see matcher_to_fill): markers, EOS, padding and the
        answer guards; False means: do not mask this row. `bitmask` may be the buffer's numpy view (the
        engine's, made once a step: a tensor's costs ~0.6 µs a row)."""
        if self.matcher is None or self.phase is Phase.REASONING:
            return False
        words = (bitmask if isinstance(bitmask, np.ndarray) else bitmask.numpy())[row]
        if self.phase is Phase.FINISHED:
            words[:] = 0
            set_word_bits(words, self._eos)
            return True
        if self.phase is Phase.OPEN:
            words &= self._answer_keep
            set_word_bits(words, (self._start_ids[0],))
            self._narrow(words, None)
            return True
        # ANSWER: no EOS before the grammar may end, no reasoning marker inside the answer
        may_end = self._grammar_may_end()
        if may_end:
            set_word_bits(words, self._eos)
        self._narrow(words, self._ending_keep if may_end else self._answer_keep)
        if self.closing:
            self.closed_by_budget = True
            self._closing.restrict(words, may_end, self._closing_in_string is not None and self._closing_in_string())
        return True

    def _narrow(self, words: np.ndarray, rule: np.ndarray | None) -> None:
        """words &= `rule` (the gate's own, always), then each guard keeps its tokens unless that leaves
        none. All of them ANDed together (cached per combination of states) narrow the row at once; only a
        result with no token left needs them one by one."""
        guards = tuple([guard.keep() for guard in self._guards])
        keeps = guards if rule is None else (rule, *guards)
        if not keeps or self._combined_keeps(keeps).narrow(words):
            return
        # the gate's rule too, unless it leaves nothing: a grammar that spells a marker's text only as the marker
        # (llguidance writes `</think>` in a JSON value as that token) gets it; no token at all failed the request
        for keep in keeps:
            narrow_unless_empty(words, keep)

    @property
    def closing(self) -> bool:
        """The answer is being steered to its end: the tokens left are within the closing reserve."""
        if self._closing is None or self.phase is not Phase.ANSWER or self.max_new_tokens is None:
            return False
        if self.max_new_tokens - len(self._history) > self._closing_reserve or self._ending_waits:
            return False
        return self._in_closing_scope()

    def _in_closing_scope(self) -> bool:
        if self._closing_unfinished_only and self._grammar_may_end():
            return False
        return self._closing_scope is None or self._closing_scope(bytes(self._answer))

    # --- tokens ---------------------------------------------------------------------------------

    def accept(self, token_id: int) -> list[int]:
        """Take the sampled token; returns the ids to append to the output (usually [token_id]).

        Under a constraint: EOS while reasoning becomes the close marker (the answer then follows); in
        OPEN, the start marker's first token becomes the whole start marker; a token carrying text after
        the end marker that the grammar rejects becomes the tokens that complete the marker.
        """
        if self.phase is Phase.FINISHED:
            raise GateError(f"token {token_id} after the constrained answer finished")
        if self.matcher is not None:
            if token_id in self._eos and self.phase is Phase.REASONING:
                return self._advance(list(self._close_ids))
            if token_id in self._eos and self.phase is Phase.OPEN:
                return self._advance(self._start_ids + self._close_ids)
            if self.phase is Phase.OPEN and token_id == self._start_ids[0]:
                self._spelling_start = True
                try:
                    return self._advance(list(self._start_ids))
                finally:
                    self._spelling_start = False
        snapshot = self._push()
        try:
            if self._step(token_id, snapshot):
                return [token_id]
        except GateError:
            self._pop_and_restore()
            taken = self._taken_part(token_id)
            if taken is None:
                raise
            return self._advance(taken)
        self._pop_and_restore()  # the rejected answer text left the matcher unchanged
        return self._advance(self._marker_completion(token_id))

    def _taken_part(self, token_id: int) -> list[int] | None:
        """Ids of the longest whole-character start of a token the grammar took in its mask and then refused
        (audit 31: xgrammar's mask allows `b' \\xe0'` under `a *[bc]`, its matcher refuses it, and the request
        failed): the answer goes on with what of it the grammar takes (` `), else None."""
        if self.phase is not Phase.ANSWER or token_id in self._eos:
            return None
        data = self.vocab.token_bytes[token_id]
        for cut in range(len(data) - 1, 0, -1):
            try:
                data[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if self._grammar_would_take(data[:cut]):
                return self.vocab.encode_bytes(data[:cut])
        return None

    def forced_tokens(self, num_generated: int) -> list[int]:
        """Ids the engine must append instead of sampling (thinking budget, answer reserve, the ending of an
        answer near its budget), else []."""
        if self.phase is Phase.ANSWER:
            return self._forced_ending(num_generated)
        if self.phase is not Phase.REASONING or self.markers is None:
            return []
        over_budget = self.max_reasoning_tokens is not None and self.reasoning_tokens >= self.max_reasoning_tokens
        left = None if self.max_new_tokens is None else self.max_new_tokens - num_generated
        # the reserve is the answer's: the marker's own tokens come on top (a 7-token marker cut short by
        # max_new_tokens left no answer at all)
        # a reserve of 0 keeps nothing: reasoning may run to max_new_tokens (SGLang's and vLLM's way)
        reserve = self.answer_reserve_tokens
        short = None if left is None else reserve + len(self._close_ids) - left  # >= 0: the reserve is reached
        if not over_budget and not (reserve > 0 and short is not None and short >= 0):
            return []
        # a character the last tokens began is finished first, up to _CHAR_GRACE tokens past the budget or into
        # the reserve: reasoning cut inside one ends in U+FFFD
        past = max(self.reasoning_tokens - self.max_reasoning_tokens if over_budget else 0, short or 0)
        if _ends_inside_char(self._tail) and past < _CHAR_GRACE and (left is None or left > len(self._close_ids)):
            return []
        return list(self._close_ids)

    def _forced_ending(self, num_generated: int) -> list[int]:
        """A short ending of the grammar and EOS (EOS alone where the grammar may end already), looked for
        when the tokens left fall to 4×, 2× and 1× the closing reserve. One found early is not appended at
        once: the model writes on, the ending is looked for again halfway to where it would stop fitting (its
        length and half of it for growth), and appended there; at the last point, whenever it fits. A plain
        grammar's is not appended there either (_ending_may_wait): the model writes on, each step checked."""
        if self._ending is None or not self._ending_points or self.matcher is None or self.max_new_tokens is None \
                or self._ending_waits:
            return []
        left = self.max_new_tokens - num_generated
        if self._call_room and left <= self._closing_reserve + self._call_room:
            ending = self._between_calls_ending(left)
            if ending is not None:
                return ending
        if left > self._ending_points[0] or not self._in_closing_scope():
            return []
        while len(self._ending_points) > 1 and left <= self._ending_points[1]:
            del self._ending_points[0]  # passed by a jump: only the nearest point counts
        del self._ending_points[0]
        later = self._ending_points[0] if self._ending_points else 0
        ids = self._fitted(self._ending_now(), left)
        if ids is None:
            return []
        # the ending may grow before the next look (a list item or a nested object opened): it waits while
        # it would still fit with half its length, or the grammar's shortest answer (up to 32), to spare, and
        # is looked for again halfway there, so growth is seen while there is room for it
        self._watched = len(ids)  # from here on the steps are checked (ending_instead)
        need = self._need(len(ids))
        if self._ending_points and need < left:
            again = max(need, (left + need) // 2)
            if again > later:
                self._ending_points.insert(0, again)
            return []
        if self._ending_may_wait:
            self._ending_waits = True  # from here every step is checked (ending_instead)
            return []
        self.closed_by_budget = True
        return ids

    def ending_instead(self, taken: Sequence[int], num_generated: int) -> list[int] | None:
        """The ids of one step (a sampled token and the text the grammar forces after it, taken already):
        where the answer's ending no longer fits the tokens left after them, the step is undone and the
        ending from before it is taken instead, and returned; None: the step stands. Checked, once a look
        found an ending that fits, on each step of forced text and each near that ending's margin, and
        before that on a step that reaches the next look: one step's forced text took a JSON answer from `{`
        with 7 tokens left to `{"ftueTracking": [` with 1, one key grew an ending from 18 tokens to 41, and
        the answers were cut off. `num_generated`: the output's tokens before the step."""
        if self._ending is None or self.matcher is None or self.max_new_tokens is None \
                or self.phase is not Phase.ANSWER or not taken:
            return None
        left = self.max_new_tokens - num_generated - len(taken)
        watched = self._watched is not None
        # a one-token step grows the ending by little (the looks keep a margin for that) until it nears the
        # end of that margin; forced text (a key and what it requires) may grow it by a whole object. Once the
        # ending waits (_ending_may_wait) every step is checked: one token may commit to a long piece (`y` where
        # the regex goes on `[0-9]{30};`)
        if watched and not self._ending_waits and len(taken) == 1 \
                and left > self._need(self._watched):  # type: ignore[arg-type]
            return None
        if not watched and (not self._ending_points or left > self._ending_points[0]):
            return None
        if not self._in_closing_scope() and self._grammar_may_end():  # text where the answer may end: nothing begun
            return None
        after = self._kept_ending(len(taken), left) or self._ending_now()
        # none found from there: undone only where the ending must be written now (the reserve, or a waiting
        # ending's steps); further out the model writes on, as a look there lets it. Room for the ending's EOS is
        # kept: an answer the ending completes ends "stop"
        if self._fitted(after, left, False) is not None:
            self._watched = len(after)  # type: ignore[arg-type]
            return None
        if after is None and left > self._closing_reserve and not self._ending_waits:
            return None
        self.rollback(len(taken))
        # from text where the answer may end, outside closing's scope (a tool call's, a structural tag's), the
        # step began a call (or its trigger) that cannot fit: the answer ends in that text instead (a half call
        # is no answer). Where closing does not reach (a call's name the model is writing) the step stands: no
        # call is written that the model did not begin
        usable = self._in_closing_scope() or self._grammar_may_end()
        before = self._fitted(self._ending_now(), left + len(taken)) if usable else None
        if before is None and usable:  # the search's is longer than one kept here, which does fit
            before = self._fitted(self._kept.get(len(self._history)), left + len(taken))
        self._advance(list(before if before is not None else taken))
        if before is None:
            return None
        self.closed_by_budget = True
        return before

    def _kept_ending(self, steps: int, left: int) -> list[int] | None:
        """The ending from before a step of `steps` tokens, where it still ends the answer from here and fits
        `left` (a string or a number the model goes on writing: most steps): proof that an ending fits, without a
        search; else None (searched: a shorter one may have come within reach). It is kept apart, and written only
        where a search from here finds none that fits: from here its first bytes may go on with the model's item
        instead of closing it (`1e99` + `0}` is `1e990}`, `1,22,3` + `0` is `1,22,30`), which a search does not."""
        at = len(self._history)
        before = self._endings.get(at - steps) or self._kept.get(at - steps)
        if at in self._endings or not before or self._fitted(before, left, False) is None \
                or not self._still_ends(before):
            return None
        self._kept[at] = before
        while len(self._kept) > 2:
            del self._kept[next(iter(self._kept))]
        return before

    def _still_ends(self, ids: list[int]) -> bool:
        """Whether the grammar takes `ids` from here and ends with them (the matcher left as it was)."""
        taken = 0
        try:
            for token_id in ids:
                if token_id in self._eos:
                    return token_id == ids[-1] and self.matcher.can_terminate()
                if not self.matcher.accept_token(token_id):
                    return False
                taken += 1
            return self.matcher.is_terminated()
        finally:
            if taken:
                self.matcher.rollback(taken)

    def _need(self, length: int) -> int:
        """The tokens a found ending of `length` waits for: its length and a margin for growth (half of it, or
        the grammar's shortest answer for one that repeats)."""
        return length + max(4, length // 2, self._ending_growth)

    def _ending_now(self) -> list[int] | None:
        """The ending from the answer as it stands, searched once there (a step's check and a look share it;
        the last two kept: a step's check falls back to the one before it)."""
        at = len(self._history)
        if at not in self._endings:
            self._endings[at] = self._ending.ending_tokens(  # type: ignore[union-attr]
                self.matcher, empty_ok=bool(self._answer), literals=self._ending_literals, banned=self.forced_banned)
            while len(self._endings) > 2:
                del self._endings[next(iter(self._endings))]
        return self._endings[at]

    def _fitted(self, ids: list[int] | None, left: int, eos_may_go: bool = True) -> list[int] | None:
        """The ending as far as `left` tokens hold it (`eos_may_go`: its EOS may go, the answer is complete at
        max_new_tokens all the same, though its finish reads "length"), else None."""
        if ids is None:
            return None
        if not ids:
            return []
        slack = 1 if eos_may_go and ids[-1] in self._eos else 0
        if len(ids) > left + slack:
            return None
        return list(ids[:left]) or None  # (nothing: no room for any of it)

    def _between_calls_ending(self, left: int) -> list[int] | None:
        """Between two tool calls, where the answer may end, with too few tokens left for one more call of the
        longest tool and its closing: the answer's ending (EOS, or the section's end) now, looked at each token
        there (a call begun without room ran into max_new_tokens). None elsewhere."""
        if self._between_calls is None or not self._between_calls(bytes(self._answer)) or not self._in_closing_scope():
            return None
        ids = self._ending.ending_tokens(self.matcher, empty_ok=True, literals=self._ending_literals,
                                         banned=self.forced_banned)
        if ids is None or len(ids) > left:
            return None
        self.closed_by_budget = True
        return ids

    def complete_without(self, last_ids: Sequence[int], kept: bytes) -> bool:
        """Whether the answer with `last_ids` (its last tokens taken) replaced by the bytes `kept` is complete: a
        stop string may cut the text there. The tokens are taken back, the grammar asked, and the same tokens
        taken again from the same state: the gate ends as it was."""
        self.rollback(len(last_ids))
        try:
            if self.phase not in (Phase.OPEN, Phase.ANSWER):  # they hold the end marker: the cut may be reasoning
                return False
            if not kept:  # an empty answer is no answer
                return self.may_stop()
            try:
                text = kept.decode("utf-8")
            except UnicodeDecodeError:
                return False
            if not self.matcher.accept_string(text):  # type: ignore[union-attr]
                return False
            complete = self.matcher.can_terminate()  # type: ignore[union-attr]
            self.matcher.rollback(1)  # type: ignore[union-attr]
            return complete
        finally:
            self._advance(list(last_ids))

    def accept_forced(self, token_ids: Sequence[int]) -> None:
        """The engine appended `token_ids` (from forced_tokens) to the output."""
        self._advance(list(token_ids))

    def reasoning_tokens_of(self, count: int) -> int:
        """Reasoning tokens among the first `count` tokens taken (those the output holds: a logprob
        request's forced ids wait for their steps after the gate took them)."""
        return self._history[count].reasoning_tokens if count < len(self._history) else self.reasoning_tokens

    def rollback(self, num_tokens: int) -> None:
        """Undo the last num_tokens output tokens, across the end marker if need be."""
        if num_tokens < 0 or num_tokens > len(self._history):
            raise GateError(f"rollback: cannot undo {num_tokens} tokens, {len(self._history)} accepted")
        if num_tokens == 0:
            return
        steps = sum(s.matcher_steps for s in self._history[-num_tokens:])
        answer_len = len(self._answer)
        snapshot = self._history[-num_tokens]
        del self._history[-num_tokens:]
        self._endings = {at: ids for at, ids in self._endings.items() if at <= len(self._history)}
        self._kept = {at: ids for at, ids in self._kept.items() if at <= len(self._history)}
        self._restore(snapshot)
        if steps and self.matcher is not None:
            self.matcher.rollback(steps)
        if len(self._answer) != answer_len:
            # guards have no rollback of their own: replay the answer that remains
            for guard in self._guards:
                guard.reset()
                guard.observe(bytes(self._answer))

    # --- internals ------------------------------------------------------------------------------

    def _advance(self, token_ids: list[int]) -> list[int]:
        for token_id in token_ids:
            if self.phase is Phase.FINISHED:
                raise GateError(f"token {token_id} after the constrained answer finished")
            if not self._step(token_id, self._push()):
                self._pop_and_restore()
                raise GateError(f"the grammar rejected the answer text of token {token_id}")
        return token_ids

    def _push(self) -> _Snapshot:
        snapshot = _Snapshot(self.phase, self._tail, self.reasoning_tokens, self._open_tokens, len(self._answer))
        self._history.append(snapshot)
        return snapshot

    def _pop_and_restore(self) -> None:
        self._restore(self._history.pop())

    def _restore(self, snapshot: _Snapshot) -> None:
        self.phase = snapshot.phase
        self._tail = snapshot.tail
        self.reasoning_tokens = snapshot.reasoning_tokens
        self._open_tokens = snapshot.open_tokens
        del self._answer[snapshot.answer_len:]
        # the header state before the token restored (the snapshot's index is the history's length now)
        while self._header_flips and self._header_flips[-1][0] >= len(self._history):
            self._in_header = self._header_flips.pop()[1]

    def _step(self, token_id: int, snapshot: _Snapshot) -> bool:
        """Advance by one output token; False when the grammar rejects the text after the end marker."""
        data = self.vocab.token_bytes[token_id]
        if self.phase is Phase.OPEN:
            return self._step_open(token_id, data, snapshot)
        if self.phase is Phase.REASONING:
            self.reasoning_tokens += 1
            return self._reasoning_bytes(data, snapshot)
        return self._answer_token(token_id, data, snapshot)

    def _step_open(self, token_id: int, data: bytes, snapshot: _Snapshot) -> bool:
        pending = self._tail + data
        head = pending.lstrip(_WHITESPACE)
        if head.startswith(self._start):
            self.phase = Phase.REASONING
            self.reasoning_tokens += self._open_tokens + 1
            self._open_tokens, self._tail = 0, b""
            return self._reasoning_bytes(head[len(self._start):], snapshot)
        if (self.matcher is None or self._spelling_start) and self._start.startswith(head):
            self._tail = pending  # maybe the start marker, spelled over several tokens
            self._open_tokens += 1
            return True
        # Anything else is the answer; under a constraint the first token decides (the mask allowed only
        # the grammar's tokens and the start marker's first token).
        self.phase = Phase.ANSWER
        self._open_tokens, self._tail = 0, b""
        if self.matcher is None:
            self._answer += pending
            return True
        return self._answer_token(token_id, data, snapshot)

    def _reasoning_bytes(self, data: bytes, snapshot: _Snapshot) -> bool:
        buf = self._tail + data
        hit = first_of(buf, self._ends)
        if hit is None:
            keep = self._longest_end - 1
            self._tail = buf[-keep:] if keep else b""
            return True
        return self._reasoning_ended(buf, hit, snapshot)

    def _reasoning_bytes_in_headers(self, data: bytes, snapshot: _Snapshot) -> bool:
        """`_reasoning_bytes` for a family with header ends: those end the reasoning only inside a header."""
        buf = self._tail + data
        hit, in_header = first_end_in_headers(buf, *self._header_search, self._in_header, len(self._tail))
        if hit is None:
            if in_header is not self._in_header:
                self._header_flips.append((len(self._history) - 1, self._in_header))  # this token's snapshot is last
                self._in_header = in_header
            keep = self._longest_end - 1
            self._tail = buf[-keep:] if keep else b""
            return True
        return self._reasoning_ended(buf, hit, snapshot)

    def _first_end(self, buf: bytes) -> tuple[int, bytes] | None:
        """The first end marker in `buf` (the tail and a token's bytes), as `_reasoning_bytes` finds it."""
        if self._header_search is None:
            return first_of(buf, self._ends)
        return first_end_in_headers(buf, *self._header_search, self._in_header, len(self._tail))[0]

    def _reasoning_ended(self, buf: bytes, hit: tuple[int, bytes], snapshot: _Snapshot) -> bool:
        """An end marker at `hit` in `buf`: the answer begins, with what of `buf` follows it."""
        self.phase = Phase.ANSWER
        self._tail = b""
        rest = buf[hit[0] + len(hit[1]):]
        # an answer end heads the answer: where the grammar's answer begins with it too (Kimi-K2's call
        # section) the grammar takes it; else (gpt-oss: the grammar begins after a call's header; a JSON
        # schema rejects it) only what follows it
        head = hit[1] + rest
        if hit[1] in self._grammar_ends and self.matcher is not None:
            if self._grammar_takes(head, snapshot):
                self._took_answer(head)
                return True
            if rest and self._grammar_would_take(hit[1]):
                # the tag, but not the text glued to it (`>oops` where a call must follow): the token becomes
                # the tag's own (accept's marker completion); the text alone, taken under `auto` as free text
                # before the calls, would have left the calls after it unconstrained
                return False
        return self._answer_text(rest, snapshot) if rest else True

    def _answer_text(self, data: bytes, snapshot: _Snapshot) -> bool:
        """Text after the end marker inside the same token: the grammar takes it as a string."""
        if self.matcher is not None and not self._grammar_takes(data, snapshot):
            return False
        self._took_answer(data)
        return True

    def _grammar_takes(self, data: bytes, snapshot: _Snapshot) -> bool:
        """The matcher accepts `data` as one step (left as it was when it does not)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        if not self.matcher.accept_string(text):
            return False
        snapshot.matcher_steps = 1
        return True

    def _grammar_would_take(self, data: bytes) -> bool:
        """Whether the matcher accepts `data` as one step; it is left as it was either way."""
        if not self.matcher.accept_string(data.decode("utf-8", errors="replace")):
            return False
        self.matcher.rollback(1)
        return True

    def _answer_token(self, token_id: int, data: bytes, snapshot: _Snapshot) -> bool:
        if self.matcher is None:
            self._answer += data
            return True
        if token_id in self._eos:
            accepted = self.matcher.accept_token(token_id)
            # the backend may not know every EOS id of the model; the grammar's own verdict decides
            if not accepted and not self._grammar_may_end():
                raise GateError(f"EOS token {token_id} where the grammar cannot end")
            snapshot.matcher_steps = int(accepted)
            self.phase = Phase.FINISHED
            return True
        if not self.matcher.accept_token(token_id):
            raise GateError(f"token {token_id} ({data!r}) is not allowed by the grammar here")
        snapshot.matcher_steps = 1
        self._took_answer(data)
        return True

    def _took_answer(self, data: bytes) -> None:
        self._answer += data
        for guard in self._guards:
            guard.observe(data)
        if self.matcher is not None and self.matcher.is_terminated():
            self.phase = Phase.FINISHED

    def _marker_completion(self, token_id: int) -> list[int]:
        """Ids that say what `token_id` said up to the end of the end marker, and nothing after it."""
        if self.phase is Phase.OPEN:  # start and end marker in one token: an empty reasoning block
            return self._start_ids + self._end_ids
        buf = self._tail + self.vocab.token_bytes[token_id]
        idx, end = self._first_end(buf) or (-1, b"")
        if idx >= len(self._tail):  # the whole marker is in this token: keep the reasoning before it
            before = buf[len(self._tail):idx]
            return (self.vocab.encode_bytes(before) if before else []) + list(self._ends[end])
        return self.vocab.encode_bytes(end[len(self._tail) - idx:])

