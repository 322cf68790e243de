"""Checks of a checkpoint's buffers against its config, before anything is scored.

A checkpoint's checksum is computed by whoever wrote the file, so it vouches for integrity, not for
meaning: a file whose MADE masks are all ones, or whose permutation is ``[0, 0]``, still loads, and
its "density" no longer integrates to one. Structural buffers are therefore checked against the
model the config builds: MADE masks and the fixed masks / identities of the LU mixing must equal
the config's exactly; a MAF / IAF permutation must be a permutation (with its inverse) and, unless
the model was initialised from a teacher's blocks (metadata ``init_from_teacher``), the one the
config's seed gives; the LU permutation matrix must be a permutation matrix and its signs +-1.
Data buffers (normalization statistics, batch-norm running averages) must be finite with positive
scale / variance, and every stored floating tensor must be finite.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .errors import CheckpointError
from .flows.layers import ActNorm, BatchNormFlow, FixedAffine, LUInvertibleLinear, MaskedLinear, Permutation

__all__ = ["check_structure"]

#: (module type, buffer name) -> check(stored, fresh, exact_perms) returning why it is wrong, or "".
Rule = Callable[[Tensor, Tensor, bool], str]


def _finite(stored: Tensor, fresh: Tensor, exact_perms: bool) -> str:
    return "" if bool(torch.isfinite(stored).all()) else "holds NaN or Inf"


def _positive(stored: Tensor, fresh: Tensor, exact_perms: bool) -> str:
    return _finite(stored, fresh, exact_perms) or ("" if bool((stored > 0).all()) else "holds values <= 0")


def _anything(stored: Tensor, fresh: Tensor, exact_perms: bool) -> str:
    return ""


def _exact(stored: Tensor, fresh: Tensor, exact_perms: bool) -> str:
    return "" if torch.equal(stored.to(fresh.dtype), fresh) else "differs from the one its config gives"


def _is_permutation(p: Tensor) -> bool:
    return p.dim() == 1 and torch.equal(torch.sort(p).values, torch.arange(p.numel(), dtype=p.dtype))


def _permutation(stored: Tensor, fresh: Tensor, exact_perms: bool) -> str:
    if not _is_permutation(stored):
        return "is not a permutation of 0..D-1"
    if exact_perms and not torch.equal(stored, fresh):
        return "differs from the permutation its config (permutation, seed) gives"
    return ""


def _permutation_matrix(stored: Tensor, fresh: Tensor, exact_perms: bool) -> str:
    ok = (stored.dim() == 2 and bool(((stored == 0) | (stored == 1)).all())
          and bool((stored.sum(0) == 1).all()) and bool((stored.sum(1) == 1).all()))
    return "" if ok else "is not a permutation matrix"


def _signs(stored: Tensor, fresh: Tensor, exact_perms: bool) -> str:
    return "" if bool((stored.abs() == 1).all()) else "holds values other than +1 / -1"


RULES: dict[tuple[type, str], Rule] = {
    (MaskedLinear, "mask"): _exact,
    (Permutation, "perm"): _permutation,
    (LUInvertibleLinear, "perm"): _permutation_matrix,
    (LUInvertibleLinear, "sign_s"): _signs,
    (LUInvertibleLinear, "lower_mask"): _exact,
    (LUInvertibleLinear, "eye"): _exact,
    (FixedAffine, "loc"): _finite,
    (FixedAffine, "scale"): _positive,
    (BatchNormFlow, "running_mean"): _finite,
    (BatchNormFlow, "running_var"): _positive,
    (ActNorm, "initialized"): _anything,
}


def _rule(module: nn.Module, name: str) -> Rule:
    """The check of one buffer; an unknown buffer is structural until proven otherwise: exact."""
    for (kind, buf), rule in RULES.items():
        if isinstance(module, kind) and name == buf:
            return rule
    return _exact


def _inverse_consistent(prefix: str, tensors: dict[str, Tensor]) -> bool:
    """A Permutation's stored inverse must invert its stored permutation."""
    perm, inv = tensors[prefix + "perm"], tensors[prefix + "inv_perm"]
    return _is_permutation(perm) and torch.equal(inv, torch.argsort(perm))


def check_structure(path: Path, fresh: nn.Module, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    """Refuse stored tensors whose structure the config does not give (``fresh``: built from the config)."""
    exact_perms = "init_from_teacher" not in metadata  # a teacher's permutations are valid, not the seed's
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor {key} holds NaN or Inf; the file is corrupt or crafted")
    for mod_name, module in fresh.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for name, buf in module.named_buffers(recurse=False):
            if isinstance(module, Permutation) and name == "inv_perm":
                why = "" if _inverse_consistent(prefix, tensors) else "is not the inverse of its perm"
            else:
                why = _rule(module, name)(tensors[prefix + name], buf, exact_perms)
            if why:
                raise CheckpointError(f"{path}: buffer {prefix + name} {why}; the file is corrupt or crafted "
                                      "(its checksum is computed by whoever wrote it, so it cannot vouch for this)")
