"""``python -m nfkd train`` (teacher or plain student) and ``python -m nfkd distill`` (KD student)."""
from __future__ import annotations

import argparse
import json
import os

import torch

from .checkpoint import load
from .cli_checks import check_cli_run, check_distill_flags, check_teacher
from .distill import KD_SCALES, METHODS, KDConfig, default_weights
from .errors import InputError
from .pipeline import data_metadata, evaluate, flow_for, get_data, train_data
from .presets import PRESETS, resolve
from .train import TrainConfig, train_flow

__all__ = ["check_student_arch", "main_train", "main_distill"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset name (python -m nfkd data list)")
    parser.add_argument("--data-root", default=None, help="folder with the dataset files (or NFKD_DATA_ROOT)")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS), help="architecture preset")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (paper: 5e-5 for images)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clip-grad", type=float, default=5.0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True, help="output folder (model.pt, metrics.jsonl, loss_curve.png)")
    parser.add_argument("--steps-arch", type=int, default=None, help="override K (flow steps / MAF blocks)")
    parser.add_argument("--hidden", type=int, default=None, help="override hidden width")


def _train_config(args) -> TrainConfig:
    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, clip_grad=args.clip_grad,
        eval_every=args.eval_every, patience=args.patience, checkpoint_every=args.checkpoint_every,
        seed=args.seed, device=args.device, progress=not args.no_progress,
    )


def _overrides(args, arch: str) -> dict:
    key = "blocks" if arch in ("maf", "iaf") else "steps"
    return {key: args.steps_arch, "hidden": args.hidden}


def check_student_arch(arch: str, teacher_arch: str, method: str) -> None:
    """Which student architectures a teacher can be distilled into, with which methods (one clear error)."""
    from .distill import PARALLEL_METHODS

    if arch == "iaf":
        if teacher_arch != "maf":
            raise InputError(f"an iaf student is distilled from a maf teacher; this teacher is {teacher_arch}")
        if method not in PARALLEL_METHODS:
            raise InputError(f"--arch iaf trains with --method {'|'.join(PARALLEL_METHODS)}, not {method!r} "
                             "(the other methods need the student's density direction: D passes per block)")
    elif arch != teacher_arch:
        raise InputError(f"a {teacher_arch} teacher distils into a {teacher_arch} student (or --arch iaf from "
                         f"a maf teacher), not {arch}")
    elif method in ("rkl", "rkl+skd"):
        raise InputError(f"--method {method} needs a student that knows its density on its own samples in one "
                         f"pass: use --arch iaf (with a maf teacher)")


def _maybe_init_distributed() -> None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)


def _report(result, flow, data, args) -> None:
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0:
        summary = evaluate(flow, data, "val", device=args.device)
        print(json.dumps({"out": args.out, "best_step": result.best_step, "val": summary}, indent=1))


def main_train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfkd train", description="Train a teacher or a plain student.")
    _common(parser)
    parser.add_argument("--arch", required=True, choices=["glow", "glow1d", "maf", "iaf"],
                        help="iaf: a parallel-sampling student (its density costs D passes per block)")
    parser.add_argument("--role", default="teacher", choices=["teacher", "student"])
    args = parser.parse_args(argv)
    check_cli_run(_train_config(args), args.out, args.threads, {"steps_arch": args.steps_arch, "hidden": args.hidden})
    if args.threads:
        torch.set_num_threads(args.threads)
    _maybe_init_distributed()
    data = get_data(args.data, args.data_root, seed=args.seed)
    torch.manual_seed(args.seed)
    flow = flow_for(data, resolve(args.arch, args.role, args.preset, _overrides(args, args.arch)))
    meta = {**data_metadata(data), "role": args.role, "preset": args.preset}
    result = train_flow(flow, train_data(data), _train_config(args), args.out, metadata=meta, resume=args.resume)
    _report(result, result.flow, data, args)
    return 0


