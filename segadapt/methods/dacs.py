"""DACS: Domain Adaptation via Cross-domain mixed Sampling (Tranheden et al., WACV 2021).

Online self-training with a mean teacher T of the student S, every iteration:
    y_t(p) = argmax_c T(x_t)(p),  conf(p) = max_c softmax(T(x_t))(p)     teacher on the CLEAN target crop
    q      = |{p : conf(p) >= tau}| / |pixels of the target batch|       confidence weight (tau = 0.968)
    M      = ClassMix mask: half of the classes present in the source label y_s
    x_mix  = aug(M * x_s + (1 - M) * x_t),  y_mix = M * y_s + (1 - M) * y_t   aug: colour jitter, blur
    w(p)   = M(p) * 1 + (1 - M(p)) * q                                   pasted source pixels count fully
    L      = CE(S(x_s), y_s) + lambda * sum_p w(p) CE(S(x_mix), y_mix)(p) / |labelled pixels|
    T     <- alpha_t T + (1 - alpha_t) S,   alpha_t = min(1 - 1/(t+1), 0.99)   after step t, as DACS's code

ClassMix as DACS's ``trainUDA.py`` draws it: ceil(n/2) of the n label values of each source image, the
ignore value counted and pasted (as ignore) only when drawn (``class_mix_mask(rule="dacs")``). The
teacher: ``dacs.ema_bn`` (``batch``, DACS's code: the EMA model in train mode, BatchNorm with batch
statistics, parameters averaged only; dropout off, as in DAFormer's DACS and in DACS's network, which
has none; ``averaged``: BN statistics averaged too, eval mode). See ``segadapt.engine.ema``.

As in the paper it is a one-stage method (registered as a warm-up, from ImageNet weights, with
unlabelled target images). It is also registered as a self-training method that starts from a
checkpoint: there it IGNORES the offline pseudo-labels of the folder (the engine still loads them)
and makes its own online ones from the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segadapt.data.labelspace import IGNORE
from segadapt.data.mixing import class_mix_mask, mix, photometric
from segadapt.engine.ema import DEFAULT_BN, check_bn_mode, ema_step, make_teacher, teacher_forward
from segadapt.errors import UsageError
from segadapt.methods.base import Method, register_method, seg_ce

DEFAULTS = {
    "tau": 0.968, "ema_alpha": 0.99, "mix_weight": 1.0, "class_mix": True, "confidence_weight": True,
    "augment": True, "jitter": [0.25, 0.25, 0.25, 0.04], "p_jitter": 0.8, "p_blur": 0.5, "ema_bn": DEFAULT_BN,
}


# -- the paper's pieces as plain functions (tested one by one) ----------------------------------

def teacher_pseudo_labels(teacher_logits: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits (B, C, h, w) -> (pseudo-label, confidence), both (B, H, W) at label size ``size``
    (DACS upsamples the logits to the input size before the softmax)."""
    logits = F.interpolate(teacher_logits.detach().float(), size=size, mode="bilinear", align_corners=False)
    conf, label = logits.softmax(1).max(1)
    return label, conf


def confidence_weight(conf: torch.Tensor, tau: float) -> torch.Tensor:
    """q = fraction of pixels (over the whole batch, as DACS) whose teacher confidence is >= tau."""
    return (conf >= tau).float().mean()


def class_mix(xs, ys, xt, yt, generator=None):
    """ClassMix: the pixels of half of the classes of each source label pasted onto the target image, the
    labels mixed the same way. Returns (x_mix, y_mix, mask (B, 1, H, W))."""
    mask = class_mix_mask(ys, generator, rule="dacs").to(xs.dtype)
    return mix(mask, xs, xt), mix(mask, ys, yt), mask


