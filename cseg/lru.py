"""The one least-recently-used cache of cseg: SAM 3 text features per phrase, CUDA graphs per input shape, device
buffers per frame size. What a cache drops may hold device memory or a captured graph, so every eviction goes through
`on_evict` (e.g. `lambda key, work: work.close()`); nothing leaves the cache without it.

Not locked: a cache shared between threads is guarded by its owner (the Runtime's phrase cache takes its own lock).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most `capacity` items; the least recently used (read with `get` or written with `put`) is evicted first."""

    def __init__(self, capacity: int, on_evict: Callable[[K, V], None] | None = None):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"an LRU cache holds at least one item, got capacity {capacity!r}")
        self.capacity = capacity
        self._on_evict = on_evict
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        """The keys, least recently used first (a snapshot: evicting while iterating is allowed)."""
        return iter(list(self._items))

    def get(self, key: K, default: V | None = None) -> V | None:
        """The item, now the most recently used; `default` when absent."""
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: K, value: V) -> None:
        """Store `value` as the most recently used, evicting the least recently used beyond capacity. A value that
        replaces another under the same key evicts the old one (unless it is the same object)."""
        if key in self._items:
            old = self._items.pop(key)
            if old is not value:
                self._evicted(key, old)
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._evicted(*self._items.popitem(last=False))

    def get_or_create(self, key: K, create: Callable[[], V]) -> V:
        """The item under `key`, or `create()` stored under it. On a miss in a full cache the least recently used is
        evicted before `create` runs: device memory is freed before new memory is allocated."""
        if key in self._items:
            return self.get(key)
        while len(self._items) >= self.capacity:
            self._evicted(*self._items.popitem(last=False))
        value = create()
        self._items[key] = value
        return value

    def evict_where(self, predicate: Callable[[K], bool]) -> None:
        """Evict (through on_evict) every item whose key satisfies `predicate`."""
        for key in [key for key in self._items if predicate(key)]:
            self._evicted(key, self._items.pop(key))

    def _evicted(self, key: K, value: V) -> None:
        if self._on_evict is not None:
            self._on_evict(key, value)
