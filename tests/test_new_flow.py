"""A new flow type is one class plus one line (issue #26, item 4).

``CouplingFlow`` below is defined only here: a tabular flow of elementwise-affine and affine-coupling
layers. Registered with the one line ``register_architecture(CouplingFlow)`` (and, because it brings a
layer type of its own that folds, one line in ``nfkd.fold.FOLD_RULES``), it must go through
``train`` (CLI) -> ``distill`` (CLI, the student counted by its ``depth_key``) -> ``fold`` -> every CPU
backend that claims to run it -> ONNX export with the parity gate, with no other change anywhere:
every log_prob is compared with the float64 eager flow (the reference), not with a recorded value.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import nfkd
from nfkd.__main__ import main
from nfkd.flows import ARCHITECTURES, architectures, register_architecture
from nfkd.flows.base import ChainFlow
from nfkd.flows.layers import AffineCoupling, FixedAffine, Permutation
from nfkd.fold import FOLD_RULES, fold, is_folded
from nfkd.inference.registry import BACKENDS, status

ARCH = "coupling_test"
COMMON = ["--data", "wine", "--batch-size", "32", "--eval-every", "5", "--checkpoint-every", "5", "--no-progress",
          "--threads", "1", "--hidden", "8"]


class ElementwiseAffine(nn.Module):
    """y = x * exp(s) + b per feature (learned s, b): the simplest invertible layer with a log-det."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * torch.exp(self.log_scale) + self.bias, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return (y - self.bias) * torch.exp(-self.log_scale)


def fold_elementwise(m: ElementwiseAffine) -> FixedAffine:
    """Its fold rule: x * exp(s) + b is FixedAffine's (x - loc) / scale with scale = exp(-s), loc = -b exp(-s)."""
    scale = torch.exp(-m.log_scale.detach().double())
    out = FixedAffine(scale.numel()).double()
    out.set(-m.bias.detach().double() * scale, scale)
    return out


class CouplingBlock(nn.Module):
    """Elementwise affine, an affine coupling of the two halves, then the features reversed."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.affine = ElementwiseAffine(dim)
        self.coupling = AffineCoupling(dim, hidden, image=False, depth=1)
        self.perm = Permutation(torch.arange(dim - 1, -1, -1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in (self.affine, self.coupling, self.perm):
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor) -> Tensor:
        for layer in (self.perm, self.coupling, self.affine):
            y = layer.inverse(y)
        return y


class CouplingFlow(ChainFlow):
    """A tabular flow of ``blocks`` coupling blocks after a fixed input normalization (test-only)."""

    arch = ARCH
    depth_key = "blocks"
    min_dim = 2

    def __init__(self, dim: int, blocks: int = 3, hidden: int = 16) -> None:
        super().__init__(dim=dim, blocks=blocks, hidden=hidden)
        self._dim = dim
        self.normalize = FixedAffine(dim)
        self.blocks = nn.ModuleList([CouplingBlock(dim, hidden) for _ in range(blocks)])

    def chain(self) -> nn.ModuleList:
        return self.blocks


@pytest.fixture
def registered():
    register_architecture(CouplingFlow)  # the one line a new flow needs
    FOLD_RULES[ElementwiseAffine] = fold_elementwise  # the one line a new foldable layer type needs
    try:
        yield CouplingFlow
    finally:
        ARCHITECTURES.pop(ARCH, None)
        FOLD_RULES.pop(ElementwiseAffine, None)


def _reference(flow: nfkd.Flow, x: np.ndarray) -> np.ndarray:
    """The float64 eager log_prob: what every other form is held to."""
    import copy

    with torch.no_grad():
        return copy.deepcopy(flow).double().eval().log_prob(torch.as_tensor(x, dtype=torch.float64)).numpy()


def test_register_architecture_refuses_a_clash_and_a_nameless_class(registered):
    class Other(CouplingFlow):
        pass

    assert register_architecture(CouplingFlow) is CouplingFlow  # the same class again: a no-op
    with pytest.raises(ValueError, match="already CouplingFlow"):
        register_architecture(Other)
    with pytest.raises(TypeError, match="Flow subclass"):
        register_architecture(nn.Linear)  # type: ignore[arg-type]
    assert ARCH in architectures(tabular=True, teacher=True) and ARCH not in architectures(tabular=False)


def test_a_registered_flow_trains_distils_folds_runs_and_exports(registered, tmp_path, capsys):
    teacher_path, student_path = tmp_path / "t" / "model.pt", tmp_path / "s" / "model.pt"
    # train: the CLI's --arch choices come from ARCHITECTURES; no preset -> the class defaults (+ overrides)
    assert main(["train", *COMMON, "--arch", ARCH, "--steps", "10", "--steps-arch", "2", "--out",
                 str(teacher_path.parent)]) == 0
    teacher = nfkd.load(teacher_path)
    assert type(teacher) is CouplingFlow and teacher.config["blocks"] == 2 and teacher.config["hidden"] == 8
    # distil: --steps-arch counts the class's depth_key; taps pair by ChainFlow's blocks
    assert main(["distill", *COMMON, "--teacher", str(teacher_path), "--method", "ilkd", "--steps", "5",
                 "--steps-arch", "1", "--out", str(student_path.parent)]) == 0
    capsys.readouterr()
    student = nfkd.load(student_path)
    assert type(student) is CouplingFlow and student.config["blocks"] == 1

    x = np.random.default_rng(0).normal(size=(64, teacher.dim)).astype(np.float32) * 0.5
    want = _reference(teacher, x)
    # fold: its own rule (elementwise affine -> FixedAffine) and the shared ones (the coupling's +2 into its last
    # bias) give the same density
    folded = fold(teacher, torch.float64)
    assert is_folded(folded) and folded.normalize is not None  # its normalization is not folded away
    assert all(m.scale_offset == 0 for m in folded.modules() if isinstance(m, AffineCoupling))
    assert not any(isinstance(m, ElementwiseAffine) for m in folded.modules())
    assert all(isinstance(b.affine, FixedAffine) for b in folded.blocks)
    np.testing.assert_allclose(folded.log_prob(torch.as_tensor(x, dtype=torch.float64)).numpy(), want,
                               rtol=1e-10, atol=1e-10)

    # every CPU backend that is here and claims the architecture (numba's engine does not: not in its table)
    claimed = [name for name, spec in BACKENDS.items() if spec.runs(ARCH)
               and status(name).available and "cpu" in status(name).devices]
    assert {"eager", "folded", "onnxruntime"} <= set(claimed) and not BACKENDS["numba"].runs(ARCH)
    for name in claimed:
        runner = nfkd.inference.load(teacher_path, backend=name, device="cpu", threads=1)
        got = np.asarray(runner.log_prob(x), dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4, err_msg=name)
        assert np.asarray(runner.sample(8, seed=3)).shape == (8, teacher.dim)

    # ONNX export: the parity gate against float64 eager passes, and the graph agrees with the reference
    from export.onnx import export_onnx, ort_runners

    out = tmp_path / "onnx"
    manifest = export_onnx(teacher_path, out, parity_batches=[1, 7])
    assert manifest.arch == ARCH and manifest.parity["passed"] and manifest.maf_sampling is None
    density, _ = ort_runners((out / "density.onnx").read_bytes(), (out / "sample.onnx").read_bytes(), 1)
    np.testing.assert_allclose(np.asarray(density(x)[0], dtype=np.float64), want, rtol=2e-4, atol=2e-4)
