"""A fused batch-norm + ReLU training kernel for the CPU (a script, not a test): does fusing them
raise the training MFU (issue 14's 75 % goal)?

The profile (bench/profile_train.py) puts batch-norm forward and backward, ReLU's backward and the
clamp of ReLU's forward at about a fifth of a bf16 training step on AVX-512 CPUs, all memory-bound.
torch runs them as separate passes over the activations: statistics, normalise, ReLU in place
(forward), ReLU's mask, the two gradient sums, the input gradient (backward): 13 reads or writes
of the activation's size. The C kernel below does the same in 8: statistics, normalise + ReLU
(forward); both sums with the ReLU mask recomputed from x, the input gradient (backward), in fp32
or bf16 over channels-last tensors whose channels are a multiple of 16 (GCC vector extensions,
compiled here with the system's C compiler: `cc -O3 -march=native -fopenmp`). `--pool omp` (the
default) runs it on OpenMP threads: the kernel's libgomp is the one torch loaded (the same soname),
so it works in torch's own thread pool, whose workers are already awake; `--pool pthreads` starts
`--threads` threads of its own per call, which then compete with torch's spinning workers.

It prints, for the bench model (UNet w16 d4, batch 16, 256 px, channels_last):
  - the kernel's largest error against a float64 reference of torch's own ops, and torch's;
  - each layer shape's batch-norm + ReLU forward + backward, torch against the fused kernel;
  - training images/s of whole steps, torch's and with the kernel patched into the model's
    Blocks, alternating in one process (median [min-max] over --repeats rounds).

    python bench/fused_bnrelu.py [--precision bf16|fp32] [--pool omp|pthreads] [--threads N]
                                 [--steps 8] [--repeats 3]
                                 [--width 16] [--depth 4] [--batch 16] [--size 256]
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.profile_train import best_seconds  # noqa: E402
from forestseg.config import ModelConfig  # noqa: E402
from forestseg.device import keep_freed_memory  # noqa: E402
from forestseg.model import Block, build_model  # noqa: E402

C_SOURCE = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float vf __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
#define W 16
#define BLOCK 64
#define MAXT 64
static int use_omp = 1;
void fs_set_pool(int omp) { use_omp = omp; }

static inline vf ld(const void *p, int bf16) {
    if (bf16) { vh h; memcpy(&h, p, sizeof h); vu u = __builtin_convertvector(h, vu) << 16; vf f; memcpy(&f, &u, sizeof f); return f; }
    vf f; memcpy(&f, p, sizeof f); return f;
}
static inline void st(void *p, vf f, int bf16) {
    if (bf16) {
        vu u; memcpy(&u, &f, sizeof u);
        u = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  /* round to nearest even */
        vh h = __builtin_convertvector(u, vh); memcpy(p, &h, sizeof h);
    } else memcpy(p, &f, sizeof f);
}
static inline vf relu(vf f) { vf z = {0}; return (vf)((vi)(f > z) & (vi)f); }  /* NaN -> 0, unlike torch */

typedef struct {
    int kind, bf16;
    const char *x, *dy; char *out;
    const float *a, *b, *m, *k;
    int64_t p0, p1, C;
    double *s1, *s2;
} job_t;

static void reduce(job_t *j) {  /* kind 0: sum x, x^2; kind 2: sum g, g (x - m), g = dy where x a + b > 0 */
    const int64_t C = j->C, K = C / W, es = j->bf16 ? 2 : 4;
    for (int64_t c = 0; c < C; c++) j->s1[c] = j->s2[c] = 0;
    for (int64_t p = j->p0; p < j->p1; p += BLOCK) {
        int64_t e = p + BLOCK < j->p1 ? p + BLOCK : j->p1;
        for (int64_t k = 0; k < K; k++) {
            vf s0 = {0}, q0 = {0}, s1 = {0}, q1 = {0}, a = {0}, b = {0}, m = {0};
            if (j->kind == 2) { memcpy(&a, j->a + k * W, 64); memcpy(&b, j->b + k * W, 64); memcpy(&m, j->m + k * W, 64); }
            int64_t i = p;
            for (; i + 1 < e; i += 2) {
                vf x0 = ld(j->x + (i * C + k * W) * es, j->bf16), x1 = ld(j->x + ((i + 1) * C + k * W) * es, j->bf16);
                if (j->kind == 0) { s0 += x0; q0 += x0 * x0; s1 += x1; q1 += x1 * x1; }
                else {
                    vf z = {0};
                    vf g0 = (vf)((vi)(x0 * a + b > z) & (vi)ld(j->dy + (i * C + k * W) * es, j->bf16));
                    vf g1 = (vf)((vi)(x1 * a + b > z) & (vi)ld(j->dy + ((i + 1) * C + k * W) * es, j->bf16));
                    s0 += g0; q0 += g0 * (x0 - m); s1 += g1; q1 += g1 * (x1 - m);
                }
            }
            for (; i < e; i++) {
                vf x0 = ld(j->x + (i * C + k * W) * es, j->bf16);
                if (j->kind == 0) { s0 += x0; q0 += x0 * x0; }
                else {
                    vf z = {0};
                    vf g0 = (vf)((vi)(x0 * a + b > z) & (vi)ld(j->dy + (i * C + k * W) * es, j->bf16));
                    s0 += g0; q0 += g0 * (x0 - m);
                }
            }
            s0 += s1; q0 += q1;
            for (int c = 0; c < W; c++) { j->s1[k * W + c] += s0[c]; j->s2[k * W + c] += q0[c]; }
        }
    }
}

static void apply(job_t *j) {  /* kind 1: y = relu(x a + b); kind 3: dx = k0 g - k1 - (x - m) k2 */
    const int64_t C = j->C, K = C / W, es = j->bf16 ? 2 : 4;
    for (int64_t i = j->p0; i < j->p1; i++)
        for (int64_t k = 0; k < K; k++) {
            vf a, b; memcpy(&a, j->a + k * W, 64); memcpy(&b, j->b + k * W, 64);
            int64_t o = (i * C + k * W) * es;
            vf x = ld(j->x + o, j->bf16), f = x * a + b;
            if (j->kind == 1) { st(j->out + o, relu(f), j->bf16); continue; }
            vf m, k0, k1, k2, z = {0};
            memcpy(&m, j->m + k * W, 64); memcpy(&k0, j->k + k * W, 64); memcpy(&k1, j->k + C + k * W, 64); memcpy(&k2, j->k + 2 * C + k * W, 64);
            vf g = (vf)((vi)(f > z) & (vi)ld(j->dy + o, j->bf16));
            st(j->out + o, k0 * g - k1 - (x - m) * k2, j->bf16);
        }
}

static void *work(void *arg) {
    job_t *j = arg;
    if (j->kind == 0 || j->kind == 2) reduce(j); else apply(j);
    return NULL;
}

static void run(int kind, int bf16, const void *x, const void *dy, void *out, const float *a, const float *b,
                const float *m, const float *k, int64_t P, int64_t C, int nt, double *s1, double *s2) {
    if (nt < 1) nt = 1;
    if (nt > MAXT) nt = MAXT;
    if (P * C < (int64_t)65536 * nt) nt = 1;
    job_t jobs[MAXT]; pthread_t th[MAXT];
    double *acc = (kind == 0 || kind == 2) ? malloc(sizeof(double) * 2 * C * nt) : NULL;
    for (int t = 0; t < nt; t++) {
        job_t *j = &jobs[t];
        *j = (job_t){kind, bf16, x, dy, out, a, b, m, k, P * t / nt, P * (t + 1) / nt, C, acc ? acc + 2 * C * t : NULL, acc ? acc + 2 * C * t + C : NULL};
    }
    if (use_omp) {
        #pragma omp parallel for num_threads(nt) schedule(static, 1)
        for (int t = 0; t < nt; t++) work(&jobs[t]);
    } else {
        int started = 1;
        for (; started < nt; started++) if (pthread_create(&th[started], NULL, work, &jobs[started])) break;
        for (int t = started; t < nt; t++) work(&jobs[t]);  /* no thread: run its part here */
        work(&jobs[0]);
        for (int t = 1; t < started; t++) pthread_join(th[t], NULL);
    }
    if (acc) {
        for (int64_t c = 0; c < C; c++) s1[c] = s2[c] = 0;
        for (int t = 0; t < nt; t++)
            for (int64_t c = 0; c < C; c++) { s1[c] += jobs[t].s1[c]; s2[c] += jobs[t].s2[c]; }
        free(acc);
    }
}

void fs_stats(int bf16, const void *x, int64_t P, int64_t C, int nt, double *sum, double *sumsq) {
    run(0, bf16, x, NULL, NULL, NULL, NULL, NULL, NULL, P, C, nt, sum, sumsq);
}
void fs_fwd(int bf16, const void *x, void *y, const float *a, const float *b, int64_t P, int64_t C, int nt) {
    run(1, bf16, x, NULL, y, a, b, NULL, NULL, P, C, nt, NULL, NULL);
}
void fs_bwd_sums(int bf16, const void *x, const void *dy, const float *a, const float *b, const float *m,
                 int64_t P, int64_t C, int nt, double *sg, double *sgx) {
    run(2, bf16, x, dy, NULL, a, b, m, NULL, P, C, nt, sg, sgx);
}
void fs_bwd(int bf16, const void *x, const void *dy, void *dx, const float *a, const float *b, const float *m,
            const float *k, int64_t P, int64_t C, int nt) {
    run(3, bf16, x, dy, dx, a, b, m, k, P, C, nt, NULL, NULL);
}
"""


