"""T2S-DA: Pulling Target to Source (self-training add-on with an EMA teacher).

The paper's code is not public: every choice below that the paper leaves open is ours (marked "ours").

Inputs per iteration: a labelled source batch (x_s, y_s) and a target batch x_t with its offline
pseudo-labels y_t (``segadapt pseudo-label``). S = student, T = EMA teacher, g_S / g_T = projection
heads (1x1 conv -> BN -> ReLU -> 1x1 conv to proj_dim, outputs L2-normalised), g_T the EMA of g_S.

    x_pt = FDA(x_s, x_t)                              pseudo-target: source restyled to target, label y_s
    p_t  = softmax(T(x_t)),  c_t = max p_t,  yhat_t = argmax p_t       online teacher on the target
    x_mix, y_mix = ClassMix(x_s -> aug(x_t); y_s, y_t')                  y_t' = offline pseudo-labels
                                                                          (or agreement with / the teacher's)
    L_st = CE(S(x_s), y_s) + w_pt CE(S(x_pt), y_s) + w_mix CE(S(x_mix), y_mix)      self-training
Contrastive term (feature resolution):
    q        = g_S(f_S(x_pt))_i                       query, a pseudo-target pixel of class c = y_s[i]
    k+       = P_c = normalise(mean of g_T(f_T(x_s)) over source pixels of class c)   source prototype
    k-_j     = g_T(f_T(x_s))_j with y_s[j] != c       (source negatives, m/2 of them)
               g_T(f_T(x_t))_j with c_t[j] < thr and yhat_t[j] != c   (unreliable target, m/2 of them)
    l(q)     = -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_j exp(q.k-_j/tau))            InfoNCE
    L_con    = sum_q w_c(q) l(q) / sum_q w_c(q)
Queries are drawn class-balanced: n_c = largest-remainder share of num_queries by pi_c, pi = EMA of
the teacher's target class frequencies restricted to the classes present in the pseudo-target batch and
renormalised (a class the teacher never predicts on the target gets no queries; when no present class
has mass, queries fall back to uniform over pixels).
Dynamic re-weighting: w_c = (1 - conf_c)^gamma normalised to mean 1 over classes, conf_c = EMA of the
teacher's mean confidence on target pixels it predicts as c (no target labels involved).
    L = L_st + lambda * L_con

Our choices (the paper leaves them open):
- Self-training part: DiGA-style CE on ClassMix (source classes pasted onto a photometrically
  augmented target crop) with the *offline* pseudo-labels (``pseudo_label: offline``); ``agree``
  keeps an offline label only where the online teacher agrees, ``teacher`` uses the teacher's argmax.
  The online teacher always supplies the confidence for unreliable-pixel negatives, the class
  frequencies for query sampling and the per-class confidence for re-weighting.
- Pseudo-target images also get a CE with the source label (they keep it); weight 0 switches it off.
- Keys (prototypes and negatives) come from the EMA teacher's projection head and carry no gradient;
  only queries do. Prototypes: an EMA memory over iterations (``prototype: ema``; first sighting of a
  class initialises it) or the current batch only (``prototype: batch``). Queries of a class without
  a prototype are skipped.
- A target pixel is a negative for class c when the teacher is unreliable there (confidence below
  ``unreliable_threshold``) and its argmax is not c. Negatives are drawn with replacement from the
  current batch (no queue across iterations); when one domain has none for a class, all m come from
  the other domain.
- Query classes with fewer pixels than their quota are sampled with replacement so the class mix
  follows pi exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segadapt.data.labelspace import IGNORE
from segadapt.data.mixing import FDA_WINDOWS, class_mix_mask, mix, photometric
from segadapt.engine.ema import BN_MODES, DEFAULT_BN
from segadapt.errors import UsageError
from segadapt.methods.base import Method, MethodState, register_method
from segadapt.methods.common import MeanTeacher, class_feature_means, resize_label, weighted_seg_ce
from segadapt.methods.diga import translate
from segadapt.schema import setting

QUERY_SAMPLING = ("balanced", "equal", "uniform")


@dataclass
class T2SConfig:
    """The `t2s:` section. The paper's code is not public: every default is our choice unless marked."""
    # self-training part (DiGA-style, on the offline pseudo-labels); a weight of 0 switches a term off
    source_ce_weight: float = setting(1.0, "CE(S(x_s), y_s) on clean source", lo=0)
    pseudo_target_ce_weight: float = setting(1.0, "CE(S(x_pt), y_s): pseudo-targets keep the source label", lo=0)
    mix_ce_weight: float = setting(1.0, "CE(S(x_mix), y_mix): ClassMix of source classes onto the target crop", lo=0)
    pseudo_label: str = setting("offline", "target labels inside ClassMix: offline (pseudo-label folder), agree "
                                "(offline where the online teacher agrees), teacher (online argmax)",
                                choices=("offline", "agree", "teacher"))
    translator: str = setting("fda", "pseudo-target restyling: fda (paper); none = plain source",
                              choices=("fda", "none"))
    fda_beta: float = setting(0.01, "FDA window, a fraction of min(H, W)", lo=0)
    fda_window: str = setting("centre", "centre: (2b+1)^2 square of the spectrum, clamped; corner: FDA's training "
                              "code (4 b x b blocks, unclamped)", choices=FDA_WINDOWS)
    photometric_blend: float = setting(0.4, "photometric augmentation strength of the target crop in ClassMix "
                                       "(DiGA: 0.4)", lo=0, hi=1)
    ema_alpha: float = setting(0.999, "teacher EMA cap: alpha_t = min(1 - 1/(t+1), ema_alpha)", lo=0, hi=1)
    ema_bn: str = setting(DEFAULT_BN, "teacher: batch = BN on batch statistics, dropout off (DAFormer's); "
                          "averaged = eval mode, BN statistics averaged", choices=BN_MODES)
    # contrastive term: pseudo-target queries pulled to source class prototypes (InfoNCE)
    contrastive_weight: float = setting(0.1, "lambda; 0 = plain self-training (ablation)", lo=0)
    proj_dim: int = setting(128, "output channels of the projection head (1x1 conv-BN-ReLU-1x1 conv, L2-normalised)",
                            lo=1)
    tau: float = setting(0.1, "InfoNCE temperature", lo=0, lo_open=True)
    num_queries: int = setting(256, "queries per iteration, over the whole pseudo-target batch", lo=1)
    num_negatives: int = setting(256, "m: negatives per query (drawn with replacement from the current batch)", lo=1)
    unreliable_threshold: float = setting(0.9, "target pixels whose teacher confidence is below this are negatives",
                                          lo=0, hi=1)
    prototype: str = setting("ema", "source prototypes: ema (memory across iterations) or batch (current batch)",
                             choices=("ema", "batch"))
    proto_momentum: float = setting(0.01, "EMA momentum of the prototype memory (first sighting initialises it)",
                                    lo=0, lo_open=True, hi=1)
    query_sampling: str = setting("balanced", "balanced (classes follow the EMA of the teacher's target class "
                                  "frequencies), equal (same share per class), uniform (pixels uniformly)",
                                  choices=QUERY_SAMPLING)
    equalise_negatives: bool = setting(True, "m/2 negatives from source, m/2 from unreliable target; false = pooled")
    reweighting: bool = setting(True, "dynamic class weights w_c ~ (1 - conf_c)^gamma (mean 1) on the queries")
    reweight_gamma: float = setting(0.5, "gamma; 0 = uniform weights", lo=0)
    reweight_segmentation: bool = setting(False, "also weight the segmentation CE terms by w_c")
    stats_momentum: float = setting(0.01, "EMA momentum of the teacher's target class frequencies and confidences",
                                    lo=0, lo_open=True, hi=1)

    def check(self, prefix):
        if self.equalise_negatives and self.num_negatives % 2:
            raise UsageError(f"{prefix}.num_negatives must be even when equalise_negatives is on (m/2 per domain), "
                             f"got {self.num_negatives}")


