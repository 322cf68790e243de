"""IAF students: the flow (autograd Jacobian, round trips, pass counts), folding, checkpoints, and
MAF -> IAF distillation (reverse KL exactly zero for an exact inverse; gradient vs finite differences).

References: float64 autograd Jacobians (``helpers.brute_logabsdet``), central finite differences, and
a hand-built IAF whose sampling map equals a one-block MAF teacher's sampling map exactly.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

import nfkd
from nfkd.distill import KDConfig, ParallelObjective, build_objective, reverse_kl
from nfkd.distill.objective import StudentObjective
from nfkd.distill.pairing import flow_noise
from nfkd.errors import InputError
from nfkd.flows import IAF, MAF, build_flow
from nfkd.flows.base import standard_normal_logpdf
from nfkd.fold import fold

from .helpers import brute_logabsdet, perturb

D64 = torch.float64


def _iaf(dim: int = 4, blocks: int = 3, seed: int = 0, **kw) -> IAF:
    torch.manual_seed(seed)
    flow = IAF(dim, blocks=blocks, hidden=12, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    flow.normalize.set(torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5)
    return perturb(flow, scale=0.3, seed=seed + 2).to(D64).eval()


def test_log_density_matches_autograd_jacobian_float64():
    flow = _iaf(4, 3, activation="tanh", permutation="random")
    x = flow.sample(5, generator=torch.Generator().manual_seed(0))
    z = flow(x).latents[0]
    want = standard_normal_logpdf(z) + brute_logabsdet(lambda v: flow(v).latents[0], x)
    torch.testing.assert_close(flow.log_prob(x), want, rtol=0, atol=1e-10)


def test_round_trips_and_one_pass_density_of_own_samples():
    flow = _iaf(5, 3)
    z = torch.randn(9, 5, dtype=D64)
    x = flow.inverse([z]).x
    torch.testing.assert_close(flow(x).latents[0], z, rtol=0, atol=1e-10)  # forward(inverse(z)) = z
    x_data = flow.normalize.loc + flow.normalize.scale * torch.randn(9, 5, dtype=D64)
    torch.testing.assert_close(flow.inverse(flow(x_data).latents).x, x_data, rtol=0, atol=1e-10)
    xs, log_q = flow.sample_and_log_prob([z])
    torch.testing.assert_close(xs, x, rtol=0, atol=0)
    torch.testing.assert_close(log_q, flow.log_prob(x), rtol=0, atol=1e-10)


def test_sampling_is_one_made_pass_per_block_and_density_is_d():
    flow = _iaf(6, 2)
    calls = []
    for b in flow.blocks:
        b.made.net.register_forward_hook(lambda *a: calls.append(1))
    flow.sample(3)
    assert len(calls) == 2
    calls.clear()
    flow.log_prob(torch.randn(3, 6, dtype=D64))
    assert len(calls) == 2 * 6


def test_taps_are_named_blocks_in_canonical_order_like_maf():
    flow = _iaf(4, 3)
    out = flow(torch.randn(2, 4, dtype=D64), taps=True)
    assert sorted(out.taps) == ["block0", "block1", "block2"] == flow.tap_names()
    assert flow.tap_permutation("block1") is None  # two reversals
    assert flow.tap_permutation("block0").tolist() == [3, 2, 1, 0]


def test_checkpoint_round_trip_and_info(tmp_path, capsys):
    flow = _iaf(4, 2).float()
    path = nfkd.save(flow, tmp_path / "iaf.pt", metadata={"dataset": "test"})
    back = nfkd.load(path)
    assert isinstance(back, IAF) and back.config == flow.config
    x, z = torch.randn(5, 4), torch.randn(5, 4)
    torch.testing.assert_close(back.log_prob(x), flow.log_prob(x), rtol=0, atol=0)
    torch.testing.assert_close(back.sample(5, noise=[z]), flow.sample(5, noise=[z]), rtol=0, atol=0)
    from nfkd.__main__ import main

    assert main(["info", str(path)]) == 0
    assert "architecture : iaf" in capsys.readouterr().out


def test_bad_config_is_one_clear_error():
    with pytest.raises(ValueError, match="permutation"):
        build_flow("iaf", dim=3, permutation="sorted")
    with pytest.raises(TypeError):
        build_flow("iaf", dim=3, batch_norm=True)  # decided: no batch-norm in an IAF (see nfkd/flows/iaf.py)


@pytest.mark.parametrize("dtype", [D64, torch.float32])
def test_fold_equals_eager(dtype):
    flow = _iaf(5, 3)
    folded = fold(flow, dtype)
    assert nfkd.fold.is_folded(folded) and isinstance(folded, IAF)
    x = (flow.normalize.loc + flow.normalize.scale * torch.randn(6, 5, dtype=D64))
    z = torch.randn(6, 5, dtype=D64)
    tol = 1e-12 if dtype == D64 else 1e-4
    torch.testing.assert_close(folded.log_prob(x.to(dtype)).double(), flow.log_prob(x), rtol=tol, atol=tol)
    torch.testing.assert_close(folded.sample(6, noise=[z.to(dtype)]).double(), flow.sample(6, noise=[z]),
                               rtol=tol, atol=tol)


# ---- distillation ---------------------------------------------------------------------------------
def exact_pair(dim: int = 4, seed: int = 0) -> tuple[MAF, IAF]:
    """A one-block MAF teacher and an IAF student whose sampling maps are the same function.

    MAF sampling: x_i = u_i·exp(α_i(x_<i)) + μ_i(x_<i); IAF sampling: x_i = u_i·exp(α'_i(u_<i)) + μ'_i(u_<i).
    They agree when the teacher's conditioner reads x_1 only (first-layer columns of x_2.. zeroed;
    coordinate 1 gets constants μ_1, α_1, so x_1 = u_1·exp(α_1) + μ_1 is affine in u_1) and the student
    copies the teacher with that affine map folded into its first layer: W'[:, 1] = W[:, 1]·exp(α_1),
    b' = b + W[:, 1]·μ_1. Then α'(u) = α(x), μ'(u) = μ(x) for every coordinate: the same map.
    """
    torch.manual_seed(seed)
    teacher = MAF(dim, blocks=1, hidden=10, n_hidden=2, activation="tanh")
    g = torch.Generator().manual_seed(seed + 1)
    teacher.normalize.set(torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5)
    teacher = perturb(teacher, scale=0.5, seed=seed + 2).to(D64).eval()
    made = teacher.blocks[0].made
    with torch.no_grad():
        made.net[0].weight[:, 1:] = 0.0
        mu, alpha = made._mu_alpha(torch.zeros(1, dim, dtype=D64))
    student = IAF(dim, blocks=1, hidden=10, n_hidden=2, activation="tanh").to(D64)
    student.load_state_dict(teacher.state_dict())  # same keys: normalize, blocks.0.made.net.*, blocks.0.perm
    first = student.blocks[0].made.net[0]
    with torch.no_grad():
        first.bias += first.weight[:, 0] * mu[0, 0]
        first.weight[:, 0] *= torch.exp(alpha[0, 0])
    return teacher, student.eval()


def test_exact_pair_samples_agree():
    teacher, student = exact_pair()
    z = torch.randn(50, 4, dtype=D64)
    torch.testing.assert_close(student.sample(50, noise=[z]), teacher.sample(50, noise=[z]), rtol=0, atol=1e-12)


def test_reverse_kl_is_zero_for_an_exact_inverse_of_a_one_block_maf():
    teacher, student = exact_pair(dim=5)
    z = torch.randn(200, 5, dtype=D64, generator=torch.Generator().manual_seed(3))
    per_sample = reverse_kl(student, teacher, [z])
    assert per_sample.abs().max().item() < 1e-12
    # ... and clearly non-zero as soon as the student differs
    moved = perturb(copy.deepcopy(student), scale=0.05, seed=9)
    assert reverse_kl(moved, teacher, [z]).mean().item() > 1e-4


def test_reverse_kl_gradient_matches_finite_differences_and_teacher_gets_none():
    teacher, student = exact_pair(dim=3, seed=1)
    student = perturb(student, scale=0.2, seed=4)
    objective = ParallelObjective(student, teacher, KDConfig(method="rkl"))
    z = [torch.randn(16, 3, dtype=D64, generator=torch.Generator().manual_seed(5))]
    x = torch.zeros(16, 3, dtype=D64)  # data: unused by reverse KL
    loss, terms = objective(x, z)
    assert set(terms) == {"rkl"}
    params = [p for p in student.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    gen = torch.Generator().manual_seed(6)
    checked = 0
    for p, g in zip(params, grads):
        for _ in range(2):
            i = int(torch.randint(0, p.numel(), (1,), generator=gen))
            flat = p.data.view(-1)
            old, eps = flat[i].item(), 1e-6
            flat[i] = old + eps
            up = objective(x, z)[0].item()
            flat[i] = old - eps
            down = objective(x, z)[0].item()
            flat[i] = old
            fd = (up - down) / (2 * eps)
            assert abs(fd - g.view(-1)[i].item()) <= 1e-6 + 1e-5 * abs(fd), (p.shape, i, fd, g.view(-1)[i].item())
            checked += 1
    assert checked == 2 * len(params) and any(g.abs().max() > 1e-6 for g in grads)


def test_skd_and_sum_use_shared_noise_and_cached_teacher_samples():
    teacher, student = exact_pair(dim=4)
    x = torch.zeros(8, 4, dtype=D64)
    z = [torch.randn(8, 4, dtype=D64)]
    for method in ("skd", "rkl+skd"):
        obj = build_objective(student, teacher, KDConfig(method=method))
        assert isinstance(obj, ParallelObjective)
        loss, terms = obj(x, z)
        assert terms["skd"].item() < 1e-12 and abs(loss.item()) < 1e-12  # same map: same samples
    moved = perturb(copy.deepcopy(student), scale=0.05, seed=9)
    pooled = ParallelObjective(moved, teacher, KDConfig(method="skd", teacher_pool=64))
    fresh = ParallelObjective(moved, teacher, KDConfig(method="skd"))
    pooled(x, z)
    noise, xt = pooled._pool
    assert noise.shape == (64, 4)
    want = teacher.sample(64, noise=flow_noise(teacher, [noise]))  # the pool holds canonical-order noise
    torch.testing.assert_close(xt, want, rtol=0, atol=1e-12)
    assert fresh(x, z)[1]["skd"].item() > 0


def test_method_and_architecture_mismatches_are_clear_errors():
    teacher, student = exact_pair(dim=3)
    maf_student = MAF(3, blocks=1, hidden=4).to(D64)
    with pytest.raises(InputError, match="--arch iaf"):
        build_objective(maf_student, teacher, KDConfig(method="rkl"))
    with pytest.raises(InputError, match="needs a teacher"):
        build_objective(student, None, KDConfig(method="rkl"))
    assert isinstance(build_objective(maf_student, teacher, KDConfig(method="skd")), StudentObjective)


def test_trainer_reduces_reverse_kl_and_selects_by_validation_nll(tmp_path):
    from nfkd.train import TrainConfig, TrainData, Trainer

    g = torch.Generator().manual_seed(0)
    base = torch.randn(400, 3, generator=g)
    x = torch.cat([base[:, :1], base[:, 1:] + 0.8 * base[:, :1] ** 2], 1)
    torch.manual_seed(5)
    teacher = perturb(MAF(3, blocks=2, hidden=8), scale=0.3, seed=1).eval()
    student = IAF(3, blocks=2, hidden=8)
    z = [torch.randn(256, 3, generator=g)]
    before = reverse_kl(student, teacher, z).mean().item()
    cfg = TrainConfig(steps=60, batch_size=64, lr=5e-3, warmup=5, eval_every=20, checkpoint_every=60, patience=100,
                      progress=False)
    result = Trainer(student, TrainData(x[:300], x[300:]), cfg, tmp_path, teacher=teacher,
                     kd=KDConfig(method="rkl+skd", teacher_pool=256)).run()
    with torch.no_grad():
        after = reverse_kl(result.flow, teacher, z).mean().item()
    assert after < 0.5 * before, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"val_nll", "train_rkl", "train_skd"} <= set(rows[-1])
    kept = min(rows, key=lambda r: r["val_nll_trimmed"])  # selection on the trimmed validation NLL
    assert result.best_step == kept["step"] and result.best_val_nll == kept["val_nll"]
    assert nfkd.load(tmp_path / "model.pt").arch == "iaf"


def test_cli_distill_arch_iaf(tmp_path, capsys):
    from nfkd.__main__ import main

    common = ["--data", "wine", "--steps", "10", "--batch-size", "32", "--eval-every", "5", "--no-progress",
              "--threads", "1"]
    assert main(["train", *common, "--arch", "maf", "--out", str(tmp_path / "t")]) == 0
    teacher = str(tmp_path / "t" / "model.pt")
    assert main(["distill", *common, "--teacher", teacher, "--arch", "iaf", "--method", "rkl+skd",
                 "--teacher-pool", "64", "--lambda-skd", "0.5", "--out", str(tmp_path / "s")]) == 0
    ckpt = nfkd.load_checkpoint(tmp_path / "s" / "model.pt")
    assert ckpt.arch == "iaf" and ckpt.config["blocks"] == 2  # the iaf-cpu student
    assert ckpt.metadata["training"]["kd"]["method"] == "rkl+skd"
    assert ckpt.metadata["training"]["kd"]["weights"] == [0.0, 1.0, 0.5]
    capsys.readouterr()
    assert main(["distill", *common, "--teacher", teacher, "--arch", "iaf", "--method", "ilkd",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--arch iaf trains with --method none|fkl|rkl|skd|rkl+skd" in capsys.readouterr().err
    assert main(["distill", *common, "--teacher", teacher, "--method", "rkl", "--out", str(tmp_path / "bad2")]) == 2
    assert "--arch iaf" in capsys.readouterr().err


def test_energy_distance_matches_scipy_and_separates():
    from scipy.stats import energy_distance as scipy_ed

    from nfkd.metrics.tabular import energy_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 1, generator=g, dtype=D64), torch.randn(200, 1, generator=g, dtype=D64) + 0.7
    want = scipy_ed(a[:, 0].numpy(), b[:, 0].numpy()) ** 2  # scipy: sqrt of the V-statistic
    assert energy_distance(a, b, unbiased=False) == pytest.approx(want, rel=1e-10)
    same = energy_distance(torch.randn(400, 3, generator=g), torch.randn(400, 3, generator=g))
    assert abs(same) < 0.02 < energy_distance(torch.randn(400, 3, generator=g), torch.randn(400, 3, generator=g) + 0.5)


@pytest.mark.slow
def test_experiment_has_an_iaf_student_row_and_sample_quality(tmp_path):
    from nfkd.experiment import check_methods, markdown_table, run_experiment
    from nfkd.train import TrainConfig

    cfg = TrainConfig(steps=10, batch_size=32, eval_every=5, progress=False, warmup=2)
    res = run_experiment("wine", "maf", 1, tmp_path, teacher_cfg=cfg, student_cfg=cfg, methods=["none", "iaf"],
                         log=lambda *_: None)
    iaf = res["runs"]["iaf"][0]
    assert iaf["arch"] == "iaf" and iaf["nonfinite"] == 0 and res["runs"]["none"][0]["arch"] == "maf"
    assert iaf["params"] == res["runs"]["none"][0]["params"] > 0  # the MAF student's size (maf-cpu / iaf-cpu)
    for name in ("teacher", "none", "iaf"):
        assert {"teacher_ll_of_samples", "teacher_ll_of_samples_median", "energy_distance"} <= set(res["runs"][name][0])
    table = markdown_table(res)
    assert "| IAF student (recipe) (`iaf`) |" in table and "teacher log-density of its samples" in table
    with pytest.raises(InputError, match="needs a maf teacher"):
        check_methods("glow1d", ["iaf"])
    with pytest.raises(InputError, match="equal-budget"):
        check_methods("maf", ["iaf"], "warm-start")
