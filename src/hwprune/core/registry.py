"""One registry helper for everything found by name: criteria, targets, allocators, data sets, methods.

The timm convention (`register_model` / `create_model` / `list_models`): a decorator registers an object
under a name, `get` looks it up with a one-line error that lists the choices, `names` lists by pattern.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from hwprune.core.errors import HwpruneError

T = TypeVar("T")
#: `register(name)` without an object returns a decorator.
_DECORATOR = object()


class Registry(Generic[T]):
    """Name -> object, with a short description per entry.

    Args:
        kind: what the entries are, for error messages ("criterion", "data set", ...).
        flag: the command-line flag that names an entry, for error messages ("--criterion").
    """

    def __init__(self, kind: str, flag: str | None = None):
        self.kind = kind
        self.flag = flag
        self._entries: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, obj: T | object = _DECORATOR, description: str = "") -> Callable[[T], T] | T:
        """`registry.register("name", obj)` (obj may be None), or `@registry.register("name")` as a decorator."""

        def add(item: T) -> T:
            self._entries[name] = item
            doc = description or (getattr(item, "__doc__", None) or "").strip().splitlines()
            self._descriptions[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return item

        return add if obj is _DECORATOR else add(obj)

    def get(self, name: str) -> T:
        if name not in self._entries:
            where = f" for {self.flag}" if self.flag else ""
            raise HwpruneError(f"unknown {self.kind} '{name}'{where}; choose one of: {', '.join(sorted(self.names()))}")
        return self._entries[name]

    __getitem__ = get

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self._entries if fnmatch.fnmatch(n, pattern)]

    def describe(self, name: str) -> str:
        self.get(name)
        return self._descriptions[name]

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
