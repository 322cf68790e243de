"""``python -m nfkd distill`` (a student from a teacher) and ``python -m nfkd convert`` (a teacher-sized IAF).

- ``--arch iaf`` (a one-pass sampler of a MAF teacher) trains by maximum likelihood on the data,
  mixed with the teacher's samples by the documented rule (``distill.recipe``; ``--teacher-share``);
  ``--method rkl|skd|rkl+skd`` remain as fine-tunes (``--init-from`` a trained IAF).
- ``--data-free`` trains on the teacher's samples only (``distill.datafree``): the training files
  are never read; ``--data``, when given, is read after training, to report the test split.
- ``convert teacher.pt --to iaf``: a sampler of the teacher's own size, from the teacher (and the
  data when ``--data`` is given).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from typing import Any

import torch

from ..checkpoint import load, load_checkpoint
from ..defaults import DATA_FREE, DEFAULTS, Default, recommend
from ..distill import KD_SCALES, METHODS, KDConfig, default_weights
from ..distill.datafree import default_sample_counts, student_like_teacher, teacher_sample_data
from ..distill.recipe import (
    SMALL_DATA_ROWS,
    TEACHER_POOL,
    check_share,
    describe_share,
    share_config,
    teacher_sized_config,
)
from ..distill.variants import get_variant
from ..errors import InputError
from ..flows import ARCHITECTURES, Flow, architectures, flow_class
from ..pipeline import data_metadata, evaluate, flow_for, get_data, train_data
from ..presets import resolve
from ..train import train_flow
from .checks import check_cli_run, check_distill_flags, check_teacher
from .train import _common, _maybe_init_distributed, _overrides, _train_config, check_student_arch

__all__ = ["main_distill", "main_convert", "teacher_sized_config", "default_recipe"]


def _kd_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher-share", type=float, default=None,
                        help="share of every batch drawn from the teacher's samples (maximum likelihood on both; "
                             "default for --arch iaf: 0.5 below 1000 training rows, else 0)")
    parser.add_argument("--data-free", action="store_true",
                        help="train and select on the teacher's samples only (the training files are never read; "
                             "--data, if given, is read after training to report the test split)")
    parser.add_argument("--teacher-samples", type=int, default=None,
                        help="--data-free: teacher samples to train on (default: steps x batch, capped at 1M rows "
                             "/ 50k images); 10 %% more are drawn for validation")
    parser.add_argument("--temperature", type=float, default=1.0, help="SKD noise / teacher-sample temperature")
    parser.add_argument("--teacher-pool", type=int, default=0,
                        help="density/fkl (and SKD of an iaf student): draw teacher samples from a pool of this "
                             "size, drawn once (0: fresh every step; the iaf recipe uses 50000)")


def _method_help() -> str:
    rows = "; ".join(f"{d.arch} {d.size} {d.protocol}: {d.method}" for d in DEFAULTS)
    return (f"default: the defaults table (python -m nfkd info --defaults) by student arch, training rows (small: < "
            f"{SMALL_DATA_ROWS}) and protocol (warm-start with --init-from, else equal-budget): {rows}; "
            f"--data-free: {DATA_FREE.method} (maximum likelihood on teacher samples); iaf = the share recipe. "
            "rkl/rkl+skd: reverse KL fine-tunes of an iaf student").replace("%", "%%")


_METHOD_HELP = _method_help()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nfkd distill", description="Train a student from a teacher.")
    _common(parser, data_required=False)
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (.pt)")
    parser.add_argument("--arch", default=None, choices=architectures(),
                        help="student architecture (default: the teacher's); iaf: a one-pass sampler of a MAF "
                             "teacher, trained by maximum likelihood (+ teacher samples by the share rule)")
    parser.add_argument("--method", default=None, choices=METHODS,
                        help=_METHOD_HELP)
    parser.add_argument("--init-from", default=None,
                        help="start from this checkpoint of the same student architecture and size (fine-tunes)")
    parser.add_argument("--lambda-nll", type=float, default=None, help="λ0 (default: the paper's for the method)")
    parser.add_argument("--lambda-kd", type=float, default=None,
                        help="λ1, weight of the (I)LKD, density, fkl or reverse-KL term")
    parser.add_argument("--lambda-skd", type=float, default=None, help="λ2, weight of SKD")
    parser.add_argument("--distance", default="l1", choices=["l1", "mse"], help="(I)LKD distance")
    parser.add_argument("--sample-distance", default="l1", choices=["l1", "mse"])
    parser.add_argument("--kd-scale", default=KDConfig.kd_scale, choices=list(KD_SCALES),
                        help="paper: (I)LKD/SKD divided by D against the per-dim NLL (the paper code's ratio); "
                             "mean: as dimension means (D times stronger)")
    parser.add_argument("--align", action="store_true",
                        help="Procrustes-align student latents to the teacher's inside (I)LKD/SKD")
    parser.add_argument("--align-every", type=int, default=KDConfig.align_every, help="steps between alignment fits")
    parser.add_argument("--init-from-teacher", action="store_true",
                        help="start the student from the paired teacher blocks (ActNorm, mixing, permutations, "
                             "coupling nets of equal width)")
    _kd_flags(parser)
    return parser


def _check_flags(args: argparse.Namespace) -> None:
    check_distill_flags(args)
    check_share(args.teacher_share)
    if args.data_free and args.teacher_share is not None:
        raise InputError("--teacher-share does not apply with --data-free: every training row is a teacher sample")
    if not args.data_free and args.data is None:
        raise InputError("--data is required (or --data-free to train on the teacher's samples only)")
    if args.data_free and args.resume:
        raise InputError("--resume is not supported with --data-free (the samples are drawn anew); start afresh")
    if args.teacher_samples is not None and (isinstance(args.teacher_samples, bool) or args.teacher_samples < 1):
        raise InputError(f"--teacher-samples must be a positive integer, got {args.teacher_samples!r}")
    if args.teacher_samples is not None and not args.data_free:
        raise InputError("--teacher-samples applies with --data-free (the recipe streams from a 50k pool)")


def _method(args: argparse.Namespace, arch: str) -> str | None:
    """The KD method named on the command line ("recipe": the share rule); None: the defaults table decides."""
    if args.method is not None:
        if args.teacher_share is not None and args.method not in ("fkl", "none"):
            raise InputError(f"--teacher-share sets the maximum-likelihood mix (fkl); it does not combine with "
                             f"--method {args.method}")
        return args.method
    if args.teacher_share is not None:
        return "recipe"
    return None


def default_recipe(arch: str, n_train: int, data_free: bool = False, warm_start: bool = False) -> Default:
    """The defaults-table row ``distill`` runs without --method (``nfkd.defaults``)."""
    if data_free:
        return DATA_FREE
    return recommend(arch, n_train, "warm-start" if warm_start else "equal-budget")


#: KD flags that, set on the command line, adjust the table's recipe (name: KDConfig field).
_KD_FLAGS = {"distance": "latent_distance", "sample_distance": "sample_distance", "temperature": "temperature",
             "kd_scale": "kd_scale", "align": "align", "align_every": "align_every",
             "init_from_teacher": "init_from_teacher", "teacher_pool": "teacher_pool"}


def _table_config(args: argparse.Namespace, arch: str, n_train: int) -> tuple[KDConfig, str]:
    """No --method: the table's variant, with the KD flags the user set on top."""
    d = default_recipe(arch, n_train, args.data_free, warm_start=args.init_from is not None)
    if d.method == "iaf" or (not flow_class(arch).one_pass_density and d.method == "none"):  # the share recipe
        kd = share_config(n_train, 0.0 if d.method == "none" else None, seed=args.seed,
                          pool=args.teacher_pool or TEACHER_POOL, temperature=args.temperature)
        what = describe_share(n_train, 0.0 if d.method == "none" else None)
    else:
        kd = get_variant(d.method).config(n_train=n_train, seed=args.seed)
        parser = _parser()
        changed = {f: getattr(args, a) for a, f in _KD_FLAGS.items() if getattr(args, a) != parser.get_default(a)}
        kd = replace(kd, **changed)
        if any(v is not None for v in (args.lambda_nll, args.lambda_kd, args.lambda_skd)):
            base = kd.weights or default_weights(kd.method, arch)
            kd = replace(kd, weights=tuple(v if v is not None else b for v, b in
                                           zip((args.lambda_nll, args.lambda_kd, args.lambda_skd), base)))
        what = f"{d.method}" + (" on the teacher's samples only" if args.data_free else "")
    where = "data-free" if args.data_free else f"{arch}, {n_train} training rows, {d.protocol}"
    return kd, f"{what} (the defaults table: {where}; {d.measured})"


