"""``python -m nfkd train`` (teacher or plain student) and ``python -m nfkd distill`` (KD student)."""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from ..errors import InputError
from ..flows import ARCHITECTURES, architectures, flow_class
from ..pipeline import data_metadata, evaluate, flow_for, get_data, train_data
from ..presets import PRESETS, resolve
from ..train import TrainConfig, train_flow
from .checks import check_cli_run

__all__ = ["IAF_METHODS", "check_student_arch", "main_train", "main_distill"]


def _common(parser: argparse.ArgumentParser, data_required: bool = True) -> None:
    parser.add_argument("--data", required=data_required, default=None,
                        help="dataset name (python -m nfkd data list) or a table file .csv/.parquet/.npy/.npz; "
                             "PATH:col1,col2 keeps those columns (names or 0-based indices); seeded split: 10%% test, "
                             "10%% of the rest validation")
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
    return {flow_class(arch).depth_key: args.steps_arch, "hidden": args.hidden}


#: What an IAF student trains with: maximum likelihood (with teacher samples: fkl), or the parallel methods.
IAF_METHODS = ("none", "fkl", "rkl", "skd", "rkl+skd")


def check_student_arch(arch: str, teacher_arch: str, method: str) -> None:
    """Which student architectures a teacher can be distilled into, with which methods (one clear error)."""
    cls = flow_class(arch)
    if arch != teacher_arch and teacher_arch not in cls.student_of:
        others = [a for a, c in ARCHITECTURES.items() if teacher_arch in c.student_of]
        also = f" (or --arch {' / '.join(others)})" if others else ""
        raise InputError(f"a {teacher_arch} teacher distils into a {teacher_arch} student{also}, not {arch}"
                         + (f"; an {arch} student is distilled from a {' or '.join(cls.student_of)} teacher"
                            if cls.student_of else ""))
    if not cls.one_pass_density and method not in IAF_METHODS:
        raise InputError(f"--arch {arch} trains with --method {'|'.join(IAF_METHODS)}, not {method!r} "
                         "(default: maximum likelihood with the teacher-sample share rule; rkl/skd are "
                         "fine-tunes)")
    if method in ("rkl", "rkl+skd") and not cls.samples_with_density:
        fits = [a for a, c in ARCHITECTURES.items() if c.samples_with_density]
        raise InputError(f"--method {method} needs a student that knows its density on its own samples in one "
                         f"pass: use --arch {' / '.join(fits)} (with a teacher it is a student of)")


def _maybe_init_distributed() -> None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)


def _report(result, flow, data, args) -> None:
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0:
        summary = evaluate(flow, data, "val", device=args.device)
        test = evaluate(flow, data, "test", device=args.device)  # the number a user wants, without `evaluate`
        print(json.dumps({"out": args.out, "best_step": result.best_step, "val": summary, "test": test}, indent=1))
        print(f"test log-likelihood {test['log_likelihood']:.4f} ± {test['ll_2se']:.4f} nats/row (2 SE, n={test['n']})"
              + (f", {test['bpd']:.4f} bits/dim" if "bpd" in test else "")
              + f"; weights of step {result.best_step} of {result.steps_done} (best validation NLL)", file=sys.stderr)


def main_train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfkd train", description="Train a teacher or a plain student.")
    _common(parser)
    parser.add_argument("--arch", required=True, choices=architectures(),
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
    """Kept for old imports: ``distill`` lives in ``nfkd.cli.distill``."""
    from .distill import main_distill as run

    return run(argv)
