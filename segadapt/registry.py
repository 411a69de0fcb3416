"""One registry mechanism for everything chosen by name (methods, model architectures, dataset
converters), in the style of timm's ``register_model``: the module that defines a thing registers it
with one decorator line, and lookups of an unknown name fail with the close matches.

    METHODS = Registry("warm-up method")

    @METHODS.register("diga")
    class DigaWarmup(Method): ...

    METHODS.get("dgia")   # UsageError: unknown warm-up method 'dgia' (did you mean: diga?; available: ...)
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from segadapt.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # what the names name, for messages ("self-train method", "dataset converter")
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` adds the class or function under ``name``."""
        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({self._items[name]!r}, {obj!r})")
            self._items[name] = obj
            return obj
        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UsageError(f"unknown {self.kind} '{name}'{close_matches(name, self._items)} "
                             f"(available: {', '.join(sorted(self._items))})")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


def close_matches(word: str, choices) -> str:
    """' (did you mean: a, b?)' for the choices that look like ``word``, or '' when none does."""
    near = difflib.get_close_matches(str(word), [str(c) for c in choices], n=3, cutoff=0.6)
    return f" (did you mean: {', '.join(near)}?)" if near else ""
