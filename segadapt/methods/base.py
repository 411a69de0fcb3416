"""What every method provides to the engine. The engine runs the loop (data, optimiser, schedule,
checkpoints, logs); a method only says how one iteration's loss is computed from a batch.

The interface, written down on :class:`Method`: ``training_step`` is the one hook a method must write;
every other hook has a default that does nothing (or the least), so a method overrides only what it uses.
A method is registered once, by the decorator line above its class, ``@register_method(stage, name)``;
the engine and the pipeline find it with ``segadapt.methods.method_class(stage, name)``.
"""

from __future__ import annotations

import torch
from torch import nn

from segadapt.registry import Registry
from segadapt.schema import NoSettings, as_config

#: the registries of the two stages (the kinds are the words of the unknown-method message)
WARMUP_METHODS: Registry[type[Method]] = Registry("warmup method")
SELF_TRAIN_METHODS: Registry[type[Method]] = Registry("self-train method")
STAGES: dict[str, Registry] = {"warmup": WARMUP_METHODS, "self-train": SELF_TRAIN_METHODS}


def register_method(stage: str, name: str):
    """Class decorator: ``@register_method("self-train", "diga")`` registers the class under ``name`` for
    ``stage`` and sets its ``name`` and ``stage`` (which the checkpoint and the logs carry)."""
    registry = STAGES[stage]

    def add(cls):
        cls.name, cls.stage = name, stage
        return registry.register(name)(cls)
    return add


class MethodState(nn.Module):
    """A method's running tensors that are not weights (DiGA's prototypes, T2S's class statistics, CBST's
    thresholds) as buffers of a module: listed in ``Method.modules()`` as ``"method_state"``, they move to
    the device, are broadcast to every rank and are checkpointed like weights, with no special case.

    ``state["name"]`` reads and ``state["name"] = t`` replaces a buffer. A buffer may be None (not known
    yet: not checkpointed); loading a state dict fills it, and a None entry in a state dict (checkpoints
    written before this class) leaves the buffer as it is."""

    def __init__(self, **tensors: torch.Tensor | None):
        super().__init__()
        for key, value in tensors.items():
            self.register_buffer(key, value)

    def __getitem__(self, key: str) -> torch.Tensor | None:
        return self._buffers[key]

    def __setitem__(self, key: str, value: torch.Tensor | None) -> None:
        if key not in self._buffers:
            raise KeyError(key)
        self._buffers[key] = value

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for key, value in list(self._buffers.items()):
            given = state_dict.get(prefix + key)
            if given is None:
                state_dict.pop(prefix + key, None)  # None: nothing was known when it was saved
            elif value is None:  # not known here yet: the checkpoint's value is taken as it is
                self._buffers[key] = torch.empty_like(given)  # filled by the copy below
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class state_buffer:  # noqa: N801 - used like ``property``
    """Class attribute ``prototypes = state_buffer()`` of a method: reads and writes the buffer of that
    name in the method's ``self.state`` (a :class:`MethodState`), so the method's code uses it like a
    plain attribute while the engine checkpoints it."""

    def __set_name__(self, owner, name: str) -> None:
        self.key = name

    def __get__(self, obj, owner=None):
        return self if obj is None else obj.state[self.key]

    def __set__(self, obj, value: torch.Tensor | None) -> None:
        obj.state[self.key] = value


class Method:
    """One adaptation method of one stage. Subclasses set ``target_batches`` (and ``needs_confidence``
    where they threshold pseudo-labels), write ``training_step``, and override any hook below they need."""

    #: set by ``@register_method``: the registry name and the stage ("warmup" or "self-train")
    name: str = "unregistered"
    stage: str = "warmup"
    #: which batches the engine must provide: source images+labels are always given;
    #: "target" = target images (labels all-ignore), "pseudo" = target images with pseudo-labels
    #: (self-training), None = source only. A property where it depends on the config.
    target_batches: str | None = None
    #: the dataclass of this method's config section (defaults, docs, ranges: see segadapt/schema.py)
    config_class: type = NoSettings
    #: self-training: True to receive each target crop's confidence map as ``batch["target"]["confidence"]``
    #: (float32 in [0, 1], 0 on padding), for methods that threshold pseudo-labels
    needs_confidence: bool = False

    def __init__(self, cfg: dict, student: nn.Module, num_classes: int):
        self.cfg = as_config(self.config_class, cfg, self.name)  # this method's own section, typed and checked
        self.student = student
        self.num_classes = num_classes

    # -- what the method takes from the pseudo-label folder (self-training) --------------------------
    def use_pseudo_labels(self, folder) -> None:
        """Called once by the self-training pipeline, after construction and before training (and before a
        resumed run's checkpoint is loaded), with the run's
        :class:`segadapt.data.pseudo_labels.PseudoLabelFolder`: take what the method needs from it
        (DiGA: ``folder.prototypes()``; class-balanced thresholds: ``folder.histogram()``). The pseudo-labels
        themselves reach the method through the target batches. Default: nothing."""

    # -- what the engine checkpoints and optimises --------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """Named modules the engine moves to the device, broadcasts to every rank and checkpoints:
        "student" (required, the model that is evaluated and exported), optionally "teacher",
        "method_state" (a :class:`MethodState`: the method's running tensors that are not weights) and any
        other (e.g. projection heads). Everything a resumed run needs must be in here."""
        return {"student": self.student}

    def param_groups(self) -> dict:
        """Named parameter lists for the optimiser: "backbone" at the base learning rate, every other group
        at the head multiplier. Default: the student's own groups."""
        return self.student.param_groups()

    def train(self) -> None:
        """Put the trained modules in training mode before the loop (teachers keep their own mode).
        Default: the student."""
        for m in self.modules().values():
            if m is self.student:
                m.train()

    # -- one iteration --------------------------------------------------------------------------
    def training_step(self, batch: dict, iteration: int) -> tuple[torch.Tensor, dict]:
        """The loss of one iteration and the numbers to log. ``batch["source"]`` holds "image" (B, 3, H, W)
        float RGB in [0, 1] and "label" (B, H, W) int64 (255 = ignore); ``batch["target"]``, when
        ``target_batches`` asks for it, the same for target crops (plus "confidence" with
        ``needs_confidence``). Randomness comes from torch's global RNG, which the engine reseeds from
        (seed, iteration) before every step. Required."""
        raise NotImplementedError

    def after_step(self, iteration: int) -> None:
        """Called after the optimiser step (EMA updates and the like). Default: nothing."""

