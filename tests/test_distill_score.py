"""Score (Sobolev) distillation: the input gradient against finite differences, the term by hand."""
from __future__ import annotations

import copy

import pytest
import torch

from nfkd.distill import KDConfig, StudentObjective
from nfkd.distill.objective import input_score, score_gap
from nfkd.errors import InputError
from nfkd.flows import MAF, Glow, Glow1D

from .helpers import perturb


def _flow(arch: str, k: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if arch == "glow1d":
        f = Glow1D(3, steps=k, hidden=8)
    elif arch == "maf":
        f = MAF(3, blocks=k, hidden=8)
    else:
        return perturb(Glow((2, 4, 4), levels=2, steps=k, hidden=8).double(), 0.03, seed=seed)
    f = perturb(f.double(), 0.2, seed=seed)
    # A non-trivial normalization: the score must come out in normalized units (× scale).
    f.normalize.set(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 0.5, 3.0]))
    return f


def _x(arch: str, n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if arch == "glow":
        return torch.rand(n, 2, 4, 4, generator=g, dtype=torch.float64) - 0.5
    return torch.randn(n, 3, generator=g, dtype=torch.float64) * 2


def _fd_score(flow, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central finite differences of log p, one input coordinate at a time (float64)."""
    flat = x.flatten(1)
    grad = torch.zeros_like(flat)
    with torch.no_grad():
        for j in range(flat.shape[1]):
            e = torch.zeros_like(flat)
            e[:, j] = eps
            grad[:, j] = (flow.log_prob_unchecked((flat + e).view_as(x))
                          - flow.log_prob_unchecked((flat - e).view_as(x))) / (2 * eps)
    return grad.view_as(x)


@pytest.mark.parametrize("arch", ["glow1d", "maf", "glow"])
def test_input_score_matches_finite_differences(arch):
    flow, x = _flow(arch, 2, seed=1).eval(), _x(arch)
    log_prob, score = input_score(flow, x)
    torch.testing.assert_close(log_prob, flow.log_prob_unchecked(x))
    ref = _fd_score(flow, x)
    norm = getattr(flow, "normalize", None)
    if norm is not None:  # normalized units: d/du = scale * d/dx
        ref = ref * norm.scale.double()
    torch.testing.assert_close(score, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["glow1d", "maf", "glow"])
def test_score_term_zero_for_a_twin_positive_otherwise(arch):
    teacher, x = _flow(arch, 2, seed=1), _x(arch)
    twin = StudentObjective(copy.deepcopy(teacher), teacher, KDConfig("score"))
    _, terms = twin(x)
    assert float(terms["score"]) == 0.0
    student = _flow(arch, 1, seed=2)
    _, terms = StudentObjective(student, teacher, KDConfig("score"))(x)
    assert float(terms["score"]) > 1e-6


def test_score_loss_hand_computed():
    teacher, student, x = _flow("glow1d", 3, seed=1), _flow("glow1d", 2, seed=2), _x("glow1d", 6)
    w0, w1 = 0.7, 0.3
    loss, terms = StudentObjective(student, teacher, KDConfig("score", weights=(w0, w1, 0.0)))(x)
    scale = teacher.normalize.scale.double()
    gs, gt = _fd_score(student, x) * scale, _fd_score(teacher, x) * scale
    term = (gs - gt).pow(2).mean()  # mean over rows of ||.||^2 / D
    torch.testing.assert_close(terms["score"], term, rtol=1e-5, atol=1e-8)
    nll = -student.log_prob_unchecked(x).mean() / 3
    torch.testing.assert_close(loss, w0 * nll + w1 * term, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(score_gap(gs, gt), (gs - gt).pow(2).mean(1))


def test_double_backprop_matches_finite_differences_and_spares_the_teacher():
    """The gradient of the score term w.r.t. a student parameter (through ∇x, create_graph) equals
    finite differences of the term; the teacher gets no gradient and is left unchanged."""
    teacher, student, x = _flow("maf", 3, seed=1), _flow("maf", 2, seed=2), _x("maf", 6)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    obj = StudentObjective(student, teacher, KDConfig("score", weights=(0.0, 1.0, 0.0)))
    assert set(map(id, obj.parameters())) == set(map(id, student.parameters()))
    loss, _ = obj(x)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    p = next(q for q in student.parameters() if q.grad is not None and q.grad.abs().max() > 0)
    idx = p.grad.abs().argmax()
    eps = 1e-6
    with torch.no_grad():
        flat = p.view(-1)
        old = flat[idx].item()
        flat[idx] = old + eps
        up = obj(x)[0]
        flat[idx] = old - eps
        down = obj(x)[0]
        flat[idx] = old
    torch.testing.assert_close(p.grad.view(-1)[idx], (up - down) / (2 * eps), rtol=1e-4, atol=1e-8)


def test_score_on_teacher_samples_with_a_pool():
    teacher, student, x = _flow("glow1d", 3, seed=1), _flow("glow1d", 2, seed=2), _x("glow1d", 4)
    obj = StudentObjective(student, teacher, KDConfig("score", teacher_pool=16, skd_batch=4, seed=3))
    assert not obj.needs_noise
    _, terms = obj(x)
    xs = obj._pool  # the pool the samples were drawn from (drawn once, then reused)
    assert xs is not None and len(xs) == 16
    data_only = StudentObjective(student, teacher, KDConfig("score"))(x)[1]["score"]
    assert torch.isfinite(terms["score"]) and not torch.equal(terms["score"], data_only)


def test_batch_norm_student_in_training_is_refused():
    teacher = MAF(3, blocks=2, hidden=8).eval()
    student = MAF(3, blocks=1, hidden=8, batch_norm=True).train()
    with pytest.raises(InputError, match="batch norm"):
        StudentObjective(student, teacher, KDConfig("score"))
    with pytest.raises(InputError, match="batch norm"):  # the score itself, used directly
        input_score(student, torch.randn(4, 3))
    input_score(student.eval(), torch.randn(4, 3))  # running statistics: rows independent, allowed