def _kd_config(args: argparse.Namespace, method: str | None, arch: str, n_train: int) -> tuple[KDConfig, str]:
    """The KD config and a sentence saying what it trains with."""
    if method is None:
        return _table_config(args, arch, n_train)
    if method == "recipe" or (args.teacher_share is not None and method in ("fkl", "none")):
        kd = share_config(n_train, args.teacher_share, seed=args.seed, pool=args.teacher_pool or TEACHER_POOL,
                          temperature=args.temperature)
        return kd, describe_share(n_train, args.teacher_share)
    weights = None
    if any(v is not None for v in (args.lambda_nll, args.lambda_kd, args.lambda_skd)):
        base = default_weights(method, arch)
        weights = tuple(v if v is not None else b for v, b in zip((args.lambda_nll, args.lambda_kd, args.lambda_skd), base))
    kd = KDConfig(method=method, weights=weights, latent_distance=args.distance,
                  sample_distance=args.sample_distance, temperature=args.temperature, kd_scale=args.kd_scale,
                  align=args.align, align_every=args.align_every, init_from_teacher=args.init_from_teacher,
                  teacher_pool=args.teacher_pool, seed=args.seed)
    what = f"--method {method}" + (" on the teacher's samples only" if args.data_free else "")
    return kd, what


def _init_from(flow: Flow, path: str | None) -> None:
    """Warm start: the checkpoint must be the same architecture and size as the student."""
    if path is None:
        return
    ckpt = load_checkpoint(path)
    if ckpt.arch != flow.arch or ckpt.flow.config != flow.config:
        raise InputError(f"--init-from {path} is a {ckpt.arch} with config {ckpt.flow.config}; the student is a "
                         f"{flow.arch} with config {flow.config}")
    flow.load_state_dict(ckpt.flow.state_dict())


