"""Lovász-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018), the surrogate of the Jaccard
(IoU) loss that PLCA adds to the source cross-entropy.

For class c with ground-truth set F_c, the Jaccard loss of a set M of mispredicted pixels is
    Delta_c(M) = |M| / |F_c ∪ M|.
Its Lovász extension, evaluated at the pixel errors m_i(c) = |[y_i = c] - p_i(c)| sorted in decreasing
order m_pi1 >= m_pi2 >= ..., is
    lovasz_c(m) = sum_k m_pik * (Delta_c({pi1..pik}) - Delta_c({pi1..pik-1}))      (paper, Alg. 1)
and the loss is its mean over the classes present in the labels of the (flattened) batch; pixels
labelled ``ignore`` take no part. Computed over all pixels of the batch at once ("per_image=False"),
as PLCA uses it.
"""

from __future__ import annotations

import torch

from segadapt.data.labelspace import IGNORE


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Delta_c({pi1..pik}) - Delta_c({pi1..pik-1}) for k = 1..P, given the foreground indicator of the
    pixels in decreasing-error order. With g = |F_c|: the first k pixels hold cumsum(fg) foreground
    pixels, so |F_c ∩ M^c| = g - cumsum(fg) and |F_c ∪ M| = g + cumsum(1 - fg)."""
    fg_sorted = fg_sorted.float()
    g = fg_sorted.sum()
    intersection = g - fg_sorted.cumsum(0)
    union = g + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union  # Delta_c of the first k pixels
    if jaccard.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax_flat(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """probs (P, C) class probabilities, labels (P,) without ignored pixels -> mean over present classes."""
    if labels.numel() == 0:
        return probs.sum() * 0.0  # nothing labelled: no gradient, but stays in the graph
    losses = []
    for c in labels.unique().tolist():  # "present" classes only: an absent class has no Jaccard to lose
        fg = (labels == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        # the sort order is piecewise constant: gradients flow through the errors only (Alg. 1)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm]).detach()))
    return torch.stack(losses).mean()


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore: int = IGNORE) -> torch.Tensor:
    """probs (B, C, H, W) softmax outputs, labels (B, H, W) at the same resolution -> scalar loss over the
    flattened batch."""
    c = probs.shape[1]
    p = probs.float().permute(0, 2, 3, 1).reshape(-1, c)
    lab = labels.reshape(-1)
    keep = lab != ignore
    return lovasz_softmax_flat(p[keep], lab[keep])
