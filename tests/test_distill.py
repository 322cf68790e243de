"""KD losses and tap pairing against hand-computed values."""
from __future__ import annotations

import copy

import pytest
import torch

from nfkd.distill import KDConfig, StudentObjective, aligned_teacher_index, distance, pair_taps
from nfkd.flows import MAF, Glow, Glow1D

from .helpers import perturb


def test_aligned_index_matches_paper_rule():
    # K_t = 6, K_s = 3: student block i <-> teacher block 2i+1 (0-based), i.e. 2i in the paper's 1-based terms.
    assert [aligned_teacher_index(i, 3, 6) for i in range(3)] == [1, 3, 5]
    # round((i+1)*5/3) - 1 = round(1.67, 3.33, 5) - 1
    assert [aligned_teacher_index(i, 3, 5) for i in range(3)] == [1, 2, 4]
    # round(1.5) rounds half up (not Python's banker's rounding): teacher 3, student 2.
    assert [aligned_teacher_index(i, 2, 3) for i in range(2)] == [1, 2]


def test_pair_taps_tabular_and_glow():
    t, s = MAF(4, blocks=6, hidden=8), MAF(4, blocks=3, hidden=8)
    assert pair_taps(t, s) == [("block0", "block1"), ("block1", "block3")]  # the last = final latent
    t, s = Glow1D(4, steps=5, hidden=8), Glow1D(4, steps=3, hidden=8)
    assert pair_taps(t, s) == [("block0", "block1"), ("block1", "block2")]
    t, s = Glow((3, 8, 8), levels=2, steps=3, hidden=8), Glow((3, 8, 8), levels=2, steps=1, hidden=8)
    assert pair_taps(t, s) == [("level0.end", "level0.end"), ("level1.end", "level1.end")]
    with pytest.raises(ValueError, match="levels"):
        pair_taps(Glow((3, 8, 8), levels=3, steps=1, hidden=8), s)
    with pytest.raises(ValueError, match="teacher is maf"):
        pair_taps(MAF(4, blocks=2), Glow1D(4, steps=1))


def test_distances_hand_values():
    a = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 4.0], [1.0, -1.0, 2.0]])
    torch.testing.assert_close(distance(a, b, "l1"), torch.tensor([1.0, 4.0 / 3.0]))
    torch.testing.assert_close(distance(a, b, "mse"), torch.tensor([5.0 / 3.0, 2.0]))
    with pytest.raises(ValueError):
        distance(a, b, "cosine")


def _pair(arch="maf"):
    torch.manual_seed(0)
    if arch == "maf":
        t, s = MAF(4, blocks=4, hidden=8), MAF(4, blocks=2, hidden=8)
    else:
        t, s = Glow((2, 4, 4), levels=2, steps=2, hidden=8), Glow((2, 4, 4), levels=2, steps=1, hidden=8)
    scale = 0.2 if arch == "maf" else 0.03  # a strongly perturbed random Glow decodes to |x| ~ 1e13
    return perturb(t.double(), scale, seed=1).eval(), perturb(s.double(), scale, seed=2).train()


def test_nll_term_is_per_dim_negative_log_likelihood():
    t, s = _pair()
    x = torch.randn(8, 4, dtype=torch.float64)
    loss, terms = StudentObjective(s, None, KDConfig("none"))(x)
    torch.testing.assert_close(loss, -s.log_prob(x).mean() / 4)


def test_lkd_hand_computed():
    t, s = _pair()
    x = torch.randn(8, 4, dtype=torch.float64)
    zs, zt = s(x).latents[0], t(x).latents[0]  # 2 and 4 reversals: both latents in input order
    lkd = (zs - zt).abs().mean()
    for scale, factor in (("mean", 1.0), ("paper", 1.0 / 4)):
        loss, terms = StudentObjective(s, t, KDConfig("lkd", latent_distance="l1", kd_scale=scale))(x)
        torch.testing.assert_close(terms["lkd"], lkd)
        torch.testing.assert_close(loss, 1.0 * (-s.log_prob(x).mean() / 4) + factor * lkd)


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_ilkd_hand_computed(kind):
    t, s = _pair()
    x = torch.randn(8, 4, dtype=torch.float64)
    loss, terms = StudentObjective(s, t, KDConfig("ilkd", latent_distance=kind, kd_scale="mean"))(x)
    so, to = s(x, taps=True), t(x, taps=True)
    f = (lambda d: d.abs()) if kind == "l1" else (lambda d: d.pow(2))
    # student block0 <-> teacher block1 (K_t=4, K_s=2), plus the final latents. The student's
    # block0 has reversed its features once, the teacher's block1 twice: flip to input order.
    per_pair = [f(so.taps["block0"].flip(1) - to.taps["block1"]).mean(1), f(so.latents[0] - to.latents[0]).mean(1)]
    ilkd = torch.stack(per_pair).mean()
    torch.testing.assert_close(terms["ilkd"], ilkd)
    torch.testing.assert_close(loss, 0.9 * (-s.log_prob(x).mean() / 4) + 0.1 * ilkd)


