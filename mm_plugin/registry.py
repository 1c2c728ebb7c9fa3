"""Name -> callable registries (timm style): extend the plugin by name, never by editing a switch.

Each entry declares what it needs from its caller (:class:`Needs`), so callers ask the registry
("does any chosen signal need calibration batches?") instead of comparing names. A registry may also
look names up in an entry-point group, which is how toolkit adapters add entries without the core
importing them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import ConfigError, UnknownNameError

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class Needs:
    """What a registered entry needs, and what it can serve.

    ``calibration``: (inputs, targets) batches (gradient signals, |w g| allocations); ``example_inputs``:
    a forward pass (tracing, permutation checks, timing); ``structured``: it also serves channel groups
    (structured pruning), not only single weights; ``measured``: measured sensitivity (the ``sensitivity``
    allocation).
    """

    calibration: bool = False
    example_inputs: bool = False
    structured: bool = False
    measured: bool = False


class Registry(Generic[F]):
    """A named collection of callables, filled with ``register`` or found in ``entry_point_group``."""

    def __init__(self, what: str, entry_point_group: str | None = None) -> None:
        self.what = what
        self.group = entry_point_group
        self._items: dict[str, F] = {}
        self._needs: dict[str, Needs] = {}

    def register(self, name: str, needs: Needs = Needs()) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._items[name] = fn
            self._needs[name] = getattr(fn, "needs", needs) if needs == Needs() else needs
            return fn

        return decorator

    def _plugins(self) -> dict[str, object]:
        return {ep.name: ep for ep in entry_points(group=self.group)} if self.group else {}

    def get(self, name: str, where: str = "") -> F:
        if name not in self._items and name in self._plugins():
            try:
                loaded = self._plugins()[name].load()
            except ImportError as e:
                raise ConfigError(f"{self.what} {name!r} needs a toolkit that is not installed: {e}") from None
            if name not in self._items:  # loading the module may have registered it already
                self.register(name)(loaded)
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.what, name, self.names(), where) from None

    def needs(self, name: str) -> Needs:
        self.get(name)
        return self._needs[name]

    def any_needs(self, names: Iterable[str], what: str) -> bool:
        """Whether any of ``names`` needs ``what`` (a :class:`Needs` field)."""
        return any(getattr(self.needs(n), what) for n in names)

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in set(self._items) | set(self._plugins()) if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._plugins()
