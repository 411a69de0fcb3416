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

from pathlib import Path

import torch
import torch.nn.functional as F

from segadapt.data.labelspace import IGNORE
from segadapt.data.mixing import FDA_WINDOWS, class_mix_mask, fda, mix, photometric
from segadapt.engine.ema import DEFAULT_BN, check_bn_mode, ema_step, make_teacher, teacher_forward
from segadapt.errors import DataError, SegadaptError, UsageError
from segadapt.methods.base import Method, MethodState, register_method, seg_ce, soft_ce, state_buffer


# -- the paper's pieces as plain functions (tested one by one) ----------------------------------

def skd_loss(t_clean, s_clean, t_mixed, s_mixed, reverse_weight: float) -> torch.Tensor:
    """L_SKD = H(T(x) -> S(x_cd)) + w * H(T(x_cd) -> S(x))."""
    return soft_ce(t_clean, s_mixed) + reverse_weight * soft_ce(t_mixed, s_clean)


def translate(x: torch.Tensor, target_images: torch.Tensor, cfg: dict, generator=None, net=None) -> torch.Tensor:
    """Restyle source images toward the target domain. 'fda' swaps the low-frequency amplitude with a
    random target image of the batch (training-free stand-in for DiGA's translation GAN); a checkpoint
    path runs its trained generator ``net`` (see ``load_translator``), frozen."""
    kind = cfg.get("translator", "fda")
    if kind == "fda":
        pick = torch.randint(0, target_images.shape[0], (x.shape[0],), generator=generator)
        return fda(x, target_images[pick.to(target_images.device)], float(cfg.get("fda_beta", 0.01)),
                   fda_window(cfg))
    if kind == "none":
        return x
    if net is None:
        raise UsageError(f"translator '{kind}': load the generator with load_translator first")
    with torch.no_grad():
        return net(x).to(x.dtype)


def fda_window(cfg: dict, name: str = "diga") -> str:
    """The section's ``fda_window`` (centre, the default, or corner: see :func:`segadapt.data.mixing.fda`)."""
    window = cfg.get("fda_window", "centre")
    if window not in FDA_WINDOWS:
        raise UsageError(f"{name}.fda_window must be one of {', '.join(FDA_WINDOWS)}, got {window!r}")
    return window


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


def downsample_label(label: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0].long()


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
    nearest = F.interpolate(nearest[:, None].float(), size=pseudo_label.shape[-2:], mode="nearest")[:, 0].long()
    return torch.where(pseudo_label == nearest, pseudo_label, torch.full_like(pseudo_label, IGNORE))


def class_feature_means(feat: torch.Tensor, label: torch.Tensor, num_classes: int, per_image: bool = False):
    """Mean feature of each class over pixels with label c (label at feature resolution; IGNORE and any
    value >= num_classes skipped). Pooled over the batch: (means (C, D), counts (C,)); with ``per_image``,
    one row per image: (means (B, C, D), counts (B, C)), a class absent from an image has mean 0, count 0."""
    b, d = feat.shape[:2]
    f = feat.permute(0, 2, 3, 1).reshape(b, -1, d).float()
    lab = label.reshape(b, -1).long()
    valid = lab < num_classes
    # one row per (image, class): index image * C + class
    row = (lab + num_classes * torch.arange(b, device=lab.device)[:, None])[valid]
    sums = torch.zeros(b * num_classes, d, device=feat.device).index_add_(0, row, f[valid]).view(b, num_classes, d)
    counts = torch.bincount(row, minlength=b * num_classes).to(feat.device).view(b, num_classes)
    if not per_image:
        sums, counts = sums.sum(0), counts.sum(0)
    return sums / counts.clamp(min=1)[..., None], counts


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
        self.ema_bn = check_bn_mode(self.cfg.get("ema_bn", DEFAULT_BN), self.name)
        fda_window(self.cfg)  # a bad value fails before training starts
        self.teacher = make_teacher(student, self.ema_bn, self.teacher_dropout)
        self.generator = None  # the engine reseeds torch's global RNG every iteration
        # a trained translator (a checkpoint path): loaded once, frozen, never checkpointed with the student
        kind = str(self.cfg.get("translator", "fda"))
        self.translator_net = load_translator(kind) if kind not in ("fda", "none") else None

    def modules(self):
        return {"student": self.student, "teacher": self.teacher}

    def after_step(self, iteration):
        ema_step([(self.teacher, self.student)], iteration, float(self.cfg.get("ema_alpha", 0.999)), self.ema_bn)

    def run_teacher(self, *groups):
        """Teacher outputs for the image batches ``groups``, concatenated (see ``teacher_forward``)."""
        return teacher_forward(self.teacher, groups, [self.teacher], self.ema_bn, self.teacher_dropout)

    def _views(self, x, y, target_images):
        """x_aug and x_cd of a source batch (x_cd = x_aug when CDMix is switched off)."""
        x_aug = photometric(x, self.generator, blend=float(self.cfg.get("photometric_blend", 0.4)))
        net = self.translator_net
        if self.cfg.get("cdmix", True) and (target_images is not None or net is not None):
            if net is not None:
                net.to(x.device)  # once: the student's device (no-op afterwards)
            x_cd, _ = cdmix(x, x_aug, y, translate(x, target_images, self.cfg, self.generator, net), self.generator)
        else:
            x_cd = x_aug
        return x_aug, x_cd


