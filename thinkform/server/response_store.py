"""Stored responses of /v1/responses (`store: true`): what `previous_response_id` continues and
GET / DELETE /v1/responses/{id} and GET /v1/responses/{id}/input_items read. In memory, newest kept (by count and size): a server restart
forgets them, as SGLang's."""
from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the response object as the client got it
    conversation: list[dict[str, Any]]  # chat messages: the input (instructions left out) and the answer
    input_items: list[dict[str, Any]] = field(default_factory=list)  # the request's own input, as items with ids


# what one entry costs beyond its objects: the store's ordered-dict node, the (entry, size) pair, the id
_ENTRY_OVERHEAD = 256


def footprint(*roots: Any) -> int:
    """The bytes of memory the objects under `roots` take in CPython, each object once (a string the
    conversation and the input items share counts once): every dict, list and string with its header and
    table. A response's JSON is ~10x smaller than that (a 20-character message is ~50 bytes of JSON and ~400
    of dicts and strings), so counting JSON let a store "within 256 MiB" hold gigabytes."""
    seen: set[int] = set()
    total, pending = 0, list(roots)
    while pending:
        obj = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            pending.extend(obj.keys())
            pending.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            pending.extend(obj)
    return total


class ResponseStore:
    """The last `capacity` stored responses by id, within `max_bytes` of the memory they take (footprint:
    the response, its conversation and its input items; least recently stored or read dropped first): long
    agent conversations cannot grow the server's memory without end. A response larger than `max_bytes` on
    its own is not kept."""

    def __init__(self, capacity: int = 4096, max_bytes: int = 256 * 2**20) -> None:
        if capacity < 1 or max_bytes < 1:
            raise ValueError(f"capacity, max_bytes: must be >= 1, got {capacity}, {max_bytes}")
        self.capacity, self.max_bytes = capacity, max_bytes
        self._items: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, response_id: str, stored: StoredResponse) -> None:
        size = footprint(stored, vars(stored)) + _ENTRY_OVERHEAD
        with self._lock:
            old = self._items.pop(response_id, None)
            self._bytes -= old[1] if old else 0
            self._items[response_id] = (stored, size)
            self._bytes += size
            while self._items and (len(self._items) > self.capacity or self._bytes > self.max_bytes):
                self._bytes -= self._items.popitem(last=False)[1][1]

    @property
    def bytes(self) -> int:
        """The memory the kept responses take, as counted (see footprint)."""
        return self._bytes

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            entry = self._items.get(response_id)
            if entry is None:
                return None
            self._items.move_to_end(response_id)
            return entry[0]

    def delete(self, response_id: str) -> bool:
        with self._lock:
            entry = self._items.pop(response_id, None)
            self._bytes -= entry[1] if entry else 0
            return entry is not None

    def __len__(self) -> int:
        return len(self._items)
