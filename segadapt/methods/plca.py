"""PLCA: Pixel-Level Cycle Association (Kang, Wei, Yang, Zhuang and Hauptmann, NeurIPS 2020).

A one-stage warm-up that uses unlabelled target images: source pixels are tied to target pixels by
cycle-consistent nearest neighbours, and each such association is strengthened.

For one source/target pair, pixel features s_i (i = 1..N, labels y_i) and t_j (j = 1..M) at the
feature map's resolution (labels downsampled by nearest):
    sim(i, j) = cos(s_i, t_j)                          feature level ("feat")
              = -KL(p_i || q_j)                        prediction level ("pred", softmax outputs)
    zs(r)_k   = (r_k - mean(r)) / std(r)               per row r, mean and std detached
    P_st[i]   = softmax(zs(sim(i, :)) / tau)           contrastive normalisation (tau = 1 in the paper)
    P_ts[j]   = softmax(zs(sim(j, :)) / tau)           the same, target -> source
    t_j      <- (1 - a) t_j + a sum_k A[j, k] t_k      spatial aggregation before associating (a = 0.5),
                                                       A = row-normalised sim(t, t)
    j*(i) = argmax_j sim(i, j),  i*(i) = argmax_i' sim(j*, i')        the cycle i -> j* -> i*
    L_assoc = -mean over valid cycles of log(P_st[i, j*] * P_ts[j*, i*]),  valid: y_i = y_i* != ignore
Total loss of a batch:
    L = CE_src + w_lov Lovasz_src + w_a (L_assoc(feat) + L_assoc(pred)) + w_r (R_src + R_tgt)
    R = mean over pixels of -(1/C) sum_c log p_c        (cross-entropy to the uniform distribution)
Paper / released-code values: w_a = 0.1, w_r = 0.01, w_lov = 0.75, a = 0.5, tau = 1.

Memory: the N x M similarity is never built whole. Rows are processed ``chunk`` at a time (a row's
mean/std, argmax and log-softmax need only that row), and each chunk of the differentiable part runs
under activation checkpointing, so forward and backward hold O(chunk * M) extra memory. ``max_pixels``
additionally samples at most that many pixels per image of a pair (global torch RNG).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from segadapt.data.labelspace import IGNORE
from segadapt.errors import UsageError
from segadapt.methods.base import Method, register_method
from segadapt.methods.common import resize_label, seg_ce
from segadapt.methods.lovasz import lovasz_softmax
from segadapt.schema import setting

EPS = 1e-10  # guards log(0) of probabilities and division by a zero row std (released code: 1e-10)
LEVELS = {"feat": "cos", "pred": "kl"}  # association level -> similarity it uses

@dataclass
class PLCAConfig:
    """The `plca:` section (paper / released-code values as defaults)."""
    lovasz_weight: float = setting(0.75, "w_lov: weight of Lovasz-softmax on source (released code: LOV_W = 0.75)",
                                   lo=0)
    assoc_weight: float = setting(0.1, "w_a: weight of each association level's loss (paper: 0.1)", lo=0)
    levels: list[str] = setting(["feat", "pred"], "association levels: feat = cosine of features, pred = -KL of "
                                "softmax outputs", choices=tuple(LEVELS))
    reg_weight: float = setting(0.01, "w_r: weight of R_src + R_tgt, cross-entropy to uniform (paper: 0.01)", lo=0)
    reg_thres: float = setting(0.0, "0 = plain R; > 0 = released code's variant pulling R toward this value", lo=0)
    spatial_agg: bool = setting(True, "mix each target pixel with its similarity-weighted average before associating")
    spatial_agg_alpha: float = setting(0.5, "a in t <- (1 - a) t + a A t (paper: 0.5)", lo=0, lo_open=True, hi=1)
    temperature: float = setting(1.0, "softmax temperature after the z-score (paper code: 1)", lo=0, lo_open=True)
    max_pixels: int = setting(0, "sample at most this many pixels per image of a pair (0 = all)", lo=0)
    chunk: int = setting(1024, "similarity rows computed at once; memory O(chunk x pixels) (0 = all rows)", lo=0)

    def check(self, prefix):
        if len(set(self.levels)) != len(self.levels):
            raise UsageError(f"{prefix}.levels must be a list of distinct levels out of feat, pred; "
                             f"got {self.levels!r}")


# -- the paper's pieces as plain functions (tested one by one) ----------------------------------

def embed(x: torch.Tensor, metric: str):
    """Row form a, offset c and column form b of pixels x (n, D) such that sim(x_i, y_j) = c_i + a_i . b_j
    (b taken from y). cos: a = b = x / |x|, c = 0. -KL(x_i || y_j) = -sum x_i log x_i + x_i . log y_j."""
    if metric == "cos":
        n = F.normalize(x, dim=1)
        return n, None, n
    if metric == "kl":
        log = torch.log(x + EPS)
        return x, -(x * log).sum(1), log
    raise UsageError(f"unknown similarity '{metric}' (cos, kl)")


def similarity_rows(a_rows: torch.Tensor, c_rows: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    sim = a_rows @ b.T
    return sim if c_rows is None else sim + c_rows[:, None]


def similarity(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """Full (n, m) similarity of pixels x (n, D) to pixels y (m, D); for tests and small inputs."""
    a, c, _ = embed(x, metric)
    return similarity_rows(a, c, embed(y, metric)[2])


def contrast_normalise(sim: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log P of each row: log-softmax of the row's z-score, its mean and std detached so that the
    normalisation only rescales (the gradient does not flow into the statistics)."""
    mean = sim.mean(1, keepdim=True).detach()
    std = sim.std(1, keepdim=True, correction=1 if sim.shape[1] > 1 else 0).detach()
    return F.log_softmax((sim - mean) / (std + EPS) / temperature, dim=1)


