"""Every IHVP solver against the exact one, at the same updates of one training run.

    python -m benchmark.ihvp_table --env-id Hopper-v4 --rho 50 --total-timesteps 40960 --every 200

Trains blpo_continuous.py in this process (its default solver drives the run, at --rho). Every `every`-th update,
the same minibatch's H, v and mixed term are handed to each solver of SOLVERS, and to the exact dense solve; each
solver's correction c is compared with the exact c*: ||c - c*|| / ||c*||, cos(c, c*), whether c is finite, and
the solver's milliseconds (its Hessian-vector products and linear algebra). Rows go to `{out}/{env}-rho{rho}.csv`;
`--summarize` turns every CSV in `out` into `summary.md`.
"""

import csv
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import tyro

from benchmark.in_process import load_script, run_main

ROOT = Path(__file__).resolve().parent.parent
SOLVERS = [("cg", 5), ("cg", 20), ("nystrom", 5), ("nystrom", 20), ("nystrom-paper", 5), ("nystrom-paper", 20)]
"""(solver, k): every one costs k Hessian-vector products"""
FIELDS = ["env_id", "rho", "update", "solver", "rank", "error", "cos", "finite", "solve_ms"]


@dataclass
class Args:
    env_id: str = "Hopper-v4"
    """the MuJoCo task"""
    rho: float = 50.0
    """the regularizer of (H + rho I), for the run and for every solver"""
    total_timesteps: int = 40960
    """environment steps of the training run"""
    every: int = 200
    """compare the solvers at every N-th update"""
    seed: int = 1
    """the training run's seed"""
    out: Path = ROOT / "benchmark" / "out" / "ihvp"
    """folder of the CSV files and of summary.md"""
    summarize: bool = False
    """only write summary.md from the CSV files in `out`"""


def measure(args: Args) -> Path:
    """Train with the solvers compared at every `args.every`-th update; return the CSV written."""
    module = load_script("blpo_continuous")
    solve_ihvp, correction = module.solve_ihvp, module.correction
    generator = torch.Generator().manual_seed(args.seed + 1000)  # the compared solvers' sketches
    state = {"calls": 0, "probe": None}
    rows = []

    def probing_solve(hvp, v, run_args, run_generator):
        state["calls"] += 1
        if state["calls"] % args.every == 0:
            state["probe"] = (hvp, v)
        return solve_ihvp(hvp, v, run_args, run_generator)

    def probing_correction(x, *mixed):
        if state["probe"] is not None:
            hvp, v = state["probe"]
            state["probe"] = None
            c_exact = correction(module.exact_ihvp(hvp, v, args.rho), *mixed)
            for solver, rank in [*SOLVERS, ("none (x = v / rho)", 0)]:
                start = time.perf_counter()
                if rank:
                    x_solver = solve_ihvp(
                        hvp, v, SimpleNamespace(ihvp=solver, ihvp_rank=rank, ihvp_rho=args.rho), generator
                    )
                else:
                    x_solver = v / args.rho
                solve_ms = 1000 * (time.perf_counter() - start)
                c = correction(x_solver, *mixed)
                finite = bool(torch.isfinite(c).all())
                error = ((c - c_exact).norm() / c_exact.norm()).item() if finite else math.nan
                cos = ((c @ c_exact) / (c.norm() * c_exact.norm())).item() if finite else math.nan
                rows.append([args.env_id, args.rho, state["calls"], solver, rank, error, cos, finite, solve_ms])
        return correction(x, *mixed)

    module.solve_ihvp, module.correction = probing_solve, probing_correction
    argv = ["--env-id", args.env_id, "--total-timesteps", str(args.total_timesteps), "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory() as cwd:
        run_main(module, [*argv, "--ihvp-rho", str(args.rho)], Path(cwd))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.env_id}-rho{args.rho:g}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        writer.writerows(rows)
    return path


def summarize(out: Path) -> Path:
    """summary.md: per task, rho and solver, the error's median, mean and worst, the share of cos(c, c*) < 0.5,
    non-finite corrections, and the median milliseconds."""
    groups: dict[tuple, list[dict]] = {}
    for path in sorted(out.glob("*.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                groups.setdefault((row["env_id"], float(row["rho"]), row["solver"], int(row["rank"])), []).append(row)
    lines = [
        "| env | rho | solver | k | probes | median error | mean error | worst error | cos < 0.5 | non-finite | ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (env_id, rho, solver, rank), rows in groups.items():
        finite = [r for r in rows if r["finite"] == "True"]
        errors = np.array([float(r["error"]) for r in finite])
        cosines = np.array([float(r["cos"]) for r in finite])
        ms = np.median([float(r["solve_ms"]) for r in rows])
        stats = f"{np.median(errors):.2g} | {errors.mean():.2g} | {errors.max():.2g}" if len(finite) else "- | - | -"
        low = f"{(cosines < 0.5).mean():.0%}" if len(finite) else "-"
        lines.append(
            f"| {env_id} | {rho:g} | {solver} | {rank or '-'} | {len(rows)} | {stats} | {low} "
            f"| {len(rows) - len(finite)} | {ms:.2f} |"
        )
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    args = tyro.cli(Args)
    if not args.summarize:
        print(f"wrote {measure(args)}")
    print(summarize(args.out).read_text())