def test_skd_uses_shared_noise_at_every_level():
    t, s = _pair("glow")
    x = torch.rand(4, 2, 4, 4, dtype=torch.float64) - 0.5
    noise = t.sample_noise(4, generator=torch.Generator().manual_seed(3))
    obj = StudentObjective(s, t, KDConfig("skd", temperature=0.7, kd_scale="mean"))
    loss, terms = obj(x, noise)
    xs = s.inverse([z * 0.7 for z in noise]).x
    xt = t.inverse([z * 0.7 for z in noise]).x
    torch.testing.assert_close(terms["skd"], (xs - xt).abs().mean())
    assert float(terms["skd_excluded"]) == 0
    # A student identical to the teacher has SKD = 0 only if split-level noise is shared too.
    twin = StudentObjective(copy.deepcopy(t), t, KDConfig("skd"))
    assert float(twin(x, noise)[1]["skd"]) < 1e-12
    ilkd = StudentObjective(s, t, KDConfig("ilkd"))(x)[1]["ilkd"]
    nll = -s.log_prob(x).mean() / s.dim
    torch.testing.assert_close(loss, 0.85 * nll + 0.075 * ilkd + 0.075 * terms["skd"])
    # The paper code's scale: the same terms, divided by D relative to the per-dim NLL.
    paper, _ = StudentObjective(s, t, KDConfig("skd", temperature=0.7, kd_scale="paper"))(x, noise)
    torch.testing.assert_close(paper, 0.85 * nll + (0.075 * ilkd + 0.075 * terms["skd"]) / s.dim)


def test_skd_overflow_is_excluded_and_counted_not_zeroed():
    t, s = _pair()
    noise = [torch.randn(6, 4, dtype=torch.float64)]
    noise[0][2] = 1e30  # decodes far beyond the overflow threshold in both flows
    obj = StudentObjective(s, t, KDConfig("skd", overflow_threshold=1e4))
    skd, excluded = obj.sample_distance(noise)
    assert excluded == 1
    keep = [0, 1, 3, 4, 5]
    ref = (s.inverse([noise[0][keep]]).x - t.inverse([noise[0][keep]]).x).abs().mean()
    torch.testing.assert_close(skd, ref)
    skd.backward()
    assert all(torch.isfinite(p.grad).all() for p in s.parameters() if p.grad is not None)


def test_teacher_is_frozen_and_in_eval_mode():
    t, s = _pair()
    t.train()
    before = {k: v.clone() for k, v in t.state_dict().items()}
    obj = StudentObjective(s, t, KDConfig("ilkd"))
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert set(map(id, obj.parameters())) == set(map(id, s.parameters()))
    loss, _ = obj(torch.randn(8, 4, dtype=torch.float64))
    loss.backward()
    assert all(p.grad is None for p in t.parameters())
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())


def test_method_needs_teacher():
    with pytest.raises(ValueError, match="needs a teacher"):
        StudentObjective(MAF(3, blocks=1), None, KDConfig("skd"))


@pytest.mark.parametrize("arch", ["glow1d", "maf"])
def test_every_named_variant_gives_a_finite_loss_and_gradient(arch):
    """Each recipe of ``nfkd experiment --methods`` that trains a same-architecture student builds
    its objective and gives a finite loss whose gradient reaches the student (and never the teacher);
    the fkl share is the variant's weight (fkl:0.2 weights the teacher-sample term by 0.2)."""
    from nfkd.distill.variants import VARIANTS

    torch.manual_seed(0)
    make = (lambda k: Glow1D(4, steps=k, hidden=8)) if arch == "glow1d" else (lambda k: MAF(4, blocks=k, hidden=8))
    teacher, x = perturb(make(3), seed=1).eval(), torch.randn(32, 4)
    for name, v in VARIANTS.items():
        if v.student_arch is not None or not v.applies_to(arch):
            continue
        student = perturb(make(2), seed=2)
        kd = v.config(seed=0, teacher_pool=256 if v.kd.get("teacher_pool") else 0)
        obj = StudentObjective(student, teacher if kd.needs_teacher else None, kd)
        noise = [torch.randn(*s) for s in student.noise_shapes(32)] if obj.needs_noise else None
        loss, terms = obj(x, noise)
        assert torch.isfinite(loss), name
        loss.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert all(p.grad is None for p in teacher.parameters()), name
        if name == "fkl:0.2":
            assert obj.weights == (0.8, 0.2, 0.0)
