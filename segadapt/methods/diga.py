"""DiGA: Distil to Generalise, then Adapt (Shen et al., CVPR 2023).

Warm-up (source labels only):
    x_aug = b * aug(x) + (1 - b) * x                                   photometric view
    x_cd  = M * x_aug + (1 - M) * translate(x)                         CDMix, M = half the classes + ignore
    L_SKD = H(T(x) -> S(x_cd)) + w * H(T(x_cd) -> S(x))                symmetric knowledge distillation
    L_warm = CE(S(x), y) [+ CE(S(x_cd), y)] + lambda * L_SKD
Self-training (offline pseudo-labels y_t, class prototypes P):
    y_t' = y_t where y_t == argmin_c ||f_T(x_t) - P_c|| else ignore    dynamic pseudo-label selection
    x_mix, y_mix = ClassMix(source -> aug(target))
    L = CE(S(x_s), y_s) + CE(S(x_mix), y_mix) + lambda_st * L_SKD
    P_c <- (1 - m) P_c + m * mean(f_T | label == teacher argmax == c)  on source and target
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from segadapt.data.labelspace import IGNORE
from segadapt.data.mixing import FDA_WINDOWS, class_mix_mask, fda, mix, photometric
from segadapt.engine.ema import BN_MODES, DEFAULT_BN
from segadapt.errors import DataError, SegadaptError, UsageError
from segadapt.methods.base import Method, MethodState, register_method, state_buffer
from segadapt.methods.common import MeanTeacher, class_feature_means, resize_label, seg_ce, soft_ce
from segadapt.schema import setting


# -- config: the `diga:` section, one dataclass per stage ------------------------------------------

@dataclass
class _DigaCommonConfig:
    skd_reverse_weight: float = setting(0.5, "w: weight of H(T(x_cd) -> S(x)) inside L_SKD", lo=0)
    cdmix: bool = setting(True, "cross-domain mixture view x_cd; false = the photometric view only")
    translator: str = setting("fda", "source -> target restyling for CDMix: fda (training-free), none (x_aug "
                              "mixed with the clean source), or a train-translator checkpoint path")
    fda_beta: float = setting(0.01, "FDA window, a fraction of min(H, W)", lo=0)
    fda_window: str = setting("centre", "centre: (2b+1)^2 square of the spectrum, clamped to [0, 1]; corner: FDA's "
                              "training code (4 b x b blocks, unclamped)", choices=FDA_WINDOWS)
    photometric_blend: float = setting(0.4, "b in x_aug = b * aug(x) + (1 - b) * x", lo=0, hi=1)
    ema_alpha: float = setting(0.999, "teacher EMA cap: alpha_t = min(1 - 1/(t+1), ema_alpha)", lo=0, hi=1)
    ema_bn: str = setting(DEFAULT_BN, "teacher: batch = BN on batch statistics, parameters averaged (official "
                          "code); averaged = eval mode, BN statistics averaged", choices=BN_MODES)


@dataclass
class DigaWarmupConfig(_DigaCommonConfig):
    skd_weight: float = setting(0.5, "lambda: weight of L_SKD (paper, GTA5: 0.5)", lo=0)
    ce_on_mixed: bool = setting(True, "also supervise S(x_cd) with the source label (x_cd keeps it)")


@dataclass
class DigaSelfTrainConfig(_DigaCommonConfig):
    skd_weight: float = setting(0.25, "weight of L_SKD during self-training (paper: 0.25)", lo=0)
    selection: str = setting("dps", "dps = keep a pseudo-label where the nearest prototype agrees (paper); threshold "
                             "= where its confidence >= threshold; none = keep all",
                             choices=("dps", "threshold", "none"))
    threshold: float = setting(0.9, "confidence threshold of selection: threshold", lo=0, hi=1)
    proto_momentum: float = setting(1e-4, "prototype EMA step per image and class (DiGA's code: 1e-4)", lo=0, hi=1)
    proto_min_pixels: int = setting(5, "skip a class with fewer agreeing feature pixels in an image (DiGA: 5)", lo=0)


# -- the paper's pieces as plain functions (tested one by one) ----------------------------------

def skd_loss(t_clean, s_clean, t_mixed, s_mixed, reverse_weight: float) -> torch.Tensor:
    """L_SKD = H(T(x) -> S(x_cd)) + w * H(T(x_cd) -> S(x))."""
    return soft_ce(t_clean, s_mixed) + reverse_weight * soft_ce(t_mixed, s_clean)


def translate(x: torch.Tensor, target_images: torch.Tensor, cfg, generator=None, net=None) -> torch.Tensor:
    """Restyle source images toward the target domain. 'fda' swaps the low-frequency amplitude with a
    random target image of the batch (training-free stand-in for DiGA's translation GAN); a checkpoint
    path runs its trained generator ``net`` (see ``load_translator``), frozen. ``cfg``: a method config
    with ``translator``, ``fda_beta`` and ``fda_window``."""
    kind = cfg.translator
    if kind == "fda":
        if target_images is None:
            raise UsageError("translator fda needs target images in the batch (--target)")
        pick = torch.randint(0, target_images.shape[0], (x.shape[0],), generator=generator)
        return fda(x, target_images[pick.to(target_images.device)], cfg.fda_beta, cfg.fda_window)
    if kind == "none":
        return x
    if net is None:
        raise UsageError(f"translator '{kind}': load the generator with load_translator first")
    with torch.no_grad():
        return net(x).to(x.dtype)


def load_translator(path) -> torch.nn.Module:
    """The source -> target generator of a `segadapt train-translator` checkpoint, frozen, in eval mode."""
    from segadapt.engine.checkpoint import load_checkpoint
    from segadapt.translation.networks import build_generator

    if not Path(path).is_file():
        raise DataError(f"diga.translator '{path}' is neither fda, none nor an existing translator checkpoint "
                        "(RUN/last.pt of segadapt train-translator)")
    ckpt = load_checkpoint(path)  # DataError for an unreadable file
    if ckpt.get("stage") != "translator" or "g_st" not in ckpt.get("modules", {}):
        raise DataError(f"{path} is not a translator checkpoint (make one with segadapt train-translator)")
    try:
        net = build_generator(ckpt.get("generator_spec"))
        net.load_state_dict(ckpt["modules"]["g_st"])
    except (RuntimeError, SegadaptError) as e:
        raise DataError(f"translator checkpoint {path} does not match its generator spec: "
                        f"{str(e).splitlines()[0][:200]}") from None
    return net.eval().requires_grad_(False)


def cdmix(x, x_aug, label, x_translated, generator=None):
    """Cross-domain mixture: augmented source on half of the classes (and the ignore region), the
    target-styled source elsewhere (DiGA's class draw, see ``class_mix_mask``). The label stays the
    source label."""
    mask = class_mix_mask(label, generator, rule="diga").to(x.dtype)
    return mix(mask, x_aug, x_translated), mask


def nearest_prototype(feat: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """feat (B, D, h, w), prototypes (C, D) -> class of the nearest prototype (Euclidean), (B, h, w)."""
    b, d, h, w = feat.shape
    f = feat.permute(0, 2, 3, 1).reshape(-1, d).float()
    dist = torch.cdist(f, prototypes.float().to(f.device))
    return dist.argmin(1).view(b, h, w)


def dps_select(pseudo_label: torch.Tensor, feat: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Dynamic pseudo-label selection: keep a pixel's offline pseudo-label only where it equals the class
    of the prototype nearest to the teacher's current feature; ignore it elsewhere. Threshold-free."""
    nearest = nearest_prototype(feat, prototypes)
    nearest = resize_label(nearest, pseudo_label.shape[-2:])
    return torch.where(pseudo_label == nearest, pseudo_label, torch.full_like(pseudo_label, IGNORE))


def update_prototypes(prototypes: torch.Tensor, feat: torch.Tensor, label: torch.Tensor, teacher_pred: torch.Tensor,
                      momentum: float, min_pixels: int = 5) -> torch.Tensor:
    """DiGA's centroid update (``Class_Features.update_objective_SingleVector`` in its self-training
    script): for each image of the batch in order, and each class c with at least ``min_pixels`` pixels
    where ``label`` and the teacher's argmax ``teacher_pred`` are both c (all at feature resolution),
    P_c <- (1 - m) P_c + m * (mean teacher feature over those pixels). So a class seen in two images
    takes two EMA steps, image 0's first; classes under ``min_pixels`` in an image (and, as in the
    official code, an all-zero mean vector) leave P_c unchanged."""
    agree = torch.where(label == teacher_pred, label, torch.full_like(label, IGNORE))
    means, counts = class_feature_means(feat, agree, prototypes.shape[0], per_image=True)
    out = prototypes.clone()
    use = (counts >= min_pixels) & (means.sum(2) != 0)  # (B, C)
    for i in range(means.shape[0]):  # sequential: image i's step starts from image i-1's result
        stepped = (1 - momentum) * out + momentum * means[i].to(out.dtype)
        out = torch.where(use[i, :, None], stepped, out)  # no host sync on a GPU
    return out


# -- the two stages ------------------------------------------------------------------------------

class _WithTeacher(Method):
    #: DiGA never puts its teacher in eval mode: with ``ema_bn: batch`` its dropout stays active
    teacher_dropout = True

    def __init__(self, cfg, student, num_classes):
        super().__init__(cfg, student, num_classes)
        self.ema_bn = self.cfg.ema_bn
        self.mean_teacher = MeanTeacher([student], self.ema_bn, self.teacher_dropout, self.cfg.ema_alpha)
        self.teacher = self.mean_teacher.teachers[0]
        # a trained translator (a checkpoint path): loaded once, frozen, never checkpointed with the student
        kind = self.cfg.translator
        self.translator_net = load_translator(kind) if kind not in ("fda", "none") else None

    def modules(self):
        return {"student": self.student, "teacher": self.teacher}

    def after_step(self, iteration):
        self.mean_teacher.update(iteration)

    def run_teacher(self, *groups):
        """Teacher outputs for the image batches ``groups``, concatenated (see ``teacher_forward``)."""
        return self.mean_teacher.forward(self.teacher, *groups)

    def _views(self, x, y, target_images):
        """x_aug and x_cd of a source batch (x_cd = x_aug when CDMix is switched off). translator none
        keeps the mixture with translate = identity, x_cd = M * x_aug + (1 - M) * x, so that CDMix's mixing
        can be measured apart from its restyling."""
        x_aug = photometric(x, blend=self.cfg.photometric_blend)
        if not self.cfg.cdmix:
            return x_aug, x_aug
        net = self.translator_net
        if net is not None:
            net.to(x.device)  # once: the student's device (no-op afterwards)
        x_cd, _ = cdmix(x, x_aug, y, translate(x, target_images, self.cfg, net=net))
        return x_aug, x_cd


@register_method("warmup", "diga")
class DigaWarmup(_WithTeacher):
    config_class = DigaWarmupConfig

    @property
    def target_batches(self):
        # only FDA needs target images; a trained translator has learnt the target style
        return "target" if self.cfg.cdmix and self.cfg.translator == "fda" else None

    def training_step(self, batch, iteration):
        x, y = batch["source"]["image"], batch["source"]["label"]
        target = batch.get("target", {}).get("image")
        _x_aug, x_cd = self._views(x, y, target)
        n = x.shape[0]
        s = self.student(torch.cat([x, x_cd]))["logits"]
        s_x, s_cd = s[:n], s[n:]
        loss_ce = seg_ce(s_x, y)
        logs = {"loss_ce": loss_ce.item()}
        loss = loss_ce
        if self.cfg.ce_on_mixed:
            loss_cd = seg_ce(s_cd, y)
            loss = loss + loss_cd
            logs["loss_ce_mixed"] = loss_cd.item()
        lam = self.cfg.skd_weight
        if lam > 0:
            t = self.run_teacher(torch.cat([x, x_cd]))["logits"]  # one batch, as DiGA's teacher(sdatav_cat)
            loss_skd = skd_loss(t[:n], s_x, t[n:], s_cd, self.cfg.skd_reverse_weight)
            loss = loss + lam * loss_skd
            logs["loss_skd"] = loss_skd.item()
        return loss, logs


@register_method("self-train", "diga")
class DigaSelfTrain(_WithTeacher):
    config_class = DigaSelfTrainConfig
    target_batches = "pseudo"
    prototypes = state_buffer()  # (C, D) float32, or None without the folder's prototypes.pt

    def __init__(self, cfg, student, num_classes):
        super().__init__(cfg, student, num_classes)
        # the class prototypes, from the pseudo-label folder (use_pseudo_labels), moved as training goes
        self.state = MethodState(prototypes=None)
        # a fixed confidence threshold needs each target crop's confidence map next to its pseudo-label
        self.needs_confidence = self.cfg.selection == "threshold"

    def use_pseudo_labels(self, folder):
        prototypes = folder.prototypes()
        if self.cfg.selection == "dps" and prototypes is None:
            raise UsageError("DiGA self-training with dynamic pseudo-label selection needs the pseudo-label "
                             "folder's prototypes.pt")
        self.prototypes = prototypes.clone().float() if prototypes is not None else None

    def modules(self):
        return {**super().modules(), "method_state": self.state}

    def training_step(self, batch, iteration):
        xs, ys = batch["source"]["image"], batch["source"]["label"]
        xt, yt = batch["target"]["image"], batch["target"]["label"]
        n = xs.shape[0]
        _x_aug, x_cd = self._views(xs, ys, xt)
        # DiGA runs its teacher on [source, CDMix] and on the target as two batches (own BN statistics
        # with ema_bn: batch); the outputs come back concatenated as [xs, x_cd, xt]
        t = self.run_teacher(torch.cat([xs, x_cd]), xt)
        t_logits, t_feat = t["logits"], t["feat"]
        t_s, t_cd, t_t = t_logits[:n], t_logits[n:2 * n], t_logits[2 * n:]
        feat_t = t_feat[2 * n:]

        selection = self.cfg.selection
        if selection == "threshold":  # the fixed-threshold baseline of DiGA's ablation
            conf = batch["target"]["confidence"]
            yt_sel = torch.where(conf >= self.cfg.threshold, yt, torch.full_like(yt, IGNORE))
        elif selection == "dps":
            yt_sel = dps_select(yt, feat_t, self.prototypes.to(feat_t.device))
        elif selection == "none":
            yt_sel = yt
        else:
            raise UsageError(f"unknown pseudo-label selection '{selection}' (dps, threshold, none)")

        # ClassMix as DiGA's code: half of the source label values pasted onto a photometrically augmented
        # target crop, the source ignore region always pasted (its label stays ignore)
        mask = class_mix_mask(ys, rule="diga").to(xs.dtype)
        xt_aug = photometric(xt, blend=self.cfg.photometric_blend)
        x_mix = mix(mask, xs, xt_aug)
        y_mix = mix(mask, ys, yt_sel)

        s = self.student(torch.cat([xs, x_cd, x_mix]))["logits"]
        s_s, s_cd, s_mix = s[:n], s[n:2 * n], s[2 * n:]
        loss_src = seg_ce(s_s, ys)
        loss_mix = seg_ce(s_mix, y_mix)
        loss = loss_src + loss_mix
        logs = {"loss_src": loss_src.item(), "loss_mix": loss_mix.item()}
        lam = self.cfg.skd_weight
        if lam > 0:
            loss_skd = skd_loss(t_s, s_s, t_cd, s_cd, self.cfg.skd_reverse_weight)
            loss = loss + lam * loss_skd
            logs["loss_skd"] = loss_skd.item()
        valid = (yt != IGNORE).sum().clamp(min=1)
        logs["kept"] = ((yt_sel != IGNORE).sum() / valid).item()  # fraction of pseudo-labels DPS keeps

        if self.prototypes is not None:
            # prototypes follow the teacher as in DiGA's code: first the target images (selected pseudo-label
            # == teacher argmax), then the CDMix source view x_cd (source label == teacher argmax on x_cd)
            m = self.cfg.proto_momentum
            k = self.cfg.proto_min_pixels
            size = feat_t.shape[-2:]
            protos = update_prototypes(self.prototypes.to(feat_t.device), feat_t, resize_label(yt_sel, size),
                                       t_t.argmax(1), m, k)
            self.prototypes = update_prototypes(protos, t_feat[n:2 * n], resize_label(ys, size), t_cd.argmax(1),
                                                m, k)
        return loss, logs
