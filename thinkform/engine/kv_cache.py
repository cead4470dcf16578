"""Paged KV cache: a pool of fixed-size pages, block tables per sequence, and prefix sharing by page hash.

A full page is identified by the hash of (parent page hash, its tokens). Pages whose last owner left stay
cached (evictable, LRU) until their memory is needed, so a repeated system prompt, a repeated schema prompt
or the n samples of one prompt are prefilled once.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import torch


class KVCache:
    """The tensors: k and v of shape [num_layers, (num_pages + 1) * page_size, num_kv_heads, head_dim].

    The last page belongs to no sequence: padding tokens of a CUDA-graph step write their k/v there."""

    def __init__(self, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (num_layers, (num_pages + 1) * page_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.page_size = page_size
        self.num_pages = num_pages
        self.scratch_slot = num_pages * page_size

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def page_hash(parent: int | None, tokens: tuple[int, ...]) -> int:
    return hash((parent, tokens))


@dataclass
class PrefixMatch:
    pages: list[int]
    hashes: list[int]

    @property
    def num_pages(self) -> int:
        return len(self.pages)


class PagePool:
    """Allocates pages; refcounts shared pages; keeps released full pages findable by hash until evicted."""

    def __init__(self, num_pages: int, page_size: int, prefix_caching: bool = True) -> None:
        self.num_pages = num_pages
        self.page_size = page_size
        self.prefix_caching = prefix_caching
        self.free: deque[int] = deque(range(num_pages))
        self.refcount = [0] * num_pages
        self.hash_of: list[int | None] = [None] * num_pages
        self.page_of_hash: dict[int, int] = {}
        self.evictable: OrderedDict[int, None] = OrderedDict()  # refcount 0 but cached, LRU first

    @property
    def token_capacity(self) -> int:
        """Tokens the pool holds when every page is in use."""
        return self.num_pages * self.page_size

    @property
    def num_available(self) -> int:
        return len(self.free) + len(self.evictable)

    @property
    def num_used(self) -> int:
        return self.num_pages - self.num_available

    def match_prefix(self, tokens: list[int]) -> PrefixMatch:
        """Longest run of cached full pages at the start of tokens, leaving at least one token to compute."""
        match = PrefixMatch([], [])
        if not self.prefix_caching:
            return match
        parent: int | None = None
        usable = (len(tokens) - 1) // self.page_size
        for i in range(usable):
            h = page_hash(parent, tuple(tokens[i * self.page_size:(i + 1) * self.page_size]))
            page = self.page_of_hash.get(h)
            if page is None:
                break
            match.pages.append(page)
            match.hashes.append(h)
            parent = h
        return match

    def retain(self, pages: list[int]) -> None:
        for page in pages:
            if self.refcount[page] == 0:
                self.evictable.pop(page, None)
            self.refcount[page] += 1

    def allocate(self, count: int) -> list[int]:
        if count > self.num_available:
            raise MemoryError(f"KV cache: need {count} pages, {self.num_available} available")
        pages = [self._take() for _ in range(count)]
        for page in pages:
            self.refcount[page] = 1
        return pages

    def release(self, pages: list[int]) -> None:
        for page in pages:
            self.refcount[page] -= 1
            if self.refcount[page] == 0:
                if self.hash_of[page] is not None:
                    self.evictable[page] = None
                else:
                    self.free.append(page)

    def register(self, page: int, h: int) -> None:
        """Make a full, computed page findable by its hash (first writer wins)."""
        if not self.prefix_caching or self.hash_of[page] is not None:
            return
        if h in self.page_of_hash:
            return
        self.hash_of[page] = h
        self.page_of_hash[h] = page

    def _take(self) -> int:
        if self.free:
            return self.free.popleft()
        page, _ = self.evictable.popitem(last=False)
        del self.page_of_hash[self.hash_of[page]]
        self.hash_of[page] = None
        return page

    def reset_prefix_cache(self) -> None:
        for page in list(self.evictable):
            del self.page_of_hash[self.hash_of[page]]
            self.hash_of[page] = None
            self.free.append(page)
        self.evictable.clear()
