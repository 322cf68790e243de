"""Ahead-of-time compile check of every launchable kernel configuration, no GPU needed.

``python -m kernels.aot [--arch 80,90] [--json PATH] [--jobs N] [--kernel NAME] [--try SPEC]``

Compiles every record of ``kernels.configs.CONFIGS`` in every flag combination its launches use,
for each target architecture, with ``triton.compile(ASTSource(fn, signature, constexprs),
target=GPUTarget("cuda", arch, 32))`` - the same TTIR -> TTGIR -> LLVM IR -> PTX -> cubin pipeline
a launch on that GPU runs (ptxas included) - and prints one row per (kernel, configuration,
target): compiled or the compiler's error, the shared memory the cubin needs against the target's
per-block limit, warps and stages.  Exit code 1 when any variant fails to compile or does not fit.

The interpreter checks the kernels' arithmetic; this checks their lowering.  Compiles run in
worker processes with ``TRITON_INTERPRET=0`` (a process whose triton was imported in interpreter
mode cannot compile), so this also works from inside pytest.  Results are cached by Triton
(``~/.triton/cache``; ``TRITON_CACHE_DIR`` moves it), so a second run only re-checks limits.

What is compiled is the launch's canonical specialization: every pointer argument 16-byte
aligned (as torch allocations are), integer arguments unspecialized.  Triton additionally
specializes integers divisible by 16 at launch time; those variants differ in load vectorization.

``--try "glow1d_log_prob DP=64 HP=64 BLOCK_B=64 num_warps=4 num_stages=3"`` checks a candidate
configuration instead of the list (pinning flags is possible too, e.g. ``ADDITIVE=0``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any, Sequence

from . import configs as C

__all__ = ["signature", "compile_one", "Row", "judge", "largest_per_kernel", "heaviest_flags", "run_check",
    "format_table", "summary", "parse_try", "main"]

# ---------------------------------------------------------------------------------------------
# worker side (a fresh process: triton is imported here, in compiled mode)
# ---------------------------------------------------------------------------------------------


def _init_worker() -> None:
    os.environ["TRITON_INTERPRET"] = "0"  # before kernels.* imports triton (kernels._env leaves a set value alone)
    import warnings

    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")


def signature(fn, kernel: C.Kernel) -> tuple[dict[str, str], dict[tuple[int, ...], list]]:
    """(signature, attrs) from the jit function's own parameter list: constexprs by declaration,
    pointers (``*_ptr``) as 16-byte aligned float32 unless ``kernel.types`` says otherwise, other
    scalars i32 unless ``kernel.types`` says otherwise."""
    types = dict(kernel.types)
    sig, attrs = {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = types.get(p.name, "*fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[p.name] = types.get(p.name, "i32")
    return sig, attrs


def compile_one(kernel_key: str, cfg: C.Config, flags: dict[str, Any], arch: int) -> dict[str, Any]:
    """Compile one variant for one target; returns metadata or the compiler's error."""
    import importlib

    t0 = time.perf_counter()
    out: dict[str, Any] = {"ok": False, "shared": None, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                           "error": None}
    try:
        kernel = C.KERNELS[kernel_key]
        module = importlib.import_module(f"kernels.{kernel.module}")
        fn = getattr(module, kernel.fn)
        if not hasattr(fn, "params"):  # an InterpretedFunction: the mode was fixed before this worker
            raise RuntimeError("kernels were imported in interpreter mode; run in a fresh process")
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        sig, attrs = signature(fn, kernel)
        src = ASTSource(fn, sig, C.constexprs(cfg, flags), attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        md = compiled.metadata
        out.update(ok=True, shared=int(md.shared), num_warps=int(md.num_warps), num_stages=int(md.num_stages),
                   cubin_bytes=len(compiled.asm.get("cubin", b"")))
    except Exception as exc:  # the compiler's error is the result
        out["error"] = compiler_error(exc)
        out["traceback"] = traceback.format_exc(limit=3)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


# ---------------------------------------------------------------------------------------------
# driver side (no triton import)
# ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One (kernel, configuration, target), aggregated over its flag variants."""

    kernel: str
    config: str
    target: str
    num_warps: int
    num_stages: int
    limit: int
    variants: int = 0
    compiled: int = 0
    shared: int | None = None  # the largest over the variants
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.compiled == self.variants

    def status(self) -> str:
        if self.ok:
            return f"compiled {self.compiled}/{self.variants}"
        return f"FAILED ({self.compiled}/{self.variants} compiled and fit)"


def judge(result: dict[str, Any], arch: int) -> str | None:
    """The problem with one compiled variant on ``arch``, or None when it compiles and fits."""
    if not result["ok"]:
        return f"does not compile: {result['error']}"
    limit = C.ARCHS[arch]
    if result["shared"] > limit:
        return (f"needs {result['shared']} bytes of shared memory per block; sm_{arch} allows {limit} "
                f"({result['shared'] - limit} too many): lower num_stages or the block size in kernels/configs.py")
    if result["num_warps"] * 32 > 1024:
        return f"{result['num_warps']} warps = {result['num_warps'] * 32} threads > 1024 per block"
    return None


def largest_per_kernel(cfgs: Sequence[C.Config], arch: int) -> list[C.Config]:
    """Per kernel, the record offered on ``arch`` with the largest tiles (product of its shape
    numbers; then rows per program x pipeline stages): where shared memory binds first."""
    def size(c: C.Config) -> tuple[int, int]:
        return math.prod(int(v) for _, v in c.shape), c.block * c.num_stages

    best: dict[str, C.Config] = {}
    for c in cfgs:
        if arch in c.archs and (c.kernel not in best or size(c) > size(best[c.kernel])):
            best[c.kernel] = c
    return list(best.values())


def heaviest_flags(kernel: str) -> dict[str, Any]:
    """The flag combination with the most code: every optional stage on, affine (not additive) coupling."""
    def weight(flags: dict[str, Any]) -> int:  # the coupling network outweighs any other stage
        return sum((2 if k == "HAS_COUPLING" else 1) * (bool(v) != (k == "ADDITIVE")) for k, v in flags.items())

    return max((dict(f) for f in C.KERNELS[kernel].flags), key=weight)


def _tasks(cfgs: Sequence[C.Config], archs: Sequence[int], pinned: dict[str, Any] | None = None, keep=None):
    for cfg in cfgs:
        for arch in archs:
            if arch not in cfg.archs:
                continue
            for flags in C.variants(cfg):
                if pinned and any(flags.get(k, v) != v for k, v in pinned.items()):
                    continue
                if keep is not None and not keep(cfg, arch, flags):
                    continue
                yield cfg, dict(flags), arch


def run_check(cfgs: Sequence[C.Config], archs: Sequence[int], jobs: int = 0,
              pinned: dict[str, Any] | None = None, progress=None, keep=None) -> tuple[list[Row], list[dict]]:
    """Compile every (config, flags, arch); returns per-target rows and per-variant records."""
    unknown = [a for a in archs if a not in C.ARCHS]
    if unknown:
        raise ValueError(f"unknown target sm_{unknown[0]}: kernels.configs.ARCHS knows {sorted(C.ARCHS)} "
                         "(add its shared-memory limit there first)")
    tasks = list(_tasks(cfgs, archs, pinned, keep))
    jobs = jobs or max(1, min(len(tasks), os.cpu_count() or 1))
    rows: dict[tuple, Row] = {}
    for cfg in cfgs:
        for arch in archs:
            if arch not in cfg.archs:
                continue
            rows[(cfg, arch)] = Row(cfg.kernel, cfg.label(), f"sm_{arch}", cfg.num_warps, cfg.num_stages,
                                    C.ARCHS[arch])
    records = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        futures = [(t, pool.submit(compile_one, t[0].kernel, *t)) for t in tasks]
        for (cfg, flags, arch), fut in futures:
            try:
                res = fut.result()
            except Exception as exc:  # a compiler crash that took the worker process down
                res = {"ok": False, "shared": None, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                       "error": f"compile worker died: {type(exc).__name__}: {exc}", "seconds": 0.0}
            row = rows[(cfg, arch)]
            row.variants += 1
            row.seconds += res["seconds"]
            problem = judge(res, arch)
            if res["ok"]:
                row.shared = max(row.shared or 0, res["shared"])
                row.num_warps, row.num_stages = res["num_warps"], res["num_stages"]
            if problem is None:
                row.compiled += 1
            else:
                fl = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in flags.items())
                row.problems.append(f"[{fl}] {problem}")
            records.append({"kernel": cfg.kernel, "config": asdict(cfg), "flags": flags, "target": f"sm_{arch}",
                            "limit": C.ARCHS[arch], "problem": problem,
                            **{k: v for k, v in res.items() if k != "traceback"}})
            if progress:
                progress(len(records), len(tasks), records[-1])
    return [r for r in rows.values() if r.variants], records


