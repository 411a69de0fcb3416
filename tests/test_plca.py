"""PLCA's pieces (cycle association, contrastive normalisation, spatial aggregation, Lovász-softmax,
regulariser) on tiny tensors against hand-computed values, then a few training steps."""

import json
import math
import statistics

import pytest
import torch

from segadapt.data.labelspace import IGNORE
from segadapt.errors import UsageError
from segadapt.methods import method_class
from segadapt.methods import plca as P
from segadapt.methods.lovasz import lovasz_grad, lovasz_softmax
from segadapt.models.segmenter import build_segmenter
from segadapt.pipeline import run_warmup

from conftest import TINY_OVERRIDES


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds spin-waiting, which on a busy machine
    made the training test 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def angles(*deg):
    """Unit 2-d features at the given angles, one pixel each: (n, 2)."""
    r = torch.tensor(deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([r.cos(), r.sin()], 1)


def log_softmax_z(row):
    """log softmax of the z-scored row (sample std), in plain Python: the paper's normalisation."""
    m, sd = statistics.mean(row), statistics.stdev(row)
    z = [(v - m) / sd for v in row]
    lse = math.log(sum(math.exp(v) for v in z))
    return [v - lse for v in z]


# -- the 3x3 toy: 9 source and 9 target pixels with features at hand-chosen angles -----------------
# cosine similarity falls with the angle between two pixels, so the most similar pixel is the nearest angle
SRC_DEG = [0, 10, 20, 38, 50, 60, 75, 86, 90]
SRC_LAB = [0, 0, 1, 1, 1, 2, 2, 2, IGNORE]
TGT_DEG = [8, 14, 33, 47, 58, 68, 80, 89, 120]
# nearest target of each source pixel, and the source pixel nearest to that target
J_STAR = [0, 0, 1, 2, 3, 4, 6, 7, 7]      # e.g. 20 deg -> 14 (t1); 75 -> 80 (t6, 5 away; t5 is 7 away)
I_STAR = [1, 1, 1, 3, 4, 5, 6, 8, 8]      # e.g. t0 (8 deg) -> 10 (s1, not s0): 0 -> 8 -> 10 returns elsewhere
VALID = [True, True, False, True, True, True, True, False, False]  # s2: label 1 returns to s1 (0);
# s7: returns to s8, which is ignored; s8 is ignored itself


def toy_expected_loss():
    cos = lambda a, b: math.cos((a - b) * math.pi / 180)  # noqa: E731
    total = 0.0
    for i in range(9):
        if VALID[i]:
            j, k = J_STAR[i], I_STAR[i]
            log_st = log_softmax_z([cos(SRC_DEG[i], t) for t in TGT_DEG])[j]
            log_ts = log_softmax_z([cos(TGT_DEG[j], s) for s in SRC_DEG])[k]
            total += -(log_st + log_ts)
    return total / sum(VALID)


def test_cycle_association_on_the_3x3_toy():
    src, tgt = angles(*SRC_DEG), angles(*TGT_DEG)
    lab = torch.tensor(SRC_LAB)
    cyc = P.cycle_association(src, tgt, lab, "cos")
    assert cyc.j_star.tolist() == J_STAR
    assert cyc.i_star.tolist() == I_STAR
    assert cyc.valid.tolist() == VALID and cyc.count == 6
    assert (cyc.loss_sum / cyc.count).item() == pytest.approx(toy_expected_loss(), abs=1e-9)
    # the same pixels as 3x3 maps through the batch-level loss (no spatial aggregation)
    smap = src.T.reshape(1, 2, 3, 3).float()
    tmap = tgt.T.reshape(1, 2, 3, 3).float()
    loss, frac = P.association_loss(smap, tmap, lab.view(1, 3, 3), "cos", spatial_agg=False)
    assert loss.item() == pytest.approx(toy_expected_loss(), abs=1e-5)
    assert frac == pytest.approx(6 / 8)  # 6 valid cycles out of 8 labelled source pixels


def test_two_by_two_cycle_has_a_closed_form():
    # a row of two values z-scores to (+1/sqrt2, -1/sqrt2) whatever the values: the best entry has
    # probability sigmoid(sqrt2 / tau), so each valid cycle costs -2 log sigmoid(sqrt2 / tau)
    src, tgt = angles(0, 90), angles(10, 80)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for tau in (1.0, 0.5):
        cyc = P.cycle_association(src, tgt, torch.tensor([0, 1]), "cos", temperature=tau)
        assert cyc.valid.tolist() == [True, True]
        assert (cyc.loss_sum / 2).item() == pytest.approx(-2 * math.log(sig(math.sqrt(2) / tau)), abs=1e-9)
    # no valid cycle: a zero loss that still backpropagates
    s = angles(0, 90).requires_grad_()
    cyc = P.cycle_association(s, angles(5, 6), torch.tensor([IGNORE, 1]), "cos")  # 90 -> 6 -> 0 (ignored)
    assert cyc.count == 0 and cyc.loss_sum.item() == 0.0
    cyc.loss_sum.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_contrast_normalisation_detaches_the_statistics():
    sim = torch.tensor([[1.0, 2.0, 4.0]], requires_grad=True)
    logp = P.contrast_normalise(sim)
    assert logp[0].tolist() == pytest.approx(log_softmax_z([1.0, 2.0, 4.0]), abs=1e-6)
    logp[0, 2].backward()
    # d/dx_k of z_2 - logsumexp(z), z = (x - m) / s with m, s constants: (delta_k2 - p_k) / s
    p = logp.detach().exp()[0]
    sd = statistics.stdev([1.0, 2.0, 4.0])
    assert sim.grad[0].tolist() == pytest.approx([(-p[0] / sd).item(), (-p[1] / sd).item(),
                                                  ((1 - p[2]) / sd).item()], abs=1e-6)


def test_kl_similarity_by_hand():
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.75]])
    expected = -(0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))  # -KL(p || q)
    assert P.similarity(p, q, "kl").item() == pytest.approx(expected, abs=1e-6)
    assert P.similarity(q, p, "kl").item() == pytest.approx(-(0.25 * math.log(0.5) + 0.75 * math.log(1.5)), abs=1e-6)
    assert P.similarity(p, p, "kl").item() == pytest.approx(0.0, abs=1e-6)


