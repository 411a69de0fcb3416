"""Methods, one module each, registered by stage and name."""

from segadapt.errors import UsageError
from segadapt.methods.dacs import DacsSelfTrain, DacsWarmup
from segadapt.methods.diga import DigaSelfTrain, DigaWarmup
from segadapt.methods.plca import PLCA
from segadapt.methods.oracle import Oracle
from segadapt.methods.source_only import SourceOnly
from segadapt.methods.t2s import T2S
from segadapt.methods.threshold import ThresholdSelfTrain

METHODS = {
    "warmup": {"source-only": SourceOnly, "diga": DigaWarmup, "plca": PLCA, "dacs": DacsWarmup, "oracle": Oracle},
    "self-train": {"diga": DigaSelfTrain, "t2s": T2S, "dacs": DacsSelfTrain, "threshold": ThresholdSelfTrain},
}


def method_class(stage: str, name: str):
    known = METHODS.get(stage, {})
    if name not in known:
        raise UsageError(f"unknown {stage} method '{name}' (available: {', '.join(sorted(known))})")
    return known[name]
