"""T2S-DA's pieces on tiny tensors against hand-computed values, a few training steps, exact resume."""

import json
import math

import pytest
import torch

from segadapt.data.labelspace import IGNORE
from segadapt.engine.optim import build_optimizer
from segadapt.schema import parse
from segadapt.errors import DataError, UsageError
from segadapt.methods import method_class
from segadapt.methods.t2s import (T2S, class_weights, ema_rows, info_nce, largest_remainder, T2SConfig,
                                  sample_negatives, sample_queries, source_prototypes, target_class_stats)
from segadapt.models.segmenter import build_segmenter

from conftest import TINY_OVERRIDES

OPTIM = {"name": "adamw", "lr": 1e-3, "head_lr_mult": 10, "weight_decay": 0.0, "betas": [0.9, 0.999]}


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    neg = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    # tau = 0.5: query 1 logits (2, 0, -2), query 2 logits (1.6, 0, 2)
    l1 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    l2 = -math.log(math.exp(1.6) / (math.exp(1.6) + 1 + math.exp(2)))
    assert info_nce(q, pos, neg, 0.5).item() == pytest.approx((l1 + l2) / 2, abs=1e-6)
    assert info_nce(q, pos, neg, 0.5, torch.tensor([1.0, 3.0])).item() == pytest.approx((l1 + 3 * l2) / 4, abs=1e-6)
    # 3-D: a query on its positive with orthogonal negatives, tau = 1: -log(e / (e + 2))
    q3 = torch.tensor([[0.0, 0.0, 1.0]])
    neg3 = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert info_nce(q3, q3, neg3, 1.0).item() == pytest.approx(-math.log(math.e / (math.e + 2)), abs=1e-6)


def test_largest_remainder_by_hand():
    assert largest_remainder(torch.tensor([0.5, 0.3, 0.2, 0.0]), 7).tolist() == [4, 2, 1, 0]  # quotas 3.5 2.1 1.4
    assert largest_remainder(torch.tensor([1.0, 1.0, 1.0]), 4).tolist() == [2, 1, 1]  # tie -> lower index
    assert largest_remainder(torch.tensor([2.0, 0.0, 6.0]), 10).tolist() == [3, 0, 7]  # 2.5 / 7.5: tie to class 0
    assert largest_remainder(torch.zeros(3), 5).tolist() == [0, 0, 0]


def _labels():
    # class 0: 100 pixels, class 1: 10, class 2: 5, ignore: 7 (class 3 absent)
    return torch.tensor([0] * 100 + [1] * 10 + [2] * 5 + [IGNORE] * 7)


def test_class_balanced_query_sampling_counts():
    labels = _labels()
    dist = torch.tensor([0.1, 0.25, 0.15, 0.5])  # class 3 is absent: shares renormalised to (0.2, 0.5, 0.3)
    torch.manual_seed(0)
    pick = sample_queries(labels, 20, dist, "balanced")
    assert torch.bincount(labels[pick], minlength=4).tolist() == [4, 10, 6, 0]  # class 2 (5 pixels) repeats one
    assert len(set(pick[labels[pick] == 1].tolist())) == 10  # enough pixels: drawn without replacement
    torch.manual_seed(0)
    assert torch.equal(sample_queries(labels, 20, dist, "balanced"), pick)  # deterministic given the seed
    assert torch.bincount(labels[sample_queries(labels, 21, dist, "equal")], minlength=3).tolist() == [7, 7, 7]
    # uniform: classes follow the raw pixel counts (100 : 10 : 5), never the ignored pixels
    torch.manual_seed(1)
    uni = labels[sample_queries(labels, 20000, dist, "uniform")]
    assert (uni != IGNORE).all()
    frac = torch.bincount(uni, minlength=3).float() / uni.numel()
    assert frac.tolist() == pytest.approx([100 / 115, 10 / 115, 5 / 115], abs=0.01)
    # no mass on any present class -> uniform over pixels
    assert sample_queries(labels, 8, torch.tensor([0.0, 0.0, 0.0, 1.0]), "balanced").numel() == 8


def test_domain_equalised_negatives_split_exactly():
    bank_cls = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 1, 2])
    is_tgt = torch.tensor([False] * 6 + [True] * 4)
    q_cls = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(0)
    idx, ok = sample_negatives(q_cls, bank_cls, is_tgt, 8, True)
    assert idx.shape == (4, 8) and ok.all()
    assert is_tgt[idx].sum(1).tolist() == [4, 4, 4, 4]  # m/2 target, m/2 source per query
    assert (bank_cls[idx] != q_cls[:, None]).all()  # only other classes
    # without equalisation both domains are pooled: still other classes only, m in all
    idx, ok = sample_negatives(q_cls, bank_cls, is_tgt, 7, False)
    assert idx.shape == (4, 7) and ok.all() and (bank_cls[idx] != q_cls[:, None]).all()
    # a domain with no negative for the class: all m from the other one; no negatives at all: dropped
    bank_cls2 = torch.tensor([1, 2, 0, 0])
    is_tgt2 = torch.tensor([False, False, True, True])
    idx, ok = sample_negatives(torch.tensor([0, 1, 3]), bank_cls2, is_tgt2, 4, True)
    assert ok.tolist() == [True, True, True]
    assert is_tgt2[idx[0]].sum() == 0 and is_tgt2[idx[1]].sum() == 2
    idx, ok = sample_negatives(torch.tensor([5]), torch.tensor([5, 5]), torch.tensor([False, True]), 4, True)
    assert ok.tolist() == [False]