def test_spatial_aggregation_by_hand():
    # two target pixels: each is most similar to itself, so A's rows are (s, 1 - s) and (1 - s, s) with
    # s = sigmoid(sqrt2) (the two-value z-score again)
    f = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    s = 1 / (1 + math.exp(-math.sqrt(2)))
    out = P.spatial_aggregate(f, "cos", alpha=0.5)
    expected0 = 0.5 * f[0] + 0.5 * (s * f[0] + (1 - s) * f[1])
    expected1 = 0.5 * f[1] + 0.5 * ((1 - s) * f[0] + s * f[1])
    assert torch.allclose(out, torch.stack([expected0, expected1]), atol=1e-6)
    # on probabilities (-KL) the weights are a plain softmax; the result stays a distribution
    pr = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    kl01 = -(0.9 * math.log(0.9 / 0.2) + 0.1 * math.log(0.1 / 0.8))
    a01 = math.exp(kl01) / (1 + math.exp(kl01))  # softmax of (0, -KL(p0 || p1))
    out = P.spatial_aggregate(pr, "kl", alpha=0.5)
    assert out[0].tolist() == pytest.approx((0.5 * pr[0] + 0.5 * ((1 - a01) * pr[0] + a01 * pr[1])).tolist(), abs=1e-6)
    assert torch.allclose(out.sum(1), torch.ones(2))


