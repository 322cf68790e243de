"""Exact pairing (permutation bookkeeping), Procrustes alignment, init from teacher, density losses."""
from __future__ import annotations

import copy

import pytest
import torch

from nfkd.distill import KDConfig, StudentObjective, init_from_teacher, procrustes
from nfkd.distill.align import Aligner, rotate_channels
from nfkd.flows import MAF, Glow, Glow1D
from nfkd.flows.layers import Permutation

from .helpers import cli_teacher_then_student, perturb


def _maf(blocks: int, perm: str = "random", seed: int = 0) -> MAF:
    torch.manual_seed(seed)
    return perturb(MAF(5, blocks=blocks, hidden=8, permutation=perm, seed=seed).double(), 0.2, seed=seed + 10).eval()


def test_tap_permutation_follows_the_block_permutations():
    flow = MAF(4, blocks=3, hidden=8)  # each block reverses the order
    rev = torch.tensor([3, 2, 1, 0])
    assert torch.equal(flow.tap_permutation("block0"), rev)
    assert flow.tap_permutation("block1") is None  # reversed twice: input order
    assert torch.equal(flow.latent_permutations()[0], rev)
    g = MAF(4, blocks=2, hidden=8, permutation="random", seed=3)
    p0, p1 = g.blocks[0].perm.perm, g.blocks[1].perm.perm
    assert torch.equal(g.tap_permutation("block1"), p0[p1])  # coordinate k of block1 holds feature p0[p1[k]]
    assert Glow1D(4, steps=2, hidden=8).tap_permutation("block1") is None


def test_same_map_with_different_permutation_bookkeeping_has_zero_kd():
    teacher = _maf(2)
    student = copy.deepcopy(teacher)
    q = torch.tensor([1, 3, 0, 4, 2])
    assert not torch.equal(q, teacher.blocks[1].perm.perm)
    student.blocks[1].perm = Permutation(q).double()  # the same density, latents permuted differently
    x = torch.randn(16, 5, dtype=torch.float64)
    torch.testing.assert_close(student.log_prob(x), teacher.log_prob(x))
    assert (student(x).latents[0] - teacher(x).latents[0]).abs().mean() > 0.1  # raw coordinates disagree
    noise = [torch.randn(16, 5, dtype=torch.float64)]
    for method in ("lkd", "ilkd", "skd"):
        _, terms = StudentObjective(student.train(), teacher, KDConfig(method, kd_scale="mean"))(x, noise)
        for name in ("lkd", "ilkd", "skd"):
            if name in terms:
                assert float(terms[name]) < 1e-12, (method, name, float(terms[name]))
    # The bug this guards against: 1 vs 2 order reversals (maf-paper's 3 vs 6 blocks, halved).
    t2 = _maf(2, "reverse")
    s2 = copy.deepcopy(t2)
    s2.blocks = torch.nn.ModuleList([s2.blocks[0]])
    extra = copy.deepcopy(t2.blocks[0])  # an identity MADE that only reverses
    for p in extra.made.parameters():
        p.data.zero_()
    t2.blocks = torch.nn.ModuleList([t2.blocks[0], extra])
    torch.testing.assert_close(s2.log_prob(x), t2.log_prob(x))
    assert float(StudentObjective(s2.train(), t2, KDConfig("lkd"))(x)[1]["lkd"]) < 1e-12
    assert float(StudentObjective(s2, t2, KDConfig("skd"))(x, noise)[1]["skd"]) < 1e-12


