"""Name -> callable registries (timm style): extend the plugin by name, never by editing a switch."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import UnknownNameError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """A named collection of callables, filled with the ``register`` decorator."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return decorator

    def get(self, name: str, where: str = "") -> F:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.what, name, self._items, where) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items