def mixed_pixel_weight(mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """w = 1 on pasted source pixels (true labels), q on target pixels (pseudo-labels); (B, H, W)."""
    m = mask[:, 0]
    return m + (1 - m) * q


def weighted_seg_ce(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_p w(p) CE(p) / |labelled pixels| at label resolution (DACS divides by every pixel, ignored ones
    included; like :func:`seg_ce` we divide by the labelled ones). 0 when none is labelled."""
    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    valid = label != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.float(), label, ignore_index=IGNORE, reduction="none")
    return (ce * weight.float()).sum() / valid.sum()


# -- config ---------------------------------------------------------------------------------------

def _check_cfg(cfg: dict, name: str) -> dict:
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"unknown {name} setting '{unknown[0]}' (known: {', '.join(DEFAULTS)})")
    c = {**DEFAULTS, **cfg}
    try:
        tau, alpha, lam = float(c["tau"]), float(c["ema_alpha"]), float(c["mix_weight"])
        jitter = [float(v) for v in c["jitter"]]
        p_jit, p_blur = float(c["p_jitter"]), float(c["p_blur"])
    except (TypeError, ValueError):
        raise UsageError(f"{name}: tau, ema_alpha, mix_weight, p_jitter, p_blur must be numbers and jitter a list "
                         "of 4 numbers") from None
    if not 0.0 < tau <= 1.0:
        raise UsageError(f"{name}.tau must be in (0, 1], got {tau}")
    if not 0.0 <= alpha < 1.0:
        raise UsageError(f"{name}.ema_alpha must be in [0, 1), got {alpha}")
    if lam < 0:
        raise UsageError(f"{name}.mix_weight must be >= 0, got {lam}")
    if len(jitter) != 4 or min(jitter) < 0:
        raise UsageError(f"{name}.jitter must be 4 non-negative numbers [brightness, contrast, saturation, hue]")
    for key, p in (("p_jitter", p_jit), ("p_blur", p_blur)):
        if not 0.0 <= p <= 1.0:
            raise UsageError(f"{name}.{key} must be in [0, 1], got {p}")
    check_bn_mode(c["ema_bn"], name)
    for key in ("class_mix", "confidence_weight", "augment"):
        if not isinstance(c[key], bool):
            raise UsageError(f"{name}.{key} must be true or false, got {c[key]!r}")
    return {**c, "tau": tau, "ema_alpha": alpha, "mix_weight": lam, "jitter": tuple(jitter), "p_jitter": p_jit,
            "p_blur": p_blur}


# -- the method -------------------------------------------------------------------------------------

@register_method("warmup", "dacs")
class DacsWarmup(Method):
    target_batches = "target"  # target images; their labels are never read

    def __init__(self, cfg, student, num_classes):
        super().__init__(cfg, student, num_classes)
        self.c = _check_cfg(cfg, self.name)
        self.teacher = make_teacher(student, self.c["ema_bn"], dropout=False)
        self.generator = None  # the engine reseeds torch's global RNG every iteration

    def modules(self):
        return {"student": self.student, "teacher": self.teacher}

    def after_step(self, iteration):
        # DACS's trainUDA.py: update right after step i_iter with alpha(i_iter) (offset 0)
        ema_step([(self.teacher, self.student)], iteration, self.c["ema_alpha"], self.c["ema_bn"], offset=0)

    def _augment(self, x):
        """DACS's strong augmentation of the mixed image: colour jitter (DACS: p 0.8, strength 0.25) and
        Gaussian blur (p 0.5); no grayscale or sharpness (DiGA's extras)."""
        if not self.c["augment"]:
            return x
        return photometric(x, self.generator, jitter=self.c["jitter"], p_jitter=self.c["p_jitter"], p_gray=0.0,
                           p_blur=self.c["p_blur"], p_sharp=0.0)

    def training_step(self, batch, iteration):
        xs, ys = batch["source"]["image"], batch["source"]["label"]
        xt = batch["target"]["image"]  # self-training: batch["target"]["label"] (offline) is deliberately unused
        t = teacher_forward(self.teacher, [xt], [self.teacher], self.c["ema_bn"], dropout=False)
        yt, conf = teacher_pseudo_labels(t["logits"], ys.shape[-2:])
        q = confidence_weight(conf, self.c["tau"]) if self.c["confidence_weight"] else torch.ones((), device=xt.device)
        if self.c["class_mix"]:
            x_mix, y_mix, mask = class_mix(xs, ys, xt, yt, self.generator)
        else:  # ablation: plain pseudo-labelling of the (augmented) target crop
            x_mix, y_mix, mask = xt, yt, torch.zeros_like(xt[:, :1])
        x_mix = self._augment(x_mix)
        w = mixed_pixel_weight(mask, q)

        n = xs.shape[0]
        s = self.student(torch.cat([xs, x_mix]))["logits"]
        loss_src = seg_ce(s[:n], ys)
        loss_mix = weighted_seg_ce(s[n:], y_mix, w)
        loss = loss_src + self.c["mix_weight"] * loss_mix
        return loss, {"loss_src": loss_src.item(), "loss_mix": loss_mix.item(), "conf_weight": float(q)}


@register_method("self-train", "dacs")
class DacsSelfTrain(DacsWarmup):
    """DACS continued from a checkpoint (e.g. after a warm-up). Ignores the offline pseudo-labels and the
    prototypes of the pseudo-label folder: its pseudo-labels come from the online EMA teacher."""