def test_procrustes_recovers_a_known_rotation():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    s = torch.randn(400, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(procrustes(s, s @ q), q)
    noisy = procrustes(s, s @ q + 0.01 * torch.randn(400, 6, generator=g, dtype=torch.float64))
    assert (noisy - q).abs().max() < 0.01
    # Images: one rotation of the channels, shared by every position.
    img = torch.randn(20, 3, 4, 4, generator=g, dtype=torch.float64)
    q3, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    target = torch.einsum("bchw,cd->bdhw", img, q3)
    al = Aligner(every=10)
    al.fit("tap", img, target)
    torch.testing.assert_close(al.rotations["tap"], q3)
    torch.testing.assert_close(al.apply("tap", img), target)
    torch.testing.assert_close(rotate_channels(target, q3.T), img)


def test_aligned_lkd_removes_a_latent_rotation_and_refits_on_schedule():
    teacher = perturb(Glow1D(4, steps=2, hidden=8).double(), 0.2, seed=1).eval()
    student = copy.deepcopy(teacher)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    x = torch.randn(64, 4, dtype=torch.float64)
    obj = StudentObjective(student.train(), teacher, KDConfig("lkd", align=True, align_every=3, kd_scale="mean"))
    zt = teacher(x).latents[0]
    rotated = zt @ q.T  # a student latent that differs from the teacher's by an orthogonal map
    d_plain = obj._compare("k", rotated, zt, refit=False)  # no rotation fitted yet: identity
    d_aligned = obj._compare("k", rotated, zt, refit=True)
    assert float(d_plain.mean()) > 0.1 and float(d_aligned.mean()) < 1e-10
    # Refit schedule: fitted on calls 0, 3, 6, ... of forward.
    calls = []
    for _i in range(7):
        calls.append(obj.aligner.refit_due())
        obj(x)
    assert calls == [True, False, False, True, False, False, True]
    # Identical flows: aligned LKD (and aligned SKD) are zero.
    _, terms = StudentObjective(copy.deepcopy(teacher).train(), teacher, KDConfig("skd", align=True))(
        x, [torch.randn(8, 4, dtype=torch.float64)])
    assert float(terms["ilkd"]) < 1e-10 and float(terms["skd"]) < 1e-10


@pytest.mark.parametrize("arch", ["glow1d", "maf", "glow"])
def test_init_from_teacher_with_equal_depth_is_the_teacher(arch):
    torch.manual_seed(0)
    if arch == "glow1d":
        t, s, x = Glow1D(4, steps=3, hidden=8, depth=3), Glow1D(4, steps=3, hidden=8, depth=3), torch.randn(8, 4)
    elif arch == "maf":
        t, s, x = MAF(4, blocks=3, hidden=8), MAF(4, blocks=3, hidden=8), torch.randn(8, 4)
    else:
        t, s = Glow((2, 4, 4), levels=2, steps=2, hidden=8), Glow((2, 4, 4), levels=2, steps=2, hidden=8)
        x = torch.rand(8, 2, 4, 4) - 0.5
    t = perturb(t.double(), 0.03 if arch == "glow" else 0.2, seed=1).eval()
    s = perturb(s.double(), 0.03 if arch == "glow" else 0.2, seed=2).eval()
    x = x.double()
    assert (s.log_prob(x) - t.log_prob(x)).abs().max() > 1e-3
    copied = init_from_teacher(s, t)
    assert copied
    assert torch.equal(s.log_prob(x), t.log_prob(x))


def test_init_from_teacher_pairs_blocks_and_skips_other_widths():
    t = perturb(Glow1D(4, steps=6, hidden=16), 0.2, seed=1)
    s = Glow1D(4, steps=3, hidden=8)
    before = copy.deepcopy(s.steps[0].coupling.state_dict())
    copied = init_from_teacher(s, t)
    for i, j in enumerate([1, 3, 5]):  # round((i+1)·6/3) − 1
        torch.testing.assert_close(s.steps[i].actnorm.log_scale, t.steps[j].actnorm.log_scale)
        torch.testing.assert_close(s.steps[i].mix.weight(), t.steps[j].mix.weight())
    assert all(torch.equal(v, s.steps[0].coupling.state_dict()[k]) for k, v in before.items())  # width 8 != 16
    assert "block0<-teacher1.coupling" not in copied and "block0<-teacher1.actnorm" in copied


def _density_pair():
    t = perturb(Glow1D(3, steps=2, hidden=8).double(), 0.2, seed=1).eval()
    s = perturb(Glow1D(3, steps=1, hidden=8).double(), 0.2, seed=2).train()
    return t, s


def test_density_distillation_zero_for_identical_flows_positive_otherwise():
    t, s = _density_pair()
    x = torch.randn(16, 3, dtype=torch.float64)
    noise = [torch.randn(12, 3, dtype=torch.float64)]
    kd = KDConfig("density", temperature=0.8)
    _, twin = StudentObjective(copy.deepcopy(t).train(), t, kd)(x, noise)
    assert float(twin["density"]) == 0.0
    loss, terms = StudentObjective(s, t, kd)(x, noise)
    xs = t.inverse([noise[0] * 0.8]).x
    gap = torch.cat([(s.log_prob(x) - t.log_prob(x)) / 3, (s.log_prob(xs) - t.log_prob(xs)) / 3])
    torch.testing.assert_close(terms["density"], gap.pow(2).mean())
    assert float(terms["density"]) > 1e-3
    torch.testing.assert_close(loss, -s.log_prob(x).mean() / 3 + gap.pow(2).mean())


def test_forward_kl_is_student_nll_on_teacher_samples():
    t, s = _density_pair()
    x = torch.randn(16, 3, dtype=torch.float64)
    noise = [torch.randn(12, 3, dtype=torch.float64)]
    loss, terms = StudentObjective(s, t, KDConfig("fkl"))(x, noise)
    xs = t.inverse(noise).x
    torch.testing.assert_close(terms["fkl"], -s.log_prob(xs).mean() / 3)
    torch.testing.assert_close(loss, 0.5 * (-s.log_prob(x).mean() / 3) + 0.5 * terms["fkl"])
    # Its excess over the teacher's own NLL on those samples is the forward KL estimate: zero for a twin.
    twin = StudentObjective(copy.deepcopy(t).train(), t, KDConfig("fkl"))(x, noise)[1]["fkl"]
    torch.testing.assert_close(twin, -t.log_prob(xs).mean() / 3)
    assert float(terms["fkl"]) > float(twin)


def test_teacher_pool_is_drawn_from_and_overflow_is_dropped():
    t, s = _density_pair()
    obj = StudentObjective(s, t, KDConfig("fkl", teacher_pool=300))
    assert not obj.needs_noise
    obj(torch.randn(8, 3, dtype=torch.float64))
    assert obj._pool.shape == (300, 3) and bool(torch.isfinite(obj._pool).all())
    bad = torch.tensor([[0.0, 1.0, 2.0], [float("nan"), 0.0, 0.0], [1e9, 0.0, 0.0]], dtype=torch.float64)
    assert obj._clean(bad).shape == (1, 3)


@pytest.mark.slow
def test_cli_distill_with_the_new_options(tmp_path):
    import nfkd

    cli_teacher_then_student(tmp_path, "glow1d", 12, "--method", "fkl", "--teacher-pool", "300",
                             "--init-from-teacher", "--kd-scale", "mean")
    meta = nfkd.load_checkpoint(tmp_path / "s" / "model.pt").metadata
    kd = meta["training"]["kd"]
    assert kd["method"] == "fkl" and kd["teacher_pool"] == 300 and kd["init_from_teacher"] and kd["kd_scale"] == "mean"
    assert any("actnorm" in m for m in meta["init_from_teacher"])