def main_distill(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfkd distill", description="Train a student from a teacher.")
    _common(parser)
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (.pt)")
    parser.add_argument("--arch", default=None, choices=["glow", "glow1d", "maf", "iaf"],
                        help="student architecture (default: the teacher's); iaf: parallel sampling, distilled "
                             "from a MAF teacher with --method rkl|skd|rkl+skd")
    parser.add_argument("--method", default=None, choices=METHODS,
                        help="default: skd (rkl for --arch iaf); rkl = reverse KL (probability density "
                             "distillation), rkl+skd adds SKD with shared noise")
    parser.add_argument("--lambda-nll", type=float, default=None, help="λ0 (default: the paper's for the method)")
    parser.add_argument("--lambda-kd", type=float, default=None,
                        help="λ1, weight of the (I)LKD, density, fkl or reverse-KL term")
    parser.add_argument("--lambda-skd", type=float, default=None, help="λ2, weight of SKD")
    parser.add_argument("--distance", default="l1", choices=["l1", "mse"], help="(I)LKD distance")
    parser.add_argument("--sample-distance", default="l1", choices=["l1", "mse"])
    parser.add_argument("--temperature", type=float, default=1.0, help="SKD noise / teacher-sample temperature")
    parser.add_argument("--kd-scale", default=KDConfig.kd_scale, choices=list(KD_SCALES),
                        help="paper: (I)LKD/SKD divided by D against the per-dim NLL (the paper code's ratio); "
                             "mean: as dimension means (D times stronger)")
    parser.add_argument("--align", action="store_true",
                        help="Procrustes-align student latents to the teacher's inside (I)LKD/SKD")
    parser.add_argument("--align-every", type=int, default=KDConfig.align_every, help="steps between alignment fits")
    parser.add_argument("--init-from-teacher", action="store_true",
                        help="start the student from the paired teacher blocks (ActNorm, mixing, permutations, "
                             "coupling nets of equal width)")
    parser.add_argument("--teacher-pool", type=int, default=0,
                        help="density/fkl (and SKD of an iaf student): draw teacher samples from a pool of this "
                             "size, drawn once (0: fresh every step)")
    args = parser.parse_args(argv)
    check_distill_flags(args)
    check_cli_run(_train_config(args), args.out, args.threads, {"steps_arch": args.steps_arch, "hidden": args.hidden})
    if args.threads:
        torch.set_num_threads(args.threads)
    _maybe_init_distributed()
    teacher = load(args.teacher, map_location=args.device)
    data = get_data(args.data, args.data_root, seed=args.seed)
    check_teacher(teacher, data)
    torch.manual_seed(args.seed)
    arch = args.arch or teacher.arch
    args.method = args.method or ("rkl" if arch == "iaf" else "skd")
    check_student_arch(arch, teacher.arch, args.method)
    flow = flow_for(data, resolve(arch, "student", args.preset, _overrides(args, arch)))
    weights = None
    if any(v is not None for v in (args.lambda_nll, args.lambda_kd, args.lambda_skd)):
        base = default_weights(args.method, arch)
        weights = tuple(v if v is not None else b for v, b in zip((args.lambda_nll, args.lambda_kd, args.lambda_skd), base))
    kd = KDConfig(method=args.method, weights=weights, latent_distance=args.distance,
                  sample_distance=args.sample_distance, temperature=args.temperature, kd_scale=args.kd_scale,
                  align=args.align, align_every=args.align_every, init_from_teacher=args.init_from_teacher,
                  teacher_pool=args.teacher_pool, seed=args.seed)
    meta = {**data_metadata(data), "role": "student", "teacher": os.path.abspath(args.teacher), "preset": args.preset}
    result = train_flow(flow, train_data(data), _train_config(args), args.out, teacher=teacher if kd.needs_teacher else None,
                        kd=kd, metadata=meta, resume=args.resume)
    _report(result, result.flow, data, args)
    return 0
