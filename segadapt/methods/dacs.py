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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segadapt.data.mixing import class_mix_mask, mix, photometric
from segadapt.engine.ema import BN_MODES, DEFAULT_BN
from segadapt.methods.base import Method, register_method
from segadapt.methods.common import MeanTeacher, seg_ce, weighted_seg_ce
from segadapt.schema import setting

@dataclass
class DacsConfig:
    """The `dacs:` section (DACS's paper and code values as defaults)."""
    tau: float = setting(0.968, "confidence threshold of the pseudo-label weight (paper: 0.968)", lo=0, lo_open=True,
                         hi=1)
    ema_alpha: float = setting(0.99, "teacher EMA cap: alpha_t = min(1 - 1/(t+1), ema_alpha) (paper: 0.99)", lo=0,
                               hi=1, hi_open=True)
    mix_weight: float = setting(1.0, "lambda: weight of the mixed loss (paper: 1)", lo=0)
    class_mix: bool = setting(True, "ClassMix half of the source classes onto the target; false = plain "
                              "pseudo-labelling of the target crop (ablation)")
    confidence_weight: bool = setting(True, "weight target pixels of the mixed loss by q = share of teacher "
                                      "confidences >= tau; false = weight 1")
    augment: bool = setting(True, "colour jitter + Gaussian blur of the mixed image")
    jitter: list[float] = setting([0.25, 0.25, 0.25, 0.04], "brightness, contrast, saturation, hue (turns) "
                                  "(paper: 0.25 each; its hue of 0.25 rad ~ 0.04 turns)", length=4, lo=0)
    p_jitter: float = setting(0.8, "probability of colour jitter per image (paper: 0.8)", lo=0, hi=1)
    p_blur: float = setting(0.5, "probability of Gaussian blur per image (paper: 0.5)", lo=0, hi=1)
    ema_bn: str = setting(DEFAULT_BN, "teacher: batch = the EMA model in train mode, BN on batch statistics (DACS's "
                          "code); averaged = eval mode, BN statistics averaged", choices=BN_MODES)


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




# -- the method -------------------------------------------------------------------------------------

@register_method("warmup", "dacs")
class DacsWarmup(Method):
    target_batches = "target"  # target images; their labels are never read
    config_class = DacsConfig

    def __init__(self, cfg, student, num_classes):
        super().__init__(cfg, student, num_classes)
        # DACS's trainUDA.py: update right after step i_iter with alpha(i_iter) (offset 0); dropout off
        self.mean_teacher = MeanTeacher([student], self.cfg.ema_bn, False, self.cfg.ema_alpha, offset=0)
        self.teacher = self.mean_teacher.teachers[0]

    def modules(self):
        return {"student": self.student, "teacher": self.teacher}

    def after_step(self, iteration):
        self.mean_teacher.update(iteration)

    def _augment(self, x):
        """DACS's strong augmentation of the mixed image: colour jitter (DACS: p 0.8, strength 0.25) and
        Gaussian blur (p 0.5); no grayscale or sharpness (DiGA's extras)."""
        if not self.cfg.augment:
            return x
        return photometric(x, jitter=tuple(self.cfg.jitter), p_jitter=self.cfg.p_jitter, p_gray=0.0,
                           p_blur=self.cfg.p_blur, p_sharp=0.0)

    def training_step(self, batch, iteration):
        xs, ys = batch["source"]["image"], batch["source"]["label"]
        xt = batch["target"]["image"]  # self-training: batch["target"]["label"] (offline) is deliberately unused
        t = self.mean_teacher.forward(self.teacher, xt)
        yt, conf = teacher_pseudo_labels(t["logits"], ys.shape[-2:])
        q = confidence_weight(conf, self.cfg.tau) if self.cfg.confidence_weight else torch.ones((), device=xt.device)
        if self.cfg.class_mix:
            x_mix, y_mix, mask = class_mix(xs, ys, xt, yt)
        else:  # ablation: plain pseudo-labelling of the (augmented) target crop
            x_mix, y_mix, mask = xt, yt, torch.zeros_like(xt[:, :1])
        x_mix = self._augment(x_mix)
        w = mixed_pixel_weight(mask, q)

        n = xs.shape[0]
        s = self.student(torch.cat([xs, x_mix]))["logits"]
        loss_src = seg_ce(s[:n], ys)
        loss_mix = weighted_seg_ce(s[n:], y_mix, pixel_weight=w)
        loss = loss_src + self.cfg.mix_weight * loss_mix
        return loss, {"loss_src": loss_src.item(), "loss_mix": loss_mix.item(), "conf_weight": float(q)}


@register_method("self-train", "dacs")
class DacsSelfTrain(DacsWarmup):
    """DACS continued from a checkpoint (e.g. after a warm-up). Ignores the offline pseudo-labels and the
    prototypes of the pseudo-label folder: its pseudo-labels come from the online EMA teacher."""
