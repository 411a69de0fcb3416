"""Methods, one module each, registered by stage and name."""

from segadapt.errors import UsageError
from segadapt.methods.diga import DigaSelfTrain, DigaWarmup
from segadapt.methods.source_only import SourceOnly

METHODS = {
    "warmup": {"source-only": SourceOnly, "diga": DigaWarmup},
    "self-train": {"diga": DigaSelfTrain},
}


def method_class(stage: str, name: str):
    known = METHODS.get(stage, {})
    if name not in known:
        raise UsageError(f"unknown {stage} method '{name}' (available: {', '.join(sorted(known))})")
    return known[name]