def compile_kernel(tmp: Path) -> ctypes.CDLL:
    """Build the kernel with the system's C compiler; exits with one line where there is none."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("fused_bnrelu: no C compiler (cc or gcc) on PATH: install one (apt-get install gcc)")
    (tmp / "bnrelu.c").write_text(C_SOURCE, encoding="utf-8")
    subprocess.run(
        [
            cc,
            "-O3",
            "-march=native",
            "-fopenmp",
            "-shared",
            "-fPIC",
            "-o",
            str(tmp / "bnrelu.so"),
            str(tmp / "bnrelu.c"),
            "-lpthread",
        ],
        check=True,
    )
    lib = ctypes.CDLL(str(tmp / "bnrelu.so"))
    p, i64, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.fs_stats.argtypes = [i, p, i64, i64, i, p, p]
    lib.fs_fwd.argtypes = [i, p, p, p, p, i64, i64, i]
    lib.fs_bwd_sums.argtypes = [i, p, p, p, p, p, i64, i64, i, p, p]
    lib.fs_bwd.argtypes = [i, p, p, p, p, p, p, p, i64, i64, i]
    lib.fs_set_pool.argtypes = [i]
    return lib


def openmp_runtimes() -> list[str]:
    """The OpenMP runtime files mapped into this process (one: the kernel shares torch's pool)."""
    maps = Path("/proc/self/maps")
    return (
        sorted({line.split()[-1] for line in maps.read_text().splitlines() if "libgomp" in line})
        if maps.exists()
        else []
    )


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


class FusedBNReLU(torch.autograd.Function):
    """relu(batch_norm(x, training=True)) in two passes forward and two backward; the batch
    statistics go back as outputs so the caller updates running_mean/var as nn.BatchNorm2d does."""

    lib: ctypes.CDLL
    threads = 1

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # noqa: ANN001, ANN205
        n, c, h, w = x.shape
        pixels, bf16 = n * h * w, int(x.dtype == torch.bfloat16)
        s, q = torch.empty(c, dtype=torch.float64), torch.empty(c, dtype=torch.float64)
        FusedBNReLU.lib.fs_stats(bf16, _ptr(x), pixels, c, FusedBNReLU.threads, _ptr(s), _ptr(q))
        mean = s / pixels
        var = (q / pixels - mean * mean).clamp_min(0)
        invstd = (var + eps).rsqrt()
        scale = (weight.double() * invstd).float()
        shift = (bias.double() - mean * weight.double() * invstd).float()
        y = torch.empty_like(x, memory_format=torch.channels_last)
        FusedBNReLU.lib.fs_fwd(bf16, _ptr(x), _ptr(y), _ptr(scale), _ptr(shift), pixels, c, FusedBNReLU.threads)
        ctx.save_for_backward(x, weight, scale, shift, mean.float(), invstd)
        return y, mean.float(), var.float()

    @staticmethod
    def backward(ctx, dy, _mean, _var):  # noqa: ANN001, ANN205
        x, weight, scale, shift, mean, invstd = ctx.saved_tensors
        dy = dy.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        pixels, bf16 = n * h * w, int(x.dtype == torch.bfloat16)
        sg, sgx = torch.empty(c, dtype=torch.float64), torch.empty(c, dtype=torch.float64)
        FusedBNReLU.lib.fs_bwd_sums(
            bf16,
            _ptr(x),
            _ptr(dy),
            _ptr(scale),
            _ptr(shift),
            _ptr(mean),
            pixels,
            c,
            FusedBNReLU.threads,
            _ptr(sg),
            _ptr(sgx),
        )
        k = weight.double() * invstd
        coef = torch.cat([k, k * sg / pixels, k * invstd * invstd * sgx / pixels]).float()
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        FusedBNReLU.lib.fs_bwd(
            bf16,
            _ptr(x),
            _ptr(dy),
            _ptr(dx),
            _ptr(scale),
            _ptr(shift),
            _ptr(mean),
            _ptr(coef),
            pixels,
            c,
            FusedBNReLU.threads,
        )
        return dx, (sgx * invstd).to(weight.dtype), sg.to(weight.dtype), None


def fused_bn_relu(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """nn.BatchNorm2d (training) then ReLU, running statistics updated as torch updates them."""
    y, mean, var = FusedBNReLU.apply(x, bn.weight, bn.bias, bn.eps)
    with torch.no_grad():
        pixels = x.numel() // x.shape[1]
        bn.running_mean.lerp_(mean, bn.momentum)
        bn.running_var.lerp_(var * pixels / (pixels - 1), bn.momentum)
        bn.num_batches_tracked += 1
    return y


def fusable(layers: list[nn.Module], i: int, x: torch.Tensor) -> bool:
    return (
        isinstance(layers[i], nn.BatchNorm2d)
        and layers[i].training
        and i + 1 < len(layers)
        and isinstance(layers[i + 1], nn.ReLU)
        and x.shape[1] % 16 == 0
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def fused_block_forward(self: Block, x: torch.Tensor) -> torch.Tensor:
    layers, i = list(self), 0
    while i < len(layers):
        if fusable(layers, i, x):
            x, i = fused_bn_relu(x, layers[i]), i + 2
        else:
            x, i = layers[i](x), i + 1
    return x


def max_errors(x0: torch.Tensor, fn, weight: torch.Tensor, bias: torch.Tensor) -> float:  # noqa: ANN001
    """Largest error of fn's output and input gradient against float64, relative to their largest value,
    at pixels away from ReLU's kink (where float rounding may flip the mask in any implementation)."""
    g = (
        torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        .to(x0.dtype)
        .contiguous(memory_format=torch.channels_last)
    )
    x = x0.double().detach().requires_grad_(True)
    pre = F.batch_norm(x, None, None, weight.double(), bias.double(), training=True)
    ref = F.relu(pre)
    ref.backward(g.double())
    x1 = x0.detach().requires_grad_(True)
    out = fn(x1)
    out.backward(g)
    away = pre.detach().abs() > 1e-2
    errs = [
        (out.double() - ref).abs()[away].max() / ref.abs().max(),
        (x1.grad.double() - x.grad).abs()[away].max() / x.grad.abs().max(),
    ]
    return max(e.item() for e in errs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--pool", choices=["omp", "pthreads"], default="omp", help="the kernel's threads (module doc)")
    ap.add_argument("--threads", type=int, default=0, help="the kernel's threads (0: torch's, torch.get_num_threads())")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    keep_freed_memory()  # as the train stage does
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        FusedBNReLU.lib = compile_kernel(Path(tmp))
    FusedBNReLU.lib.fs_set_pool(int(args.pool == "omp"))
    FusedBNReLU.threads = args.threads or torch.get_num_threads()
    print(
        f"{args.precision}, UNet w{args.width} d{args.depth}, batch {args.batch}, {args.size} px, channels_last; "
        f"torch threads {torch.get_num_threads()}, kernel threads {FusedBNReLU.threads} ({args.pool})"
    )
    if args.pool == "omp":
        print("OpenMP runtimes in this process:", ", ".join(openmp_runtimes()) or "none")

    print("layer (channels x px): error vs float64 torch / fused; forward + backward ms torch / fused")
    for level in range(args.depth + 1):
        c, side = args.width * 2**level, args.size // 2**level
        x0 = (torch.randn(args.batch, c, side, side) * 2 + 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
        bn = nn.BatchNorm2d(c)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.normal_(bn.bias)
        ref = lambda x: F.relu(F.batch_norm(x, None, None, bn.weight, bn.bias, training=True))  # noqa: E731
        fused = lambda x: FusedBNReLU.apply(x, bn.weight, bn.bias, bn.eps)[0]  # noqa: E731
        errs = [max_errors(x0, f, bn.weight, bn.bias) for f in (ref, fused)]
        g = torch.ones_like(x0)

        def step(f):  # noqa: ANN001, ANN202
            return lambda: f(x0.detach().requires_grad_(True)).backward(g)

        ms = [1e3 * best_seconds(step(f), repeats=7) for f in (ref, fused)]
        print(f"  {c:4d} x {side:3d}: {errs[0]:.1e} / {errs[1]:.1e}; {ms[0]:6.2f} / {ms[1]:6.2f} ms")
        if errs[1] > max(2 * errs[0], 1e-5):
            sys.exit(f"fused_bnrelu: the kernel is wrong at {c} channels x {side} px: error {errs[1]:.1e}")

    cfg = ModelConfig(arch="unet", width=args.width, depth=args.depth)
    model = build_model(cfg).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(args.batch, args.size, args.size) > 0.5).float()

    def steps() -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return args.batch * args.steps / (time.perf_counter() - t0)

    plain = Block.forward
    rates: dict[str, list[float]] = {"torch": [], "fused": []}
    for _ in range(args.repeats):  # alternate, so drift of the machine hits both alike
        for name in rates:
            Block.forward = plain if name == "torch" else fused_block_forward
            steps() if not rates[name] else None  # warm-up once per variant
            rates[name].append(steps())
    Block.forward = plain
    for name, r in rates.items():
        print(f"training {name}: {median(r):.1f} [{min(r):.1f}-{max(r):.1f}] img/s")
    print(f"fused / torch: {median(rates['fused']) / median(rates['torch']):.3f}")


if __name__ == "__main__":
    main()