def naive_loss(src, tgt, lab, metric, alpha=0.5, temperature=1.0):
    """The released code's way: full N x M matrices."""
    if alpha:
        s_tt = P.similarity(tgt, tgt, metric)
        a = P.contrast_normalise(s_tt, temperature).exp() if metric == "cos" else s_tt.softmax(1)
        tgt = (1 - alpha) * tgt + alpha * a @ tgt
    s_st, s_ts = P.similarity(src, tgt, metric), P.similarity(tgt, src, metric)
    p_st, p_ts = P.contrast_normalise(s_st, temperature), P.contrast_normalise(s_ts, temperature)
    j = s_st.argmax(1)
    i2 = s_ts.argmax(1)[j]
    valid = (lab != IGNORE) & (lab[i2] == lab)
    idx = valid.nonzero()[:, 0]
    return -(p_st[idx, j[idx]] + p_ts[j[idx], i2[idx]]).mean()


@pytest.mark.parametrize("metric", ["cos", "kl"])
def test_chunked_equals_unchunked_and_never_builds_the_full_matrix(metric, monkeypatch):
    g = torch.Generator().manual_seed(0)
    n, m, d = 13, 11, 4
    raw_s = torch.randn(n, d, generator=g, dtype=torch.float64)
    raw_t = torch.randn(m, d, generator=g, dtype=torch.float64)
    lab = torch.randint(0, 2, (n,), generator=g)
    lab[3] = IGNORE
    prep = (lambda x: x.softmax(1)) if metric == "kl" else (lambda x: x)

    def run(chunk):
        s, t = raw_s.clone().requires_grad_(), raw_t.clone().requires_grad_()
        tt = P.spatial_aggregate(prep(t), metric, 0.5, 0.7, chunk)
        cyc = P.cycle_association(prep(s), tt, lab, metric, 0.7, chunk)
        loss = cyc.loss_sum / cyc.count
        loss.backward()
        return loss.detach(), s.grad, t.grad, cyc

    rows = []
    orig = P.similarity_rows

    def spy(a_rows, c_rows, b):
        out = orig(a_rows, c_rows, b)
        rows.append(out.shape[0])
        return out

    full = run(None)
    monkeypatch.setattr(P, "similarity_rows", spy)
    chunked = run(3)
    assert max(rows) <= 3 and len(rows) > 10  # forward and backward recomputation both in chunks of <= 3 rows
    assert full[3].count > 2  # a case with several valid cycles
    assert torch.equal(full[3].j_star, chunked[3].j_star) and torch.equal(full[3].valid, chunked[3].valid)
    assert abs(full[0].item() - chunked[0].item()) < 1e-10
    assert torch.allclose(full[1], chunked[1], atol=1e-10) and torch.allclose(full[2], chunked[2], atol=1e-10)
    # and both equal the full-matrix computation of the released code
    s, t = raw_s.clone().requires_grad_(), raw_t.clone().requires_grad_()
    ref = naive_loss(prep(s), prep(t), lab, metric, 0.5, 0.7)
    ref.backward()
    assert abs(ref.item() - chunked[0].item()) < 1e-10
    assert torch.allclose(s.grad, chunked[1], atol=1e-10) and torch.allclose(t.grad, chunked[2], atol=1e-10)


def test_gradient_descent_on_the_association_loss_lowers_it():
    g = torch.Generator().manual_seed(2)
    src = torch.randn(1, 4, 3, 3, generator=g).requires_grad_()
    tgt = torch.randn(1, 4, 3, 3, generator=g).requires_grad_()
    lab = torch.randint(0, 2, (1, 3, 3), generator=g)
    opt = torch.optim.SGD([src, tgt], lr=0.5)
    losses = []
    for _ in range(10):
        loss, _ = P.association_loss(src, tgt, lab, "cos")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


