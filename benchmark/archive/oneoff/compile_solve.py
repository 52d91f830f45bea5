"""Does torch.compile pay on a CPU? BLPO's default solve, CG with k = 5 closed-form Hessian-vector products on a
64-state minibatch of a Hopper-sized critic, eager against compiled, in alternating blocks in one process.

    OMP_NUM_THREADS=1 python benchmark/archive/oneoff/compile_solve.py

A one-off measurement for #21, not a tool: the scripts do not compile. The compiled function is `cg_ihvp` with its
data-dependent branches as tensor operations (the curvature check as a mask; no early stop, which the default's
tolerance 0 never takes), so that one graph covers the whole solve.
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import blpo_continuous as blpo  # noqa: E402

BLOCKS, CALLS, RHO, RANK = 30, 100, 50.0, 5


def cg_masked(hvp, v, rho, iterations):
    """cg_ihvp's iterations with no branch: NaN if any curvature p (H + rho I) p was not positive."""
    x, r, p = torch.zeros_like(v), v.clone(), v.clone()
    rs, positive = r @ r, torch.ones((), dtype=torch.bool)
    for _ in range(iterations):
        Ap = hvp(p) + rho * p
        curvature = p @ Ap
        positive = positive & (curvature > 0)
        alpha = rs / curvature
        x = x + alpha * p
        r = r - alpha * Ap
        rs_old, rs = rs, r @ r
        p = r + (rs / rs_old) * p
    return torch.where(positive, x, torch.full_like(x, float("nan")))


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    critic = blpo.Agent(11, 3).critic
    w, obs, targets = blpo.flat(critic.parameters()).detach(), torch.randn(64, 11), torch.randn(64)
    v = torch.randn(w.numel())

    def eager(w, obs, targets, v):
        return blpo.cg_ihvp(blpo.squared_error_hvp(critic, w, obs, targets), v, RHO, RANK)

    def masked(w, obs, targets, v):
        return cg_masked(blpo.squared_error_hvp(critic, w, obs, targets), v, RHO, RANK)

    start = time.time()
    compiled = torch.compile(masked, dynamic=False)
    x = compiled(w, obs, targets, v)
    print(f"first call, compiling: {time.time() - start:.1f} s")
    x_eager = eager(w, obs, targets, v)
    print(f"max |compiled - eager| / max |eager|: {((x - x_eager).abs().max() / x_eager.abs().max()).item():.1e}")

    def block(solve):
        start = time.process_time()
        for _ in range(CALLS):
            solve(w, obs, targets, v)
        return 1000 * (time.process_time() - start) / CALLS

    times = {"eager": [], "compiled": []}
    for solve in (eager, compiled):
        block(solve)
    for i in range(BLOCKS):
        for name in ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager"):
            times[name].append(block(eager if name == "eager" else compiled))
    ratios = [c / e for c, e in zip(times["compiled"], times["eager"])]
    print(
        f"eager {statistics.median(times['eager']):.2f} ms, compiled {statistics.median(times['compiled']):.2f} ms "
        f"per solve (medians of {BLOCKS} blocks of {CALLS}); compiled / eager: median {statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