# -- the paper's pieces as plain functions (tested one by one) ----------------------------------

class ProjectionHead(nn.Module):
    """1x1 conv -> BN -> ReLU -> 1x1 conv to ``proj_dim``; output L2-normalised over channels."""

    def __init__(self, in_dim: int, proj_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1, bias=False), nn.BatchNorm2d(in_dim),
                                 nn.ReLU(inplace=True), nn.Conv2d(in_dim, proj_dim, 1))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(feat).float(), dim=1)


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, tau: float,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """query (Q, P), positive (Q, P), negatives (Q, M, P), all L2-normalised by the caller.
    l_q = -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_j exp(q.k-_j/tau)); returns sum w l / sum w
    (plain mean without weights)."""
    pos = (query * positive).sum(-1, keepdim=True)  # (Q, 1)
    neg = torch.einsum("qp,qmp->qm", query, negatives)  # (Q, M)
    logits = torch.cat([pos, neg], 1) / tau
    loss = -logits.log_softmax(1)[:, 0]
    if weights is None:
        return loss.mean()
    return (weights * loss).sum() / weights.sum().clamp(min=1e-12)


def ema_rows(memory: torch.Tensor, seen: torch.Tensor, values: torch.Tensor, present: torch.Tensor,
             momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class EMA memory: rows observed now move by ``momentum`` towards ``values``; a row seen for
    the first time takes the value as is (a zero start would bias early estimates); others stay."""
    present = present.to(memory.device)
    values = values.to(memory)
    shape = (-1,) + (1,) * (memory.dim() - 1)
    blended = torch.where(seen.view(shape), (1 - momentum) * memory + momentum * values, values)
    out = torch.where(present.view(shape), blended, memory)
    return out, seen | present


def source_prototypes(keys: torch.Tensor, label: torch.Tensor, num_classes: int):
    """Per-class mean of projected source features (keys (B, P, h, w), label at feature resolution),
    re-normalised. Returns (prototypes (C, P), present (C,) bool)."""
    means, counts = class_feature_means(keys, label, num_classes)
    return F.normalize(means, dim=1), counts > 0


def largest_remainder(weights: torch.Tensor, total: int) -> torch.Tensor:
    """Integer counts summing to ``total`` proportional to ``weights`` (Hamilton's rule): floors of the
    exact quotas, the remainder to the largest fractional parts (ties to the lower class index)."""
    w = weights.double().clamp(min=0)
    if total <= 0 or w.sum() <= 0:
        return torch.zeros_like(w, dtype=torch.long)
    quota = w / w.sum() * total
    counts = quota.floor().long()
    rest = total - int(counts.sum())
    if rest > 0:
        frac = quota - counts.double()
        order = torch.sort(-frac, stable=True).indices  # stable: equal fractions go to the lower index
        counts[order[:rest]] += 1
    return counts


def _pick(n_avail: int, k: int, generator=None, device=None) -> torch.Tensor:
    """k indices into range(n_avail): without replacement when possible, with replacement otherwise."""
    if k <= n_avail:
        return torch.randperm(n_avail, generator=generator)[:k].to(device)
    return torch.randint(0, n_avail, (k,), generator=generator).to(device)


def sample_queries(labels: torch.Tensor, num: int, dist: torch.Tensor | None, mode: str,
                   generator=None) -> torch.Tensor:
    """Indices of ``num`` query pixels among ``labels`` (N,) (IGNORE never chosen).

    balanced: classes follow ``dist`` (C,) restricted to the classes present, n_c by largest remainder;
    equal: every present class the same share; uniform: pixels drawn uniformly (classes then follow
    the raw pixel counts). Falls back to uniform when ``dist`` gives no mass to any present class."""
    valid = (labels != IGNORE).nonzero().view(-1)
    if valid.numel() == 0 or num <= 0:
        return torch.zeros(0, dtype=torch.long, device=labels.device)
    num_classes = int(dist.numel()) if dist is not None else int(labels[valid].max()) + 1
    counts = torch.bincount(labels[valid], minlength=num_classes)
    present = counts > 0
    if mode in ("balanced", "equal"):
        share = dist.float().cpu() if mode == "balanced" else torch.ones(num_classes)
        share = torch.where(present.cpu(), share.clamp(min=0), torch.zeros_like(share))
        if share.sum() > 0:
            n_c = largest_remainder(share, num)
            picks = []
            for c in n_c.nonzero().view(-1).tolist():
                pix = valid[labels[valid] == c]
                picks.append(pix[_pick(pix.numel(), int(n_c[c]), generator, pix.device)])
            return torch.cat(picks)
    elif mode != "uniform":
        raise UsageError(f"unknown query_sampling '{mode}' ({', '.join(QUERY_SAMPLING)})")
    return valid[_pick(valid.numel(), num, generator, valid.device)]


def sample_negatives(query_cls: torch.Tensor, bank_cls: torch.Tensor, bank_is_target: torch.Tensor, m: int,
                     equalise: bool, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (Q, m) into the key bank of negatives for each query: bank entries of another class.

    equalise: m // 2 from source entries and m - m // 2 from target entries (all m from one domain when
    the other has none for that class); otherwise m drawn from both domains together (the domains then
    contribute by pool size). Drawn with replacement. Also returns valid (Q,): False where a query's
    class has no negative at all (such queries are dropped)."""
    q = query_cls.numel()
    idx = torch.zeros(q, m, dtype=torch.long, device=query_cls.device)
    valid = torch.zeros(q, dtype=torch.bool, device=query_cls.device)
    for c in query_cls.unique().tolist():
        rows = (query_cls == c).nonzero().view(-1)
        other = bank_cls != c
        pools = ([(other & ~bank_is_target).nonzero().view(-1), (other & bank_is_target).nonzero().view(-1)]
                 if equalise else [other.nonzero().view(-1)])
        sizes = [m // 2, m - m // 2] if equalise else [m]
        if equalise and pools[0].numel() == 0:
            sizes = [0, m]
        elif equalise and pools[1].numel() == 0:
            sizes = [m, 0]
        if all(p.numel() == 0 for p in pools):
            continue
        parts = [pool[torch.randint(0, pool.numel(), (rows.numel(), k), generator=generator).to(pool.device)]
                 for pool, k in zip(pools, sizes) if k > 0]
        idx[rows] = torch.cat(parts, 1)
        valid[rows] = True
    return idx, valid


def class_weights(conf: torch.Tensor, gamma: float, eps: float = 1e-3) -> torch.Tensor:
    """Dynamic re-weighting w_c = (1 - conf_c)^gamma, normalised to mean 1 over classes: classes the
    teacher is unsure about (a proxy for doing badly, no target labels needed) weigh more. ``eps``
    keeps a class at confidence 1 from vanishing (and the normalisation finite)."""
    w = (1 - conf.float()).clamp(min=eps) ** gamma
    return w / w.mean()


def target_class_stats(prob: torch.Tensor, num_classes: int):
    """From teacher probabilities on the target (B, C, h, w): the fraction of pixels predicted as each
    class (C,), the mean confidence of those pixels (C,), and which classes were predicted (C,) bool."""
    conf, pred = prob.max(1)
    pred, conf = pred.reshape(-1), conf.reshape(-1).float()
    counts = torch.bincount(pred, minlength=num_classes).float()
    conf_sum = torch.zeros(num_classes, device=prob.device).index_add_(0, pred, conf)
    return counts / counts.sum().clamp(min=1), conf_sum / counts.clamp(min=1), counts > 0




# -- the method -----------------------------------------------------------------------------------

@register_method("self-train", "t2s")
class T2S(Method):
    teacher_dropout = False
    target_batches = "pseudo"
    config_class = T2SConfig

    def __init__(self, cfg, student, num_classes):
        # the pseudo-label folder's prototypes (in the model's feature space) are not used: T2S keeps its
        # own source prototypes in the projection space
        super().__init__(cfg, student, num_classes)
        feat_dim = int(student.spec.get("feat_dim", 0)) if hasattr(student, "spec") else 0
        if feat_dim <= 0:
            with torch.no_grad():
                was = student.training
                feat_dim = student.eval()(torch.zeros(1, 3, 16, 16))["feat"].shape[1]
                student.train(was)
        # t2s.ema_bn: batch = BN on batch statistics, parameters averaged, dropout off (DAFormer's EMA teacher;
        # our choice, T2S has no public code); averaged = eval mode with averaged BN statistics
        self.projector = ProjectionHead(feat_dim, self.cfg.proj_dim)
        self.mean_teacher = MeanTeacher([student, self.projector], self.cfg.ema_bn, self.teacher_dropout,
                                        self.cfg.ema_alpha)
        self.teacher, self.teacher_projector = self.mean_teacher.teachers
        c = num_classes
        # online estimates (buffers of the checkpointed "method_state" module, so a resumed run continues exactly)
        no = torch.zeros(c, dtype=torch.bool)
        self.state = MethodState(prototypes=torch.zeros(c, self.cfg.proj_dim), proto_seen=no.clone(),
                                 dist=torch.zeros(c), dist_seen=no.clone(), conf=torch.zeros(c), conf_seen=no.clone())

    # -- engine hooks ----------------------------------------------------------------------------
    def modules(self):
        return {"student": self.student, "teacher": self.teacher, "projector": self.projector,
                "teacher_projector": self.teacher_projector, "method_state": self.state}

    def param_groups(self):
        # the projection head is new at this stage: it trains at the head learning rate (optim.py
        # gives every group other than "backbone" the head multiplier)
        return {**self.student.param_groups(), "projector": list(self.projector.parameters())}

    def train(self):
        self.student.train()
        self.projector.train()

    def after_step(self, iteration):
        self.mean_teacher.update(iteration)

    # -- pieces of one iteration -------------------------------------------------------------------
    def _update_stats(self, prob_t: torch.Tensor) -> None:
        freq, conf, present = target_class_stats(prob_t, self.num_classes)
        m, s = self.cfg.stats_momentum, self.state
        everything = torch.ones_like(present)  # every class's frequency is observed (0 is a value too)
        s["dist"], s["dist_seen"] = ema_rows(s["dist"].to(freq.device), s["dist_seen"].to(freq.device), freq,
                                             everything, m)
        s["conf"], s["conf_seen"] = ema_rows(s["conf"].to(conf.device), s["conf_seen"].to(conf.device), conf,
                                             present, m)

    def _weights(self) -> torch.Tensor | None:
        if not self.cfg.reweighting:
            return None
        conf, seen = self.state["conf"], self.state["conf_seen"]
        # classes the teacher has not predicted yet: the mean confidence of those it has (no evidence either way)
        fill = conf[seen].mean() if seen.any() else torch.tensor(0.0, device=conf.device)
        return class_weights(torch.where(seen, conf, fill), self.cfg.reweight_gamma)

    def _target_labels(self, yt: torch.Tensor, t_logits_t: torch.Tensor) -> torch.Tensor:
        mode = self.cfg.pseudo_label
        if mode == "offline":
            return yt
        up = F.interpolate(t_logits_t.float(), size=yt.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
        if mode == "teacher":
            return up
        return torch.where(yt == up, yt, torch.full_like(yt, IGNORE))  # agree

    def contrastive(self, q_map, ys, keys_s, keys_t, conf_t, pred_t, weights):
        """L_con from the pseudo-target queries q_map (B, P, h, w) with source labels ys (full size), the
        teacher keys on source / target (B, P, h, w) and the teacher's confidence / argmax on target."""
        o, s = self.cfg, self.state
        size = q_map.shape[-2:]
        ys_small = resize_label(ys, size)
        p = q_map.shape[1]
        batch_protos, present = source_prototypes(keys_s, ys_small, self.num_classes)
        if o.prototype == "ema":
            mem, seen = ema_rows(s["prototypes"].to(batch_protos), s["proto_seen"].to(present.device), batch_protos,
                                 present, o.proto_momentum)
            s["prototypes"], s["proto_seen"] = mem, seen
            protos, has_proto = F.normalize(mem, dim=1), seen
        else:
            protos, has_proto = batch_protos, present
        # key bank: labelled source pixels, and unreliable target pixels labelled by the teacher's argmax
        src_cls = ys_small.reshape(-1)
        src_keys = keys_s.permute(0, 2, 3, 1).reshape(-1, p)
        keep_s = src_cls != IGNORE
        unreliable = (conf_t < o.unreliable_threshold).reshape(-1)
        tgt_keys = keys_t.permute(0, 2, 3, 1).reshape(-1, p)[unreliable]
        tgt_cls = pred_t.reshape(-1)[unreliable]
        bank = torch.cat([src_keys[keep_s], tgt_keys])
        bank_cls = torch.cat([src_cls[keep_s], tgt_cls])
        bank_is_target = torch.cat([torch.zeros(int(keep_s.sum()), dtype=torch.bool, device=bank.device),
                                    torch.ones(tgt_cls.numel(), dtype=torch.bool, device=bank.device)])
        # queries: pseudo-target pixels of classes that have a source prototype
        q_cls_all = ys_small.reshape(-1)
        q_cls_all = torch.where((q_cls_all != IGNORE) & has_proto[q_cls_all.clamp(max=self.num_classes - 1)],
                                q_cls_all, torch.full_like(q_cls_all, IGNORE))
        pick = sample_queries(q_cls_all, o.num_queries, s["dist"], o.query_sampling)
        info = {"queries": float(pick.numel()), "unreliable": float(unreliable.float().mean())}
        if pick.numel() == 0 or bank.shape[0] == 0:
            return q_map.sum() * 0.0, info
        q_cls = q_cls_all[pick]
        neg_idx, ok = sample_negatives(q_cls, bank_cls, bank_is_target, o.num_negatives, o.equalise_negatives)
        if not bool(ok.any()):
            return q_map.sum() * 0.0, info
        q = q_map.permute(0, 2, 3, 1).reshape(-1, p)[pick][ok]
        q_cls, neg_idx = q_cls[ok], neg_idx[ok]
        w = weights.to(q.device)[q_cls] if weights is not None else None
        with torch.autocast(q.device.type, enabled=False):  # similarities / tau in float32
            return info_nce(q.float(), protos[q_cls].float(), bank[neg_idx].float(), o.tau, w), info

    # -- one iteration -------------------------------------------------------------------------------
    def training_step(self, batch, iteration):
        o = self.cfg
        xs, ys = batch["source"]["image"], batch["source"]["label"]
        xt, yt = batch["target"]["image"], batch["target"]["label"]
        n = xs.shape[0]
        use_con = o.contrastive_weight > 0
        def run_teacher(x):
            out = self.teacher(x)
            return {**out, "keys": self.teacher_projector(out["feat"])} if use_con else out

        # source and target as two teacher batches (their own BN statistics with ema_bn: batch)
        t = self.mean_teacher.forward(run_teacher, xs, xt)
        with torch.no_grad():
            t_logits_t = t["logits"][n:]
            prob_t = t_logits_t.float().softmax(1)
            conf_t, pred_t = prob_t.max(1)
            self._update_stats(prob_t)
            if use_con:
                keys_s, keys_t = t["keys"][:n], t["keys"][n:]
        weights = self._weights()
        seg_w = weights if o.reweight_segmentation else None

        # views: pseudo-target (FDA-restyled source, source label) and ClassMix of source onto target
        views, names = [], []
        if o.source_ce_weight > 0:
            views.append(xs), names.append("src")
        if o.pseudo_target_ce_weight > 0 or use_con:
            views.append(translate(xs, xt, o)), names.append("pt")
        if o.mix_ce_weight > 0:
            mask = class_mix_mask(ys, rule="diga").to(xs.dtype)  # DiGA's ClassMix (ignore region pasted)
            xt_aug = photometric(xt, blend=o.photometric_blend)
            views.append(mix(mask, xs, xt_aug)), names.append("mix")
            y_mix = mix(mask, ys, self._target_labels(yt, t_logits_t))
        if not views:
            raise UsageError("t2s: every loss weight is 0, nothing to train")
        out = self.student(torch.cat(views))
        part = {name: slice(i * n, (i + 1) * n) for i, name in enumerate(names)}
        loss = out["logits"].sum() * 0.0
        logs = {}
        for name, key, label in (("src", "source_ce_weight", ys), ("pt", "pseudo_target_ce_weight", ys),
                                 ("mix", "mix_ce_weight", y_mix if "mix" in part else None)):
            if name in part and getattr(o, key) > 0:
                term = weighted_seg_ce(out["logits"][part[name]], label, class_weight=seg_w)
                loss = loss + getattr(o, key) * term
                logs[f"loss_{name}"] = term.item()
        if use_con:
            q_map = self.projector(out["feat"][part["pt"]])
            loss_con, info = self.contrastive(q_map, ys, keys_s, keys_t, conf_t, pred_t, weights)
            loss = loss + o.contrastive_weight * loss_con
            logs["loss_con"] = loss_con.item()
            logs.update(info)
        if weights is not None:
            logs["weight_max"] = float(weights.max())
        return loss, logs
