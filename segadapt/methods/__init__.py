"""Methods, one module each; each registers its classes with ``@register_method(stage, name)``
(``segadapt.methods.base``). Importing this package imports every module in it (``discover``), so a
new method is one new file here: nothing else lists the methods."""

import importlib
import pkgutil

from segadapt.methods.base import SELF_TRAIN_METHODS, STAGES, WARMUP_METHODS, Method


def discover() -> None:
    """Import every module of this package's path (they register their methods on import)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


discover()


def method_class(stage: str, name: str) -> type[Method]:
    """The method registered as ``name`` for ``stage`` ("warmup" or "self-train"); UsageError naming the
    close matches and the available ones for an unknown name."""
    return STAGES[stage].get(name)


__all__ = ["SELF_TRAIN_METHODS", "STAGES", "WARMUP_METHODS", "discover", "method_class"]