def _chunks(n: int, chunk: int | None):
    step = n if not chunk else chunk
    return [slice(i, min(i + step, n)) for i in range(0, n, max(step, 1))]


def _checkpointed(fn, *args):
    """Run fn so that its chunk-sized intermediates are recomputed in backward instead of kept."""
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _rows_argmax(a, c, b, chunk) -> torch.Tensor:
    with torch.no_grad():  # the association itself is a hard, non-differentiable choice
        return torch.cat([similarity_rows(a[sl], None if c is None else c[sl], b).argmax(1)
                          for sl in _chunks(a.shape[0], chunk)])


def _log_p_at(a_rows, c_rows, b, cols, temperature):
    return contrast_normalise(similarity_rows(a_rows, c_rows, b), temperature).gather(1, cols[:, None])[:, 0]


def _gather_log_p(a, c, b, rows, cols, temperature, chunk) -> torch.Tensor:
    """log P[rows[k], cols[k]] (P the contrast-normalised similarity), computed chunk by chunk of rows."""
    out = [_checkpointed(_log_p_at, a[rows[sl]], None if c is None else c[rows[sl]], b, cols[sl], temperature)
           for sl in _chunks(rows.numel(), chunk)]
    return torch.cat(out)


def _aggregate_rows(a_rows, c_rows, b, x, zscore, temperature):
    sim = similarity_rows(a_rows, c_rows, b)
    weights = contrast_normalise(sim, temperature).exp() if zscore else sim.softmax(1)
    return weights @ x


def spatial_aggregate(x: torch.Tensor, metric: str, alpha: float = 0.5, temperature: float = 1.0,
                      chunk: int | None = None) -> torch.Tensor:
    """x (M, D) -> (1 - alpha) x + alpha A x, A the row-normalised similarity of x to itself: z-score +
    softmax for cos, plain softmax for -KL (as the released code). Gives every target pixel a gradient,
    not only those picked as j*."""
    a, c, b = embed(x, metric)
    agg = [_checkpointed(_aggregate_rows, a[sl], None if c is None else c[sl], b, x, metric == "cos", temperature)
           for sl in _chunks(x.shape[0], chunk)]
    return (1 - alpha) * x + alpha * torch.cat(agg)


class Cycle(NamedTuple):
    loss_sum: torch.Tensor  # sum over valid cycles of -log(P_st[i, j*] P_ts[j*, i*])
    count: int              # number of valid cycles
    j_star: torch.Tensor    # (N,) target pixel each source pixel associates to
    i_star: torch.Tensor    # (N,) source pixel the cycle returns to
    valid: torch.Tensor     # (N,) bool


def cycle_association(src: torch.Tensor, tgt: torch.Tensor, label: torch.Tensor, metric: str,
                      temperature: float = 1.0, chunk: int | None = None) -> Cycle:
    """src (N, D), tgt (M, D) pixels (tgt already aggregated), label (N,) of the source pixels."""
    a_s, c_s, b_s = embed(src, metric)
    a_t, c_t, b_t = embed(tgt, metric)
    j_star = _rows_argmax(a_s, c_s, b_t, chunk)
    hit, back = torch.unique(j_star, return_inverse=True)  # only targets some source pixel reached
    i_star = _rows_argmax(a_t[hit], None if c_t is None else c_t[hit], b_s, chunk)[back]
    valid = (label != IGNORE) & (label[i_star] == label)
    vi = valid.nonzero()[:, 0]
    if vi.numel() == 0:
        return Cycle((src.sum() + tgt.sum()) * 0.0, 0, j_star, i_star, valid)
    log_st = _gather_log_p(a_s, c_s, b_t, vi, j_star[vi], temperature, chunk)
    # each target row j* is normalised once, however many cycles pass through it
    uj, inv = torch.unique(j_star[vi], return_inverse=True)
    first = torch.zeros_like(uj).scatter_(0, inv, vi)  # any valid source pixel through j*: same i*
    log_ts = _gather_log_p(a_t, c_t, b_s, uj, i_star[first], temperature, chunk)[inv]
    return Cycle(-(log_st + log_ts).sum(), int(vi.numel()), j_star, i_star, valid)