def test_dynamic_reweighting_by_hand():
    conf = torch.tensor([0.5, 0.75, 0.0])  # (1 - conf) = 0.5, 0.25, 1.0
    assert class_weights(conf, 1.0).tolist() == pytest.approx([0.5 / 0.5833333, 0.25 / 0.5833333, 1 / 0.5833333])
    assert class_weights(conf, 2.0).tolist() == pytest.approx([0.25 / 0.4375, 0.0625 / 0.4375, 1 / 0.4375])
    assert class_weights(conf, 0.0).tolist() == [1.0, 1.0, 1.0]
    w = class_weights(torch.tensor([1.0, 0.0]), 1.0, eps=1e-3)  # a fully confident class keeps a small weight
    assert w.tolist() == pytest.approx([2e-3 / 1.001, 2 / 1.001])


def test_online_statistics_by_hand():
    # teacher probabilities of 3 pixels over 3 classes
    prob = torch.tensor([[0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1]]).t().reshape(1, 3, 1, 3)
    freq, conf, present = target_class_stats(prob, 3)
    assert freq.tolist() == pytest.approx([2 / 3, 1 / 3, 0.0]) and conf.tolist() == pytest.approx([0.7, 0.7, 0.0])
    assert present.tolist() == [True, True, False]
    mem, seen = torch.tensor([0.5, 0.0, 0.2]), torch.tensor([True, False, True])
    new, seen2 = ema_rows(mem, seen, torch.tensor([1.0, 0.9, 0.8]), torch.tensor([True, True, False]), 0.1)
    assert new.tolist() == pytest.approx([0.55, 0.9, 0.2])  # EMA / first sighting / not observed
    assert seen2.tolist() == [True, True, True]
    keys = torch.tensor([[3.0, 0.0, 0.0], [4.0, 1.0, 0.0]]).view(1, 2, 1, 3)  # pixels (3,4) (0,1) (0,0)
    protos, has = source_prototypes(keys, torch.tensor([[[0, 1, IGNORE]]]), 3)
    assert protos[0].tolist() == pytest.approx([0.6, 0.8]) and protos[1].tolist() == pytest.approx([0.0, 1.0])
    assert has.tolist() == [True, True, False]


@pytest.mark.parametrize("bad", [{"tau": 0}, {"query_sampling": "rare"}, {"num_negatives": 3}, {"taux": 0.1},
                                 {"proj_dim": 1.5}, {"equalise_negatives": "yes"}, {"unreliable_threshold": 1.5},
                                 {"contrastive_weight": -1}, {"prototype": "queue"}])
def test_bad_config_values_are_usage_errors(bad):
    with pytest.raises(UsageError, match="t2s"):
        parse(T2SConfig, bad, "t2s")


def test_odd_negatives_allowed_without_equalisation():
    assert parse(T2SConfig, {"num_negatives": 3, "equalise_negatives": False}, "t2s").num_negatives == 3


def _tiny(num_classes=3):
    torch.manual_seed(0)
    spec = {"arch": "deeplabv2", "backbone": "tiny", "width": 8, "feat_dim": 16, "pretrained": None}
    return build_segmenter(spec, num_classes)


