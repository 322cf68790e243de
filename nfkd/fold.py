"""The inference form: the same flow classes with folded parts (swap modules, like conv+BN fusion).

``fold(flow)`` deep-copies a trained flow and replaces, in float64, then casts:

- ActNorm + LU mixing (and, in Glow-1D, the input normalization) -> one ``FoldedAffine`` with its
  inverse precomputed and a constant log-det (``inverse`` / ``slogdet`` never reach a graph);
- ``ZeroConv2d`` -> a plain ``Conv2d`` with ``exp(3 * logs)`` multiplied in;
- ``MaskedLinear`` -> a plain ``Linear`` with the MADE mask multiplied in;
- MAF's batch-norm (eval statistics) -> a ``FixedAffine``;
- the coupling's ``+2`` of ``sigmoid(s + 2)`` -> the last layer's bias.

The result *is* a ``Flow`` of the same class: its ``forward`` / ``inverse`` / ``log_prob`` /
``sample`` are the eager code, unchanged. ONNX export, TensorRT and the Triton kernels consume it
and are checked against it. There is no second copy of the flow math here: only module surgery.

>>> import torch
>>> from nfkd.flows import Glow1D
>>> flow = Glow1D(4, steps=2, hidden=8).eval()
>>> folded = fold(flow, torch.float64)
>>> x = torch.randn(3, 4, dtype=torch.float64)
>>> bool(torch.allclose(folded.log_prob(x), flow.double().log_prob(x)))
True
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .flows import Flow
from .flows.layers import (
    ActNorm,
    AffineCoupling,
    BatchNormFlow,
    FixedAffine,
    FlowStep,
    FoldedAffine,
    LUInvertibleLinear,
    MaskedLinear,
    ZeroConv2d,
)

D64 = torch.float64
__all__ = ["FOLD_RULES", "fold", "is_folded", "constant_logdet", "linear_layers"]


def _actnorm_mix(actnorm: ActNorm | None, mix: LUInvertibleLinear) -> tuple[Tensor, Tensor, Tensor]:
    """W diag(s) and W diag(s) bias of ActNorm followed by the LU mix; log-det per position."""
    w = mix.weight().to(D64)
    logdet = mix.log_s.to(D64).sum()
    b = w.new_zeros(w.shape[0])
    if actnorm is not None:
        s = actnorm.log_scale.to(D64).exp()
        b = w @ (s * actnorm.bias.to(D64))
        w = w @ torch.diag(s)
        logdet = logdet + actnorm.log_scale.to(D64).sum()
    return w, b, logdet


def _fold_step(step: FlowStep, pre: FixedAffine | None = None) -> None:
    w, b, logdet = _actnorm_mix(step.actnorm, step.mix)
    if pre is not None:  # u = (x - loc) / scale before the step: W (x - loc)/scale + b
        inv = 1.0 / pre.scale.to(D64)
        b = b - w @ (inv * pre.loc.to(D64))
        w = w @ torch.diag(inv)
        logdet = logdet + torch.log(inv).sum()
    step.actnorm = None
    step.mix = FoldedAffine(w, b, logdet)


def _plain_conv(z: ZeroConv2d) -> nn.Conv2d:
    conv = copy.deepcopy(z.conv).to(D64)
    g = torch.exp(z.logs.to(D64) * z.logscale_factor)
    conv.weight.copy_(conv.weight * g.view(-1, 1, 1, 1))
    conv.bias.copy_(conv.bias * g)
    return conv


def _plain_linear(m: MaskedLinear) -> nn.Linear:
    lin = nn.Linear(m.in_features, m.out_features, dtype=D64, device=m.weight.device)
    lin.weight.copy_(m.weight.to(D64) * m.mask.to(D64))
    lin.bias.copy_(m.bias.to(D64))
    return lin


def _bn_affine(bn: BatchNormFlow) -> FixedAffine:
    """Eval batch-norm y = (x - mean)/sqrt(var+eps) * exp(g) + beta as (x - loc) / scale."""
    scale = torch.sqrt(bn.running_var.to(D64) + bn.eps) * torch.exp(-bn.log_gamma.to(D64))
    loc = bn.running_mean.to(D64) - bn.beta.to(D64) * scale
    out = FixedAffine(scale.numel()).to(device=scale.device, dtype=D64)
    out.set(loc, scale)
    return out


#: The fold rules, in torch.fx's fuser style: layer type -> its folded replacement (built in float64).
#: A new layer type that needs folding adds one line here; nothing branches on architecture names.
FOLD_RULES: dict[type[nn.Module], Callable[[Any], nn.Module]] = {
    ZeroConv2d: _plain_conv,
    MaskedLinear: _plain_linear,
    BatchNormFlow: _bn_affine,
}


def _swap_children(module: nn.Module) -> None:
    """Replace every child with a fold rule (depth-first) by its folded equivalent."""
    for name, child in list(module.named_children()):
        rule = next((r for t, r in FOLD_RULES.items() if isinstance(child, t)), None)
        if rule is not None:
            setattr(module, name, rule(child))
        else:
            _swap_children(child)


def _fold_coupling_offset(coupling: AffineCoupling) -> None:
    if coupling.additive or not coupling.scale_offset:
        return
    last = [m for m in coupling.net if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    last.bias[coupling.c_b:] += coupling.scale_offset
    coupling.scale_offset = 0.0


def fold(flow: Flow, dtype: torch.dtype = torch.float32) -> Flow:
    """The inference form of a trained flow (its eval mode), folded in float64 and cast to ``dtype``."""
    if not isinstance(flow, Flow):
        raise TypeError(f"fold expects an nfkd Flow, got {type(flow).__name__}")
    if is_folded(flow):
        return copy.deepcopy(flow).to(dtype).eval()
    folded = copy.deepcopy(flow).eval().to(D64)
    with torch.no_grad():
        # Glow-1D: the input normalization joins the first step's affine (MAF's MADE needs x itself)
        normalize = getattr(folded, "normalize", None) if folded.fold_normalize_into_first_step else None
        steps = [m for m in folded.modules() if isinstance(m, FlowStep)]
        for i, step in enumerate(steps):
            _fold_step(step, normalize if i == 0 else None)
        if normalize is not None and steps:
            folded.normalize = None
        _swap_children(folded)
        for m in folded.modules():
            if isinstance(m, AffineCoupling):
                _fold_coupling_offset(m)
    folded._folded = True
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded.to(dtype).eval()


def is_folded(flow: nn.Module) -> bool:
    return bool(getattr(flow, "_folded", False))


def linear_layers(net: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """(weight, bias) of every Linear / Conv2d of a folded net, in order (what kernels pack)."""
    return [(m.weight, m.bias) for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def constant_logdet(folded: Flow) -> Tensor:
    """The x-independent part of log|det J| of a folded flow, summed (float64), for kernels.

    Equals ``folded.forward(x).logdet`` minus the couplings' / MADEs' / split priors'
    data-dependent terms, which the kernels add themselves (tests check the sum against
    ``folded.log_prob``).
    """
    total = torch.zeros((), dtype=D64)
    with torch.no_grad():
        for m in folded.modules():
            if isinstance(m, FoldedAffine):
                total = total + m.logdet_const.to(D64) * folded.affine_positions(m)
            elif isinstance(m, FixedAffine):
                total = total - torch.log(m.scale.to(D64)).sum()
        total = total + folded.constant_prior_logdet().to(D64)
    return total
