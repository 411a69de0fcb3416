"""Target oracle: the upper bound every UDA table quotes, a model supervised on the TARGET's own labels.

    L = CE(S(x_t), y_t)

It is source-only training under another name, run with the target's prepared folder passed as
``--source`` (e.g. ``segadapt warmup -c synthetic/oracle --source PREPARED_TARGET``): the engine feeds
labelled crops of whatever ``--source`` names, and the checkpoint records ``method: oracle`` so the run
says what it is. Evaluate it on a target split it did not train on (CamVid day -> dusk is transductive:
there the oracle's score is a reference, not a generalisation estimate).
"""

from __future__ import annotations

from segadapt.methods.base import register_method
from segadapt.methods.source_only import SourceOnly


@register_method("warmup", "oracle")
class Oracle(SourceOnly):
    """Source-only training on the target's labels, under its own name."""
