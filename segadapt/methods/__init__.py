"""Methods, one module each; each registers its classes with ``@register_method(stage, name)``
(``segadapt.methods.base``), and importing this package imports them all."""

from segadapt.methods import dacs, diga, oracle, plca, source_only, t2s, threshold  # noqa: F401  (they register)
from segadapt.methods.base import SELF_TRAIN_METHODS, STAGES, WARMUP_METHODS, Method


def method_class(stage: str, name: str) -> type[Method]:
    """The method registered as ``name`` for ``stage`` ("warmup" or "self-train"); UsageError naming the
    close matches and the available ones for an unknown name."""
    return STAGES[stage].get(name)


__all__ = ["SELF_TRAIN_METHODS", "STAGES", "WARMUP_METHODS", "method_class"]