def _batch():
    """Source: red left half (class 0), green right half (class 1), a blue square (class 2); the target is
    the same scene darker and bluish, with a hand-made pseudo-label (one region left unlabelled)."""
    y = torch.zeros(1, 32, 32, dtype=torch.long)
    y[:, :, 16:] = 1
    y[:, 8:16, 4:12] = 2
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
    xs = colours[y].permute(0, 3, 1, 2).contiguous()
    xs = (xs + 0.05 * torch.randn(xs.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    xt = (0.5 * xs + torch.tensor([0.0, 0.0, 0.3]).view(1, 3, 1, 1)).clamp(0, 1)
    yt = y.clone()
    yt[:, 24:, :8] = IGNORE
    return {"source": {"image": xs, "label": y}, "target": {"image": xt, "label": yt}}


SMALL = {"proj_dim": 8, "num_queries": 32, "num_negatives": 16, "fda_beta": 0.05, "unreliable_threshold": 1.0,
         "ema_alpha": 0.9, "photometric_blend": 0.0}


def _train(cfg, steps):
    student = _tiny()
    method = T2S(cfg, student, 3)
    opt = build_optimizer(method.param_groups(), OPTIM)
    method.train()
    history = []
    for it in range(steps):
        torch.manual_seed(0)  # the same random choices every step, like a fixed batch
        loss, logs = method.training_step(_batch(), it)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(it)
        history.append((loss.item(), logs))
    return method, history


def test_training_steps_reduce_the_loss():
    method, hist = _train({**SMALL}, 5)
    first, last = hist[0], hist[-1]
    assert last[0] < 0.8 * first[0]
    assert first[1]["queries"] == 32 and first[1]["loss_con"] > 0 and first[1]["unreliable"] == 1.0
    assert {"loss_src", "loss_pt", "loss_mix", "loss_con", "weight_max"} <= set(first[1])
    assert bool(method.state["proto_seen"].all())  # every source class got a prototype
    assert method.state["dist"].sum().item() == pytest.approx(1.0, abs=1e-5)
    # the contrastive term alone also goes down: gradients reach the projector and the features
    method, hist = _train({**SMALL, "source_ce_weight": 0, "pseudo_target_ce_weight": 0, "mix_ce_weight": 0,
                           "contrastive_weight": 1.0}, 5)
    assert set(hist[0][1]) >= {"loss_con"} and "loss_src" not in hist[0][1]
    assert hist[-1][1]["loss_con"] < 0.8 * hist[0][1]["loss_con"]


def test_switches_turn_terms_off():
    _, hist = _train({**SMALL, "contrastive_weight": 0, "reweighting": False, "pseudo_label": "agree"}, 1)
    assert "loss_con" not in hist[0][1] and "weight_max" not in hist[0][1]
    _, hist = _train({**SMALL, "query_sampling": "uniform", "equalise_negatives": False, "prototype": "batch",
                      "reweight_segmentation": True, "pseudo_label": "teacher", "translator": "none"}, 1)
    assert hist[0][1]["queries"] == 32 and math.isfinite(hist[0][0])


def test_projector_is_checkpointed_and_optimised_at_head_lr():
    method = T2S(dict(SMALL), _tiny(), 3)
    mods = method.modules()
    assert {"student", "teacher", "projector", "teacher_projector"} <= set(mods)
    groups = method.param_groups()
    assert {id(p) for p in groups["projector"]} == {id(p) for p in method.projector.parameters()}
    opt = build_optimizer(groups, OPTIM)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["projector"] == lrs["head"] == pytest.approx(1e-2)
    assert not any(p.requires_grad for p in method.teacher_projector.parameters())
    assert method_class("self-train", "t2s") is T2S


def test_self_train_resumes_exactly_with_the_projector(tiny_bench, tmp_path, monkeypatch):
    """Through the real pipeline: the checkpoint carries projector weights and the online estimates,
    and an interrupted run resumed from it reproduces the uninterrupted losses."""
    from segadapt.data.prepared import PreparedDataset
    from segadapt.engine import pseudo_label as PL
    from segadapt.engine.checkpoint import load_checkpoint
    from segadapt.engine.inference import Protocol
    from segadapt.pipeline import run_self_train, run_warmup

    small = TINY_OVERRIDES + ["data.crop=[32,32]", "data.batch_size=1"]
    overrides = small + ["t2s.num_queries=16", "t2s.num_negatives=8", "t2s.proj_dim=8"]
    run_warmup(config="synthetic/source_only", source=tiny_bench / "source", target=None, out=tmp_path / "wu",
               iters=1, overrides=small)
    ds = PreparedDataset(tiny_bench / "target")
    PL.generate(tmp_path / "wu" / "last.pt", ds, "train", tmp_path / "pl", Protocol(scales=[1.0]), "student",
                torch.device("cpu"))
    kw = dict(config="synthetic/t2s", ckpt=tmp_path / "wu" / "last.pt", pseudo_labels=tmp_path / "pl",
              source=tiny_bench / "source", target=tiny_bench / "target", overrides=overrides, iters=2)
    run_self_train(out=tmp_path / "ref", **kw)
    losses = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    ref = losses(tmp_path / "ref")
    ckpt = load_checkpoint(tmp_path / "ref" / "last.pt")
    assert set(ckpt["modules"]) == {"projector", "teacher_projector"}
    assert ckpt["method_state"]["proto_seen"].any()

    original = T2S.training_step

    def interrupted(self, batch, iteration):
        if iteration == 1:
            raise KeyboardInterrupt
        return original(self, batch, iteration)

    monkeypatch.setattr(T2S, "training_step", interrupted)
    with pytest.raises(DataError, match="interrupted at iteration 1"):
        run_self_train(out=tmp_path / "cut", **kw)
    monkeypatch.setattr(T2S, "training_step", original)
    run_self_train(out=tmp_path / "cut", resume=True, **kw)
    assert losses(tmp_path / "cut") == ref
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    for k, v in ckpt["modules"]["projector"].items():
        assert torch.equal(v, cut["modules"]["projector"][k])