def test_pixel_sampling_uses_the_global_rng():
    assert P.sample_pixels(10, 0) is None and P.sample_pixels(10, 10) is None
    torch.manual_seed(5)
    a = P.sample_pixels(100, 7)
    torch.manual_seed(5)
    b = P.sample_pixels(100, 7)
    assert torch.equal(a, b) and a.numel() == 7 and a.unique().numel() == 7 and int(a.max()) < 100


def test_regulariser_is_cross_entropy_to_uniform():
    lg = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # p = (0.25, 0.75)
    r = -(math.log(0.25) + math.log(0.75)) / 2
    assert P.uniform_ce(lg).item() == pytest.approx(r, abs=1e-6)
    two = torch.cat([lg, torch.zeros(1, 2, 1, 1)], 3)  # a second pixel at uniform: r = log 2
    assert P.uniform_ce(two).item() == pytest.approx((r + math.log(2)) / 2, abs=1e-6)
    assert P.uniform_ce(lg, thres=10.0).item() == pytest.approx((r / 10 - 1) * r, abs=1e-6)


# -- Lovász-softmax --------------------------------------------------------------------------------

def lovasz_by_definition(probs, labels, classes):
    """Lovász extension of Delta_c(M) = |M| / |F_c ∪ M| at the errors, straight from the definition."""
    out = []
    for c in classes:
        fg = {k for k, y in enumerate(labels) if y == c}
        err = [abs((1.0 if y == c else 0.0) - p[c]) for p, y in zip(probs, labels)]
        order = sorted(range(len(err)), key=lambda k: -err[k])
        prev, total = 0.0, 0.0
        for n in range(1, len(order) + 1):
            m = set(order[:n])
            delta = len(m) / len(fg | m)
            total += err[order[n - 1]] * (delta - prev)
            prev = delta
        out.append(total)
    return sum(out) / len(out)


def test_lovasz_softmax_by_hand():
    # labels (0, 0, 1); p(class 0) = (0.9, 0.4, 0.3). Errors are (0.1, 0.6, 0.3) for both classes.
    # class 0 (F = {0, 1}), order 1, 2, 0: 0.6 * 1/2 + 0.3 * (2/3 - 1/2) + 0.1 * (1 - 2/3) = 23/60
    # class 1 (F = {2}),    order 1, 2, 0: 0.6 * 1/2 + 0.3 * (1 - 1/2)   + 0.1 * (1 - 1)     = 27/60
    p0 = torch.tensor([0.9, 0.4, 0.3])
    probs = torch.stack([p0, 1 - p0]).view(1, 2, 1, 3)
    labels = torch.tensor([[[0, 0, 1]]])
    assert lovasz_softmax(probs, labels).item() == pytest.approx((23 / 60 + 27 / 60) / 2, abs=1e-6)
    assert lovasz_grad(torch.tensor([1, 0, 1])).tolist() == pytest.approx([1 / 2, 1 / 6, 1 / 3])
    # an ignored pixel and an absent class (2) change nothing
    probs3 = torch.cat([torch.stack([p0, 1 - p0, torch.zeros(3)]), torch.tensor([[0.2], [0.3], [0.5]])], 1)
    labels3 = torch.tensor([[[0, 0, 1, IGNORE]]])
    assert lovasz_softmax(probs3.view(1, 3, 1, 4), labels3).item() == pytest.approx(0.4166667, abs=1e-6)
    # a perfect prediction costs nothing; nothing labelled gives 0
    assert lovasz_softmax(torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 2, 1, 2), torch.tensor([[[0, 1]]])).item() == 0
    assert lovasz_softmax(probs, torch.full((1, 1, 3), IGNORE)).item() == 0


def test_lovasz_softmax_matches_the_definition_on_random_cases():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        probs = torch.rand(1, 3, 2, 4, generator=g, dtype=torch.float64).softmax(1)
        labels = torch.randint(0, 3, (1, 2, 4), generator=g)
        flat_p = probs.permute(0, 2, 3, 1).reshape(-1, 3).tolist()
        flat_y = labels.flatten().tolist()
        expected = lovasz_by_definition(flat_p, flat_y, sorted(set(flat_y)))
        assert lovasz_softmax(probs, labels).item() == pytest.approx(expected, abs=1e-6)  # computed in float32