def run_distill(args: argparse.Namespace, teacher: Flow, arch: str, student_config: dict[str, Any],
                role_meta: dict[str, Any]) -> int:
    """Train the student (on data, or data-free), save it, print the JSON report."""
    cfg = _train_config(args)
    method = _method(args, arch)
    check_student_arch(arch, teacher.arch, "none" if method in ("recipe", None) else method)
    meta: dict[str, Any] = {"role": "student", "teacher": os.path.abspath(args.teacher), "preset": args.preset,
                            **role_meta}
    data = None
    torch.manual_seed(args.seed)
    if args.data_free:
        n_train, n_val = default_sample_counts(teacher, cfg.steps, cfg.batch_size)
        if args.teacher_samples is not None:
            n_train, n_val = args.teacher_samples, max(1, min(20_000, max(1_000, args.teacher_samples // 10)))
        samples = teacher_sample_data(teacher, n_train, n_val, seed=args.seed, temperature=args.temperature)
        flow, td = student_like_teacher(teacher, student_config), samples.data
        t_meta = getattr(teacher, "checkpoint_metadata", None) or {}
        meta.update({**{k: t_meta[k] for k in ("dataset", "normalization", "image_shape", "n_levels") if k in t_meta},
                     **samples.metadata()})
        n_rows = n_train
    else:
        data = get_data(args.data, args.data_root, seed=args.seed)
        check_teacher(teacher, data)
        flow, td = flow_for(data, student_config), train_data(data)
        meta.update(data_metadata(data))
        n_rows = len(td.train)
    _init_from(flow, args.init_from)
    kd, recipe = _kd_config(args, method, arch, n_rows)
    check_student_arch(arch, teacher.arch, kd.method)
    meta["recipe"] = recipe
    result = train_flow(flow, td, cfg, args.out, teacher=teacher if kd.needs_teacher else None, kd=kd,
                        metadata=meta, resume=args.resume)
    _report_distill(result, args, data, recipe)
    return 0


def _report_distill(result, args: argparse.Namespace, data, recipe: str) -> None:
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank:
        return
    out: dict[str, Any] = {"out": args.out, "recipe": recipe, "best_step": result.best_step,
                           "selection": {"val_nll": result.best_val_nll, "val_nll_trimmed": result.best_val_trimmed,
                                         "val_nonfinite": result.best_val_nonfinite,
                                         "on": "held-out teacher samples" if args.data_free else "validation split"}}
    if args.data_free and args.data is not None:  # read only now: the real test split, to report
        data = get_data(args.data, args.data_root, seed=args.seed)
        check_teacher(result.flow, data)
        out["test"] = evaluate(result.flow, data, "test", device=args.device)
    elif data is not None:
        out["val"] = evaluate(result.flow, data, "val", device=args.device)
    print(json.dumps(out, indent=1))


def main_distill(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    _check_flags(args)
    check_cli_run(_train_config(args), args.out, args.threads, {"steps_arch": args.steps_arch, "hidden": args.hidden})
    if args.threads:
        torch.set_num_threads(args.threads)
    _maybe_init_distributed()
    teacher = load(args.teacher, map_location=args.device)
    arch = args.arch or teacher.arch
    config = resolve(arch, "student", args.preset, _overrides(args, arch))
    return run_distill(args, teacher, arch, config, {})


def main_convert(argv: list[str]) -> int:
    """``python -m nfkd convert teacher.pt --to iaf --out DIR [--data NAME]``."""
    parser = argparse.ArgumentParser(
        prog="python -m nfkd convert",
        description="A teacher-sized one-pass sampler (IAF) of a MAF teacher, trained by maximum likelihood on the "
                    "teacher's samples (and the data, mixed by the share rule, when --data is given).")
    parser.add_argument("teacher", help="the MAF teacher checkpoint (.pt)")
    parser.add_argument("--to", default="iaf", choices=[a for a, c in ARCHITECTURES.items() if c.student_of],
                        help="target architecture")
    _common(parser, data_required=False)
    _kd_flags(parser)
    parser.set_defaults(steps=3000)
    args = parser.parse_args(argv)
    args.data_free = args.data_free or args.data is None
    for name, default in (("method", None), ("arch", args.to), ("init_from", None), ("lambda_nll", None),
                          ("lambda_kd", None), ("lambda_skd", None), ("distance", "l1"), ("sample_distance", "l1"),
                          ("kd_scale", KDConfig.kd_scale), ("align", False), ("align_every", KDConfig.align_every),
                          ("init_from_teacher", False)):
        setattr(args, name, default)
    if args.data_free and args.teacher_share is not None and args.data is None:
        raise InputError("--teacher-share needs --data (without data every training row is a teacher sample)")
    _check_flags(args)
    check_cli_run(_train_config(args), args.out, args.threads, {"steps_arch": None, "hidden": None})
    if args.steps_arch is not None or args.hidden is not None or args.preset is not None:
        raise InputError("convert builds the teacher's own size; --steps-arch, --hidden and --preset do not apply")
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = load(args.teacher, map_location=args.device)
    config = teacher_sized_config(teacher, args.to)
    return run_distill(args, teacher, args.to, config, {"converted_from": os.path.abspath(args.teacher),
                                                      "size": "teacher"})

