#!/usr/bin/env python
"""One prepared GPU check of the nfkd Triton kernels (run from the repo root, PYTHONPATH=.).

On a CUDA machine (torch + triton preinstalled, nothing to download):

1. device copy bandwidth (large device-to-device copy: the roofline for memory-bound kernels);
2. correctness: every kernel (tabular log p + Glow-1D / MAF sampling, fused Glow step forward +
   inverse, both layouts, both dot precisions) against the float64 folded reference, odd batch
   sizes, non-power-of-two widths;
3. speed: Triton vs eager PyTorch (original flow and folded) vs ``torch.compile`` (folded),
   with achieved GB/s (compulsory bytes / time) next to the copy bandwidth;
4. a small launch-config sweep (rows per program, warps, dot precision) to set the defaults
   (``kernels/configs.py``; a new default must also pass ``python -m kernels.aot``, which
   ``bench/gpu_check.sh`` runs first).

Everything is budgeted (``--budget-s``, default 240 s; sections that would not fit are skipped
and say so) so that ``bench/gpu_check.sh`` finishes in under 5 minutes.  Results go to stdout as
tables and, when ``$OUT`` (or ``--out``) is set, to ``$OUT/gpu_check.json`` (rewritten after
every section, so a timeout still leaves partial results).

``--dry-run`` runs tiny sizes on CPU through the PyTorch folded path (no GPU, no triton needed)
so that the script itself cannot rot; ``--dry-run --interpret`` additionally drives the real
kernels through the Triton interpreter (slow; tiny sizes only).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------ CPU-safe
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU through the PyTorch path")
    p.add_argument("--interpret", action="store_true", help="with --dry-run: run the kernels in the Triton interpreter")
    p.add_argument("--out", default=os.environ.get("OUT") or None, help="directory for gpu_check.json (default $OUT)")
    p.add_argument("--budget-s", type=float, default=240.0, help="wall-clock budget for the whole check")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile timings")
    p.add_argument("--no-sweep", action="store_true", help="skip the launch-config sweep")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in cuDNN/cuBLAS (default off: fp32 semantics)")
    p.add_argument("--only", default="", help="comma list of sections: copy,correct,speed,sweep")
    a = p.parse_args(argv)
    if a.interpret and not a.dry_run:
        p.error("--interpret needs --dry-run")
    return a


def fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int):
        return f"{v}{unit}"
    if v != v:  # NaN
        return "nan"
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.2e}{unit}"
    return f"{v:.3g}{unit}" if a < 100 else f"{v:.0f}{unit}"


def format_table(rows: list[dict], columns: list[str], title: str = "") -> str:
    """Plain-text table: one row per dict, missing cells as '-'."""
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = []
    if title:
        out.append(f"== {title}")
    out.append(line)
    out.append("  ".join("-" * w for w in widths))
    for row in cells:
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return "\n".join(out)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.t0, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


class Report:
    def __init__(self, out_dir: str | None) -> None:
        self.data: dict = {"sections": {}, "skipped": [], "failures": []}
        self.path = Path(out_dir) / "gpu_check.json" if out_dir else None

    def section(self, name: str, rows, columns=None, title: str = "") -> None:
        self.data["sections"][name] = rows
        if columns:
            print(format_table(rows, columns, title or name), flush=True)
            print(flush=True)
        self.flush()

    def skip(self, what: str) -> None:
        print(f"-- skipped: {what}", flush=True)
        self.data["skipped"].append(what)
        self.flush()

    def fail(self, what: str) -> None:
        print(f"!! FAIL: {what}", flush=True)
        self.data["failures"].append(what)
        self.flush()

    def flush(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1, default=str))


# ---------------------------------------------------------------------------------- the check
def _setup_env(args) -> None:
    if args.dry_run and args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton


def main(argv=None) -> int:
    args = parse_args(argv)
    _setup_env(args)
    import torch

    budget = Budget(args.budget_s)
    rep = Report(args.out)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run on CPU", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if dry else "cuda")
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.set_grad_enabled(False)
    only = set(filter(None, args.only.split(",")))

    use_kernels = not dry or args.interpret
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(dev),
            "dry_run": dry, "kernels": use_kernels, "tf32": args.tf32}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    if use_kernels:
        import triton

        import kernels.glow_step as G  # noqa: F401  (imports triton after the interpreter switch)
        import kernels.tabular as T  # noqa: F401

        info["triton"] = triton.__version__
    print("nfkd gpu_check:", json.dumps(info), flush=True)
    rep.data["info"] = info

    ctx = Ctx(args, dev, budget, rep, use_kernels)
    sections = [("copy", ctx.copy_bandwidth), ("correct", ctx.correctness), ("speed", ctx.speed),
                ("sweep", ctx.sweep)]
    for name, fn in sections:
        if only and name not in only:
            continue
        if name == "sweep" and (args.no_sweep or dry):
            rep.skip("sweep (dry run / --no-sweep)")
            continue
        try:
            fn()
        except Exception as exc:  # keep going: report what broke
            traceback.print_exc()
            rep.fail(f"section {name}: {type(exc).__name__}: {exc}")
    rep.data["elapsed_s"] = round(budget.elapsed(), 1)
    rep.flush()
    n_fail = len(rep.data["failures"])
    print(f"gpu_check done in {budget.elapsed():.0f}s: {'ALL OK' if n_fail == 0 else f'{n_fail} FAILURES'}"
          + (f"; results in {rep.path}" if rep.path else ""), flush=True)
    return 1 if n_fail else 0


class Ctx:
    """Holds the device, budget, report and the kernel/PyTorch implementations under test."""

    def __init__(self, args, dev, budget: Budget, rep: Report, use_kernels: bool) -> None:
        import torch

        self.torch = torch
        self.args, self.dev, self.budget, self.rep, self.k = args, dev, budget, rep, use_kernels
        self.dry = args.dry_run
        self.copy_gbs = None
        self._packs: dict[int, tuple] = {}

    # ---- timing
    def sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def bench(self, fn, min_time: float = 0.15, max_iters: int = 200) -> float:
        """Median milliseconds of fn() (after warm-up), CUDA events on GPU."""
        torch = self.torch
        if self.dry:  # the dry run checks the plumbing, not the numbers
            min_time, max_iters = 0.0, 3
        fn()
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        one = max(time.perf_counter() - t0, 1e-6)
        iters = int(max(3, min(max_iters, min_time / one)))
        times = []
        for _ in range(iters):
            if self.dev.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    # ---- implementations
    def packed(self, folded):
        """The kernels' packed form of a folded flow, packed once (as the triton Runner does at load)."""
        hit = self._packs.get(id(folded))
        if hit is None:
            if not folded.tabular:
                from kernels.glow_step import pack
            else:
                from kernels.tabular import pack
            hit = self._packs[id(folded)] = (folded, pack(folded))  # the folded module kept alive with its id
        return hit[1]

    def lp_kernel(self, folded, x, **kw):
        if not self.k:
            return folded.log_prob(x)
        if not folded.tabular:
            from kernels.glow_step import glow_log_prob_triton

            return glow_log_prob_triton(self.packed(folded), x, **kw)
        from kernels.tabular import tabular_log_prob

        return tabular_log_prob(self.packed(folded), x, **kw)

    def sample_kernel(self, folded, noise, t, **kw):
        if not self.k:
            return folded.sample(noise[0].shape[0], temperature=t, noise=list(noise))
        if not folded.tabular:
            from kernels.glow_step import glow_sample_triton

            return glow_sample_triton(self.packed(folded), noise, t, **kw)
        from kernels.tabular import tabular_sample

        return tabular_sample(self.packed(folded), noise[0], t, **kw)

    # ---- models
    def tabular_cases(self):
        if self.dry:
            return [("glow1d", 6, dict(steps=2, hidden=8)), ("maf", 6, dict(blocks=2, hidden=8)),
                    ("maf", 5, dict(blocks=1, hidden=8, batch_norm=True, activation="tanh", permutation="random"))]
        return [
            ("glow1d", 6, dict(steps=5, hidden=32)),
            ("glow1d", 43, dict(steps=5, hidden=128)),
            ("glow1d", 63, dict(steps=5, hidden=128)),
            ("glow1d", 63, dict(steps=5, hidden=128, additive=True)),
            ("maf", 6, dict(blocks=5, hidden=32)),
            ("maf", 43, dict(blocks=5, hidden=128, batch_norm=True, activation="tanh", permutation="random")),
            ("maf", 63, dict(blocks=5, hidden=128)),
        ]

    def glow_cases(self):
        if self.dry:
            return [("glow", dict(in_shape=(3, 8, 8), levels=2, steps=1, hidden=8))]
        return [("glow", dict(in_shape=(3, 32, 32), levels=3, steps=8, hidden=128)),
                ("glow_additive", dict(in_shape=(3, 32, 32), levels=3, steps=4, hidden=64, additive=True))]

    def build(self, kind, spec):
        from nfkd.fold import fold
        from tests.kernel_helpers import glow_flow, tabular_flow

        if kind != "tab":
            flow = glow_flow(**spec[1], seed=1)
        else:
            arch, dim, opts = spec
            flow = tabular_flow(arch, dim, seed=dim, **dict(opts))
        flow = flow.to(self.dev)
        return flow, fold(flow, self.torch.float64), fold(flow, self.torch.float32)

    def affordable(self, section: str, kind: str, cases, seconds: float):
        """The cases while at least ``seconds`` of the budget are left; each later one is reported skipped."""
        for spec in cases:
            if self.budget.left() < seconds:
                self.rep.skip(f"{section} {self.name(kind, spec)} (budget)")
                continue
            yield spec

    @staticmethod
    def name(kind, spec) -> str:
        if kind != "tab":
            return spec[0] + "-" + "x".join(map(str, spec[1]["in_shape"]))
        arch, dim, opts = spec
        return f"{arch}-D{dim}-H{opts.get('hidden')}" + ("-add" if opts.get("additive") else "") + (
            "-bn-tanh" if opts.get("batch_norm") else "")

    # ---- sections
    def copy_bandwidth(self) -> None:
        torch = self.torch
        nbytes = (8 << 20) if self.dry else (1 << 30)
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=self.dev).uniform_()
        dst = torch.empty_like(src)
        ms = self.bench(lambda: dst.copy_(src), min_time=0.3, max_iters=50)
        self.copy_gbs = 2 * nbytes / (ms * 1e-3) / 1e9
        self.rep.section("copy", [{"bytes": nbytes, "ms": ms, "GB/s": self.copy_gbs}], ["bytes", "ms", "GB/s"],
                         "device-to-device copy (read + write)")

    def correctness(self) -> None:
        from tests.kernel_helpers import max_rel_err, max_scaled_err

        torch = self.torch
        rows = []
        precs = ["ieee", "tf32x3"] if self.k and not self.dry else [None]
        batches = [1, 3] if self.dry else [1, 1027]
        for spec in self.affordable("correctness", "tab", self.tabular_cases(), 60):
            flow, f64, f32 = self.build("tab", spec)
            D = spec[1]
            for B in batches:
                g = torch.Generator(device="cpu").manual_seed(B)
                x = (flow.normalize.loc.cpu() + flow.normalize.scale.cpu()
                     * torch.randn(B, D, generator=g, dtype=torch.float64)).to(self.dev)
                z = torch.randn(B, D, generator=g, dtype=torch.float64).to(self.dev)
                ref_lp = f64.log_prob(x)
                ref_s = f64.sample(len(z), temperature=0.8, noise=[z])
                for prec in precs:
                    kw = {"precision": prec} if prec else {}
                    lp = self.lp_kernel(f32, x.float(), **kw)
                    s = self.sample_kernel(f32, [z.float()], 0.8, **kw)
                    e_lp, e_s = max_rel_err(lp, ref_lp), max_scaled_err(s, ref_s)
                    ok = e_lp < 1e-4 and e_s < 1e-4 and bool(torch.isfinite(lp).all() and torch.isfinite(s).all())
                    label = prec or ("default" if self.k else "torch")
                    rows.append({"model": self.name("tab", spec), "B": B, "prec": label,
                                 "lp_rel_err": e_lp, "sample_err": e_s, "ok": ok})
                    if not ok and prec in (None, "ieee"):
                        self.rep.fail(f"correctness {rows[-1]}")
        layouts = ["nhwc", "nchw"] if self.k else [None]
        gb = [1, 2] if self.dry else [1, 5]
        for spec in self.affordable("correctness", "glow", self.glow_cases(), 60):
            flow, f64, f32 = self.build("glow", spec)
            for B in gb:
                g = torch.Generator(device="cpu").manual_seed(B)
                x = (torch.rand(B, *flow.event_shape, generator=g, dtype=torch.float64) - 0.5).to(self.dev)
                noise = [torch.randn(s, generator=g, dtype=torch.float64).to(self.dev) for s in flow.noise_shapes(B)]
                ref_lp, ref_s = f64.log_prob(x), f64.sample(B, temperature=0.7, noise=noise)
                for lay in layouts:
                    kw = {"layout": lay} if lay else {}
                    if self.dry and self.k:
                        kw["block_p"] = 16
                    lp = self.lp_kernel(f32, x.float(), **kw)
                    s = self.sample_kernel(f32, [n.float() for n in noise], 0.7, **kw)
                    e_lp, e_s = max_rel_err(lp, ref_lp), max_scaled_err(s, ref_s)
                    ok = e_lp < 1e-4 and e_s < 1e-4 and bool(torch.isfinite(lp).all() and torch.isfinite(s).all())
                    rows.append({"model": self.name("glow", spec), "B": B, "prec": lay or "torch",
                                 "lp_rel_err": e_lp, "sample_err": e_s, "ok": ok})
                    if not ok:
                        self.rep.fail(f"correctness {rows[-1]}")
        self.rep.section("correctness", rows, ["model", "B", "prec", "lp_rel_err", "sample_err", "ok"],
                         "kernels vs float64 folded reference (tol 1e-4; prec column = dot precision or layout)")

    # torch.compile costs tens of seconds per graph: only these models get a compiled baseline
    COMPILE_FOR = ("glow1d-D63-H128", "maf-D63-H128", "glow-3x32x32")

    def _compiled(self, fn, model: str = ""):
        if self.args.no_compile or self.dry or model not in self.COMPILE_FOR:
            return None
        if self.budget.left() < 100:
            self.rep.skip(f"torch.compile for {model} (budget)")
            return None
        try:
            return self.torch.compile(fn, dynamic=False)
        except Exception as exc:  # pragma: no cover
            self.rep.skip(f"torch.compile unavailable: {exc}")
            return None

    def _timed_compile(self, cf, *a):
        """First call compiles (counted separately); None when compile fails or the budget is short."""
        if cf is None:
            return None, None
        t0 = time.perf_counter()
        try:
            cf(*a)
            self.sync()
        except Exception as exc:
            self.rep.skip(f"torch.compile failed: {type(exc).__name__}: {exc}"[:300])
            return None, None
        ctime = time.perf_counter() - t0
        return self.bench(lambda: cf(*a)), ctime

    SPEED_COLUMNS = ["model", "op", "B", "flow_ms", "folded_ms", "compile_ms", "compile_s", "triton_ms",
                     "triton_nhwc_ms", "triton_nchw_ms", "triton_GB/s", "copy_GB/s"]

    def speed(self) -> None:
        rows: list[dict] = []
        for kind, cases, measure in (("tab", self.tabular_cases(), self._speed_tabular),
                                     ("glow", self.glow_cases(), self._speed_glow)):
            for spec in self.affordable("speed", kind, cases, 45):
                rows.extend(measure(spec))
                self.rep.section("speed_partial", rows)
        self.rep.data["sections"].pop("speed_partial", None)
        self.rep.section("speed", rows, self.SPEED_COLUMNS, "median ms (flow = unfolded eager, folded = fold() eager, "
                         "compile = torch.compile(folded)); GB/s = compulsory bytes / time")

    def _speed_tabular(self, spec) -> list[dict]:
        """log p and sampling of one Glow-1D / MAF: eager, folded, torch.compile, the kernel (+ its GB/s)."""
        torch = self.torch
        flow, _, f32 = self.build("tab", spec)
        flow32 = flow.float()
        D = spec[1]
        B = 64 if self.dry else 65536
        x = torch.randn(B, D, device=self.dev)
        wbytes = self.packed(f32).buf.numel() * 4 if self.k else 0
        io = B * D * 4 + B * 4 + wbytes
        lp = {"model": self.name("tab", spec), "op": "log_prob", "B": B}
        lp["flow_ms"] = self.bench(lambda: flow32.log_prob_unchecked(x))
        lp["folded_ms"] = self.bench(lambda: f32.log_prob(x))
        lp["compile_ms"], lp["compile_s"] = self._timed_compile(self._compiled(f32.log_prob, lp["model"]), x)
        lp["triton_ms"] = self.bench(lambda: self.lp_kernel(f32, x))
        lp["triton_GB/s"] = io / (lp["triton_ms"] * 1e-3) / 1e9
        lp["copy_GB/s"] = self.copy_gbs
        # sampling (MAF: D sequential passes per block: compute bound, smaller batch)
        Bs = 32 if self.dry else (65536 if f32.one_pass_sampling else 8192)
        z = torch.randn(Bs, D, device=self.dev)
        sa = {"model": self.name("tab", spec), "op": "sample", "B": Bs}
        sa["flow_ms"] = self.bench(lambda: flow32.inverse([z]).x, max_iters=20)
        sa["folded_ms"] = self.bench(lambda: f32.sample(len(z), temperature=1.0, noise=[z]), max_iters=20)
        if f32.one_pass_sampling:  # compiling D x blocks unrolled MADE passes takes minutes
            decode = lambda noise, t: f32.sample(len(noise[0]), temperature=t, noise=noise)  # noqa: E731
            sa["compile_ms"], sa["compile_s"] = self._timed_compile(self._compiled(decode, sa["model"]), [z], 1.0)
        sa["triton_ms"] = self.bench(lambda: self.sample_kernel(f32, [z], 1.0), max_iters=50)
        sa["triton_GB/s"] = (2 * Bs * D * 4 + wbytes) / (sa["triton_ms"] * 1e-3) / 1e9
        sa["copy_GB/s"] = self.copy_gbs
        return [lp, sa]

    def _speed_glow(self, spec) -> list[dict]:
        """log p and sampling of one image Glow: eager, folded, torch.compile, the kernels in both layouts."""
        torch = self.torch
        flow, _, f32 = self.build("glow", spec)
        flow32 = flow.float()
        B = 2 if self.dry else 64
        x = torch.rand(B, *flow.event_shape, device=self.dev) - 0.5
        noise = [torch.randn(s, device=self.dev) for s in flow.noise_shapes(B)]
        kw = {"block_p": 16} if (self.dry and self.k) else {}
        layouts = ["nhwc", "nchw"] if self.k else ["torch"]
        calls = {  # op: (eager flow, folded module's call, the kernel's call, their inputs)
            "log_prob": (lambda: flow32.log_prob_unchecked(x), f32.log_prob, self.lp_kernel, (x,)),
            "sample": (lambda: flow32.inverse(noise).x, lambda *a: f32.sample(B, temperature=a[1], noise=a[0]),
                       self.sample_kernel, (noise, 1.0)),
        }
        rows = []
        for op, (eager, folded, kernel, inp) in calls.items():
            row = {"model": self.name("glow", spec), "op": op, "B": B}
            row["flow_ms"] = self.bench(eager, max_iters=50)
            row["folded_ms"] = self.bench(lambda: folded(*inp), max_iters=50)
            row["compile_ms"], row["compile_s"] = self._timed_compile(self._compiled(folded, row["model"]), *inp)
            for lay in layouts:
                k2 = dict(kw, layout=lay) if self.k else {}
                key = f"triton_{lay}_ms" if self.k else "triton_ms"
                row[key] = self.bench(lambda: kernel(f32, *inp, **k2), max_iters=50)
            row["copy_GB/s"] = self.copy_gbs
            rows.append(row)
        if self.k:
            rows.extend(self._glow_step_micro(f32, spec))
        return rows

    def _glow_step_micro(self, f32, spec) -> list[dict]:
        """One fused step kernel alone (forward: epilogue + next affine; inverse) at each level."""
        from kernels import glow_step as G

        torch = self.torch
        rows = []
        B = 2 if self.dry else 256
        pk = self.packed(f32)  # the step matrices as the triton Runner packs them
        for lvl, (steps, lv) in enumerate(zip(f32.levels, pk.levels)):
            c, ca, h, w = lv["C"], lv["CA"], lv["H"], lv["W"]
            cb = c - ca
            k = min(1, len(steps) - 1)
            st = steps[k]
            nh = cb * (1 if st.coupling.additive else 2)
            for lay in ("nhwc", "nchw"):
                mf = G.LAYOUTS[lay]
                xa = torch.randn(B, ca, h, w, device=self.dev).contiguous(memory_format=mf)
                xb = torch.randn(B, cb, h, w, device=self.dev).contiguous(memory_format=mf)
                hn = torch.randn(B, nh, h, w, device=self.dev).contiguous(memory_format=mf)
                oa, ob = torch.empty_like(xa), torch.empty_like(xb)
                wp = lv["packs"][k][0]
                ld = torch.zeros(B, 64, device=self.dev)
                geo = dict(C=c, CA=ca, Hq=h, Wq=w)
                kw = {"block_p": 16} if self.dry else {}
                fwd = lambda: G._launch_fwd(xa, xb, hn, oa, ob, wp, ld, squeeze_in=False, has_coupling=True,  # noqa: E731
                                            additive=st.coupling.additive, has_affine=True, use_dot=None,
                                            precision=None, block_p=kw.get("block_p"), **geo)
                inv = lambda: G._launch_inv(xa, xb, hn, oa, ob, wp, additive=st.coupling.additive,  # noqa: E731
                                            unsqueeze_out=False, use_dot=None, precision=None,
                                            block_p=kw.get("block_p"), **geo)
                nbytes = 4 * B * h * w * (2 * c + nh)  # read xa, xb, hn; write oa, ob
                for op, fn in (("step_fwd", fwd), ("step_inv", inv)):
                    ms = self.bench(fn, max_iters=100)
                    rows.append({"model": f"{self.name('glow', spec)}-L{lvl}-C{c}-{lay}", "op": op, "B": B,
                                 "triton_ms": ms, "triton_GB/s": nbytes / (ms * 1e-3) / 1e9, "copy_GB/s": self.copy_gbs})
        return rows

    def sweep(self) -> None:
        from kernels import tabular as T

        torch = self.torch
        rows = []
        cases = [("glow1d", 63, dict(steps=5, hidden=128)), ("maf", 63, dict(blocks=5, hidden=128)),
                 ("maf", 6, dict(blocks=5, hidden=32))]
        for spec in cases:
            flow, _, f32 = self.build("tab", spec)
            D = spec[1]
            x = torch.randn(65536, D, device=self.dev)
            z = torch.randn(8192, D, device=self.dev)
            for op in ("log_prob", "sample"):
                for bb in (16, 32, 64, 128):
                    for nw in (4, 8):
                        for prec in ("ieee", "tf32x3"):
                            if self.budget.left() < 15:
                                self.rep.skip("rest of sweep (budget)")
                                self.rep.section("sweep", rows, ["model", "op", "block_b", "warps", "prec", "ms"])
                                return
                            if prec == "tf32x3" and (nw, bb) != (8, 32):
                                continue
                            if op == "sample" and (f32.one_pass_sampling or bb == 128):
                                continue
                            try:
                                if op == "log_prob":
                                    ms = self.bench(lambda: T.tabular_log_prob(f32, x, block_b=bb, num_warps=nw,
                                                                               precision=prec), max_iters=50)
                                else:
                                    ms = self.bench(lambda: T.maf_sample(f32, z, 1.0, block_b=bb, num_warps=nw,
                                                                         precision=prec), max_iters=10)
                            except Exception as exc:  # e.g. out of shared memory for a big tile
                                ms = f"error: {type(exc).__name__}"
                            rows.append({"model": self.name("tab", spec), "op": op, "block_b": bb, "warps": nw,
                                         "prec": prec, "ms": ms})
        self.rep.section("sweep", rows, ["model", "op", "block_b", "warps", "prec", "ms"],
                         "tabular launch configs (the dispatcher's defaults: kernels/configs.py, checked by "
                         "python -m kernels.aot; ieee)")


if __name__ == "__main__":
    sys.exit(main())