# -- the stage ---------------------------------------------------------------------------------------

def fixed_batch(b=2, size=32):
    """Source images whose colour tells the class (three vertical bands), targets darker copies."""
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(b, size, size, dtype=torch.long)
    label[:, :, size // 3: 2 * size // 3] = 1
    label[:, :, 2 * size // 3:] = 2
    label[:, :2] = IGNORE
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
    img = colours[label.clamp(max=2)].permute(0, 3, 1, 2) + 0.05 * torch.rand(b, 3, size, size, generator=g)
    target = (0.6 * img.flip(-1)).clamp(0, 1)
    return {"source": {"image": img.clamp(0, 1), "label": label},
            "target": {"image": target, "label": torch.full_like(label, IGNORE)}}


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 16, "pretrained": None}, 3)
    method = method_class("warmup", "plca")({"max_pixels": 12, "chunk": 5}, model, 3)
    assert method.target_batches == "target"
    method.train()
    groups = model.param_groups()  # the engine's way: the head learns 10x faster
    opt = torch.optim.Adam([{"params": groups["backbone"], "lr": 5e-3}, {"params": groups["head"], "lr": 5e-2}])
    batch = fixed_batch()
    losses = []
    for it in range(8):
        torch.manual_seed(it)
        loss, logs = method.training_step(batch, it)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(logs) == {"loss_ce", "loss_lovasz", "loss_assoc_feat", "cycles_feat", "loss_assoc_pred",
                         "cycles_pred", "loss_reg"}
    assert all(math.isfinite(v) for v in logs.values())
    assert logs["loss_assoc_feat"] > 0 and 0 < logs["cycles_feat"] <= 1
    assert losses[-1] < 0.8 * losses[0], losses
    # every term off but the cross-entropy: the loss is the plain source CE
    off = method_class("warmup", "plca")({"lovasz_weight": 0, "assoc_weight": 0, "reg_weight": 0}, model, 3)
    model.eval()
    loss, logs = off.training_step(batch, 0)
    assert set(logs) == {"loss_ce"} and loss.item() == logs["loss_ce"]


def test_bad_settings_are_usage_errors():
    model = build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 16, "pretrained": None}, 3)
    cls = method_class("warmup", "plca")
    for bad, msg in [({"spatial_agg_alpha": 1.5}, "spatial_agg_alpha"), ({"temperature": 0}, "temperature"),
                     ({"levels": ["feat", "logits"]}, "levels"), ({"levels": "feat"}, "levels"),
                     ({"max_pixels": 2.5}, "max_pixels"), ({"chunk": -1}, "chunk"),
                     ({"assoc_weight": -0.1}, "assoc_weight"), ({"spatial_agg": "yes"}, "spatial_agg"),
                     ({"lovasz_weight": True}, "lovasz_weight"), ({"asso_weight": 0.1}, "unknown")]:
        with pytest.raises(UsageError, match=msg):
            cls(bad, model, 3)


def test_warmup_plca_runs_from_the_shipped_config(tiny_bench, tmp_path):
    kw = dict(config="synthetic/plca", source=tiny_bench / "source", overrides=TINY_OVERRIDES, iters=2)
    run_warmup(target=tiny_bench / "target", out=tmp_path / "run", **kw)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(math.isfinite(r["loss_assoc_pred"]) for r in recs)
    with pytest.raises(UsageError, match="target"):
        run_warmup(target=None, out=tmp_path / "no_target", **kw)
    with pytest.raises(UsageError, match="spatial_agg_alpha"):
        run_warmup(target=tiny_bench / "target", out=tmp_path / "bad",
                   **{**kw, "overrides": TINY_OVERRIDES + ["plca.spatial_agg_alpha=0"]})