@register_method("warmup", "diga")
class DigaWarmup(_WithTeacher):

    @property
    def target_batches(self):
        # only FDA needs target images; a trained translator has learnt the target style
        return "target" if self.cfg.get("cdmix", True) and self.cfg.get("translator", "fda") == "fda" else None

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
        if self.cfg.get("ce_on_mixed", True):
            loss_cd = seg_ce(s_cd, y)
            loss = loss + loss_cd
            logs["loss_ce_mixed"] = loss_cd.item()
        lam = float(self.cfg.get("skd_weight", 0.5))
        if lam > 0:
            t = self.run_teacher(torch.cat([x, x_cd]))["logits"]  # one batch, as DiGA's teacher(sdatav_cat)
            loss_skd = skd_loss(t[:n], s_x, t[n:], s_cd, float(self.cfg.get("skd_reverse_weight", 0.5)))
            loss = loss + lam * loss_skd
            logs["loss_skd"] = loss_skd.item()
        return loss, logs


@register_method("self-train", "diga")
class DigaSelfTrain(_WithTeacher):
    target_batches = "pseudo"
    prototypes = state_buffer()  # (C, D) float32, or None without the folder's prototypes.pt

    def __init__(self, cfg, student, num_classes):
        super().__init__(cfg, student, num_classes)
        # the class prototypes, from the pseudo-label folder (use_pseudo_labels), moved as training goes
        self.state = MethodState(prototypes=None)
        # a fixed confidence threshold needs each target crop's confidence map next to its pseudo-label
        self.needs_confidence = self.cfg.get("selection", "dps") == "threshold"

    def use_pseudo_labels(self, folder):
        prototypes = folder.prototypes()
        if self.cfg.get("selection", "dps") == "dps" and prototypes is None:
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

        selection = self.cfg.get("selection", "dps")
        if selection == "threshold":  # the fixed-threshold baseline of DiGA's ablation
            conf = batch["target"]["confidence"]
            yt_sel = torch.where(conf >= float(self.cfg.get("threshold", 0.9)), yt, torch.full_like(yt, IGNORE))
        elif selection == "dps":
            yt_sel = dps_select(yt, feat_t, self.prototypes.to(feat_t.device))
        elif selection == "none":
            yt_sel = yt
        else:
            raise UsageError(f"unknown pseudo-label selection '{selection}' (dps, threshold, none)")

        # ClassMix as DiGA's code: half of the source label values pasted onto a photometrically augmented
        # target crop, the source ignore region always pasted (its label stays ignore)
        mask = class_mix_mask(ys, self.generator, rule="diga").to(xs.dtype)
        xt_aug = photometric(xt, self.generator, blend=float(self.cfg.get("photometric_blend", 0.4)))
        x_mix = mix(mask, xs, xt_aug)
        y_mix = mix(mask, ys, yt_sel)

        s = self.student(torch.cat([xs, x_cd, x_mix]))["logits"]
        s_s, s_cd, s_mix = s[:n], s[n:2 * n], s[2 * n:]
        loss_src = seg_ce(s_s, ys)
        loss_mix = seg_ce(s_mix, y_mix)
        loss = loss_src + loss_mix
        logs = {"loss_src": loss_src.item(), "loss_mix": loss_mix.item()}
        lam = float(self.cfg.get("skd_weight", 0.25))
        if lam > 0:
            loss_skd = skd_loss(t_s, s_s, t_cd, s_cd, float(self.cfg.get("skd_reverse_weight", 0.5)))
            loss = loss + lam * loss_skd
            logs["loss_skd"] = loss_skd.item()
        valid = (yt != IGNORE).sum().clamp(min=1)
        logs["kept"] = ((yt_sel != IGNORE).sum() / valid).item()  # fraction of pseudo-labels DPS keeps

        if self.prototypes is not None:
            # prototypes follow the teacher as in DiGA's code: first the target images (selected pseudo-label
            # == teacher argmax), then the CDMix source view x_cd (source label == teacher argmax on x_cd)
            m = float(self.cfg.get("proto_momentum", 1e-4))
            k = int(self.cfg.get("proto_min_pixels", 5))
            size = feat_t.shape[-2:]
            protos = update_prototypes(self.prototypes.to(feat_t.device), feat_t, downsample_label(yt_sel, size),
                                       t_t.argmax(1), m, k)
            self.prototypes = update_prototypes(protos, t_feat[n:2 * n], downsample_label(ys, size), t_cd.argmax(1),
                                                m, k)
        return loss, logs
