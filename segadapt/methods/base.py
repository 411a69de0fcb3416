"""What every method provides to the engine. The engine runs the loop (data, optimiser, schedule,
checkpoints, logs); a method only says how one iteration's loss is computed from a batch."""

from __future__ import annotations

import torch
from torch import nn

from segadapt.schema import NoSettings, as_config


class Method:
    #: registry name and stage ("warmup" or "self-train")
    name = "base"
    stage = "warmup"
    #: which batches the engine must provide: source images+labels are always given;
    #: "target" = target images (labels all-ignore), "pseudo" = target images with pseudo-labels
    target_batches: str | None = None
    #: the dataclass of this method's config section (defaults, docs, ranges: see segadapt/schema.py)
    config_class: type = NoSettings

    def __init__(self, cfg: dict, student: nn.Module, num_classes: int, prototypes: torch.Tensor | None = None):
        """``prototypes``: the pseudo-label folder's class prototypes (self-training); methods that do not
        use them ignore them."""
        self.cfg = as_config(self.config_class, cfg, self.name)  # this method's own section, typed and checked
        self.student = student
        self.num_classes = num_classes

    # -- what the engine checkpoints and optimises --------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """Named modules whose state is checkpointed ("student" is required; "teacher" is optional)."""
        return {"student": self.student}

    def param_groups(self) -> dict:
        return self.student.param_groups()

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def train(self) -> None:
        for m in self.modules().values():
            if m is self.student:
                m.train()

    # -- one iteration --------------------------------------------------------------------------
    def training_step(self, batch: dict, iteration: int) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def after_step(self, iteration: int) -> None:
        """Called after the optimiser step (EMA updates and the like)."""