def _shared(r: Row) -> str:
    return f"{r.shared if r.shared is not None else '-'} / {r.limit}"


def format_table(rows: Sequence[Row], markdown: bool = False) -> str:
    """Plain text: one line per (kernel, configuration, target).  Markdown: one line per
    (kernel, configuration) with a result and a shared-memory column per target."""
    if markdown:
        targets = list(dict.fromkeys(r.target for r in rows))
        by: dict[tuple[str, str], dict[str, Row]] = {}
        for r in rows:
            by.setdefault((r.kernel, r.config), {})[r.target] = r
        head = ["kernel", "configuration", "warps", "stages"]
        for t in targets:
            head += [f"{t} result", f"{t} shared bytes / limit"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for (kernel, config), per in by.items():
            first = next(iter(per.values()))
            cells = [kernel, config, str(first.num_warps), str(first.num_stages)]
            for t in targets:
                r = per.get(t)
                cells += [r.status(), _shared(r)] if r else ["not offered (PyTorch)", "-"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    head = ["kernel", "configuration", "target", "result", "shared bytes / limit", "warps", "stages"]
    body = [[r.kernel, r.config, r.target, r.status(), _shared(r), str(r.num_warps), str(r.num_stages)] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def compiler_error(exc: BaseException) -> str:
    """``Type: message`` of a compile failure; inside a called ``@triton.jit`` helper Triton raises at the
    call site and keeps the real reason (e.g. "power of 2") on ``__cause__``: that message comes last."""
    parts = []
    while exc is not None and len(parts) < 4:
        parts.append(f"{type(exc).__name__}: {str(exc).strip() or type(exc).__name__}")
        exc = exc.__cause__
    return "\n".join(parts)


def summary(problem: str) -> str:
    """First and last line of a (multi-line) compiler error: where, and what."""
    lines = [ln for ln in problem.splitlines() if ln.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1].strip()}"


def parse_try(spec: str) -> tuple[C.Config, dict[str, Any]]:
    """``"KERNEL NAME=VALUE ..."`` -> (a candidate Config, pinned flags)."""
    words = spec.split()
    if not words or words[0] not in C.KERNELS:
        raise ValueError(f"--try {spec!r}: start with a kernel name, one of {sorted(C.KERNELS)}")
    k = C.KERNELS[words[0]]
    kv: dict[str, Any] = {}
    for w in words[1:]:
        name, sep, val = w.partition("=")
        if not sep:
            raise ValueError(f"--try: {w!r} is not NAME=VALUE")
        kv[name] = int(val) if val.lstrip("-").isdigit() else val
    flag_names = {n for f in k.flags for n, _ in f}
    allowed = set(k.shape_args) | flag_names | {k.block_arg, "num_warps", "num_stages"}
    bad = sorted(set(kv) - allowed)
    if bad:
        raise ValueError(f"--try: {bad[0]} is not a setting of {words[0]} (settings: {sorted(allowed)})")
    missing = [n for n in (*k.shape_args, k.block_arg) if n not in kv and n != "USE_DOT"]
    if missing:
        raise ValueError(f"--try: give {', '.join(missing)} for {words[0]}")
    shape = []
    for n in k.shape_args:
        if n == "USE_DOT" and n not in kv:
            kv[n] = kv["CAP"] >= 16
        shape.append((n, bool(kv[n]) if n == "USE_DOT" else kv[n]))
    cfg = C.Config(words[0], tuple(shape), kv[k.block_arg], kv.get("num_warps", 4), kv.get("num_stages", 3))
    return cfg, {n: bool(kv[n]) for n in flag_names if n in kv}


def _progress(done: int, total: int, rec: dict) -> None:
    cfg = C.Config(**{k: tuple(map(tuple, v)) if k == "shape" else v for k, v in rec["config"].items()})
    flags = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in rec["flags"].items())
    what = "ok" if rec["problem"] is None else "FAIL"
    print(f"[{done}/{total}] {rec['kernel']} {cfg.label()} {flags} {rec['target']}: {what}, shared {rec['shared']}, "
          f"{rec['seconds']:.1f} s", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kernels.aot", description=__doc__.split("\n")[0])
    p.add_argument("--arch", default=",".join(map(str, C.ARCHS)),
                   help=f"comma list of compute capabilities (default: all of {sorted(C.ARCHS)})")
    p.add_argument("--json", metavar="PATH", help="write every variant's result to PATH")
    p.add_argument("--jobs", type=int, default=0, help="compile processes (default: CPU count)")
    p.add_argument("--kernel", action="append", default=[], help="only this kernel (repeatable)")
    p.add_argument("--try", dest="try_", action="append", default=[], metavar="SPEC",
                   help='check a candidate instead of the list: "KERNEL NAME=VALUE ..."')
    p.add_argument("--representative", action="store_true",
                   help="only the largest configuration of each kernel per target (where shared memory binds), "
                        "in its heaviest flag variant: the CI subset, minutes on a cold cache instead of most of "
                        "an hour on 2 cores")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--quiet", action="store_true", help="no per-variant progress lines on stderr")
    return p


def _selection(a: argparse.Namespace, archs: list[int]) -> tuple[list, dict[str, Any], Any]:
    """(configurations to check, constexprs pinned by --try, keep(cfg, arch, flags) or None); ValueError on bad input."""
    pinned: dict[str, Any] = {}
    if a.try_:
        cfgs = []
        for spec in a.try_:
            cfg, pin = parse_try(spec)
            cfgs.append(cfg)
            pinned.update(pin)
    else:
        cfgs = list(C.CONFIGS)
    bad = [k for k in a.kernel if k not in C.KERNELS]
    if bad:
        raise ValueError(f"--kernel {bad[0]}: not one of {sorted(C.KERNELS)}")
    if a.kernel:
        cfgs = [c for c in cfgs if c.kernel in a.kernel]
    if not a.representative:
        return cfgs, pinned, None
    # the largest record offered on each target, in its heaviest flag variant
    chosen = {arch: largest_per_kernel(cfgs, arch) for arch in archs}

    def keep(cfg, arch, flags):
        return cfg in chosen[arch] and flags == heaviest_flags(cfg.kernel)

    return list(dict.fromkeys(c for cs in chosen.values() for c in cs)), pinned, keep


def _report(a: argparse.Namespace, rows: list, records: list, n_cfgs: int, archs: list[int], elapsed: float) -> int:
    """Print the table (and write --json); 1 when a configuration cannot run on its target."""
    from importlib.metadata import version

    tv = version("triton")
    print(format_table(rows, markdown=a.markdown))
    failed = [r for r in rows if not r.ok]
    n_var = sum(r.variants for r in rows)
    print(f"\n{n_var} variants of {n_cfgs} configurations x {len(archs)} targets checked with triton "
          f"{tv} in {elapsed:.0f} s (compile time summed over variants: "
          f"{sum(r.seconds for r in rows):.0f} s)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"triton": tv, "archs": {f"sm_{x}": C.ARCHS[x] for x in archs},
                       "elapsed_s": round(elapsed, 1), "rows": [asdict(r) | {"ok": r.ok} for r in rows],
                       "variants": records}, fh, indent=1)
    if failed:
        print(f"\nFAIL: {len(failed)} of {len(rows)} kernel configurations cannot run on their target:")
        for r in failed:
            for prob in r.problems:
                print(f"  {r.kernel} {r.config} num_warps={r.num_warps} num_stages={r.num_stages} on {r.target}: "
                      f"{summary(prob)}")
        return 1
    print("ALL OK: every launchable configuration compiles and fits its target")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        archs = [int(x) for x in a.arch.split(",") if x.strip()]
        cfgs, pinned, keep = _selection(a, archs)
        t0 = time.perf_counter()
        rows, records = run_check(cfgs, archs, a.jobs, pinned, progress=None if a.quiet else _progress, keep=keep)
    except ValueError as exc:
        print(f"kernels.aot: {exc}", file=sys.stderr)
        return 2
    return _report(a, rows, records, len(cfgs), archs, time.perf_counter() - t0)


if __name__ == "__main__":
    sys.exit(main())