def sample_pixels(n: int, max_pixels: int) -> torch.Tensor | None:
    """Indices of at most max_pixels of n pixels, uniformly without replacement (global torch RNG);
    None = keep all."""
    if not max_pixels or n <= max_pixels:
        return None
    return torch.randperm(n)[:max_pixels]


def association_loss(src: torch.Tensor, tgt: torch.Tensor, label: torch.Tensor, metric: str, *,
                     spatial_agg: bool = True, alpha: float = 0.5, temperature: float = 1.0,
                     chunk: int | None = None, picks=None) -> tuple[torch.Tensor, float]:
    """L_assoc over a batch of pairs (source b with target b): src (B, D, h, w), tgt (B, D, h2, w2),
    label (B, h, w) at the source map's resolution; ``picks[b] = (source idx | None, target idx | None)``.
    Mean over all valid cycles of the batch (as the released code); also returns the fraction of labelled
    source pixels whose cycle is valid."""
    total, count, labelled = src.sum() * 0.0, 0, 0
    with torch.autocast(src.device.type, enabled=False):  # z-scores and log-softmax need full precision
        for b in range(src.shape[0]):
            s, t, y = src[b].float().flatten(1).T, tgt[b].float().flatten(1).T, label[b].flatten()
            si, ti = picks[b] if picks is not None else (None, None)
            if si is not None:
                si = si.to(s.device)
                s, y = s[si], y[si]
            if ti is not None:
                t = t[ti.to(t.device)]
            if spatial_agg:
                t = spatial_aggregate(t, metric, alpha, temperature, chunk)
            cyc = cycle_association(s, t, y, metric, temperature, chunk)
            total, count = total + cyc.loss_sum, count + cyc.count
            labelled += int((y != IGNORE).sum())
    return total / max(count, 1), count / max(labelled, 1)


def uniform_ce(logits: torch.Tensor, thres: float = 0.0) -> torch.Tensor:
    """R = mean over pixels of -(1/C) sum_c log p_c: cross-entropy to the uniform distribution, a label-
    smoothing-style brake on over-confidence. thres > 0: the released code's variant
    mean((r / thres - 1).detach() * r), whose gradient pulls each pixel's r toward thres."""
    r = -logits.float().log_softmax(1).mean(1)
    if thres > 0:
        return ((r / thres - 1.0).detach() * r).mean()
    return r.mean()


# -- the stage ------------------------------------------------------------------------------------

@register_method("warmup", "plca")
class PLCA(Method):
    target_batches = "target"
    config_class = PLCAConfig

    def training_step(self, batch, iteration):
        s = self.cfg
        xs, ys = batch["source"]["image"], batch["source"]["label"]
        xt = batch["target"]["image"]
        # two forward passes (target, then source) as the released code: BatchNorm sees each domain apart
        out_t = self.student(xt)
        out_s = self.student(xs)
        ls, lt = out_s["logits"], out_t["logits"]

        loss = seg_ce(ls, ys)
        logs = {"loss_ce": loss.item()}
        if s.lovasz_weight > 0:
            probs = F.interpolate(ls.float(), size=ys.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
            lov = lovasz_softmax(probs, ys)
            loss = loss + s.lovasz_weight * lov
            logs["loss_lovasz"] = lov.item()
        if s.assoc_weight > 0 and s.levels:
            y_feat = resize_label(ys, ls.shape[-2:])
            n_src, n_tgt = ls.shape[-2] * ls.shape[-1], lt.shape[-2] * lt.shape[-1]
            # one sample of pixels per pair, shared by both levels so they associate the same pixels
            picks = [(sample_pixels(n_src, s.max_pixels), sample_pixels(n_tgt, s.max_pixels))
                     for _ in range(xs.shape[0])]
            maps = {"feat": (out_s["feat"], out_t["feat"]), "pred": (ls.float().softmax(1), lt.float().softmax(1))}
            for level in s.levels:
                src, tgt = maps[level]
                la, frac = association_loss(src, tgt, y_feat, LEVELS[level], spatial_agg=s.spatial_agg,
                                            alpha=s.spatial_agg_alpha, temperature=s.temperature,
                                            chunk=s.chunk, picks=picks)
                loss = loss + s.assoc_weight * la
                logs[f"loss_assoc_{level}"] = la.item()
                logs[f"cycles_{level}"] = frac  # fraction of labelled source pixels with a valid cycle
        if s.reg_weight > 0:
            reg = uniform_ce(ls, s.reg_thres) + uniform_ce(lt, s.reg_thres)
            loss = loss + s.reg_weight * reg
            logs["loss_reg"] = reg.item()
        return loss, logs
