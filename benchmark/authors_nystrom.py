"""What x is in the authors' recipe, on real updates of `blpo_continuous_authors.py --algo blpo` (README, item (j)).

    python -m benchmark.authors_nystrom --env-ids Hopper-v4 HalfCheetah-v4 --iterations 10

Every BLPO update of the first `iterations` iterations (seed 1, the script's defaults) is measured three ways:
- x_gap = ||x - v/rho|| / ||x||, with x the translation's IHVP (exact Hessian rows, their +I core);
- x_cos = cos(x_theirs, x), x_theirs from their layout of C (`their_rows`): `jax.jacrev(select_grad_row)` returns one
  leaf per Flax parameter, shape (k, *leaf.shape); `ravel_pytree` concatenates them and `reshape(rank, -1)` cuts the
  concatenation into k pieces, so each "row" mixes pieces of several Hessian rows (test.py@98cecb9, `nystrom_hvp`);
- h_gap = ||h_theirs - h|| / ||h||, each through its own mixed term and the same bound.
The same coordinates serve both: the translation's S, placed in JAX's order. The script's update runs unchanged; the
measurement wraps three of its helpers. The table goes to stdout and `{out}/summary.md`, every update to
`{out}/updates.csv`.
"""

import csv
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import tyro

from benchmark.in_process import ROOT, load_script, run_main

QUANTILES = {"median": 0.5, "p90": 0.9, "max": 1.0}


@dataclass
class Args:
    env_ids: list[str] = field(default_factory=lambda: ["Hopper-v4", "HalfCheetah-v4"])
    """tasks to measure on"""
    iterations: int = 10
    """iterations of 32 x 640 steps to run, each with 4 x 32 measured updates"""
    seed: int = 1
    """the runs' seed"""
    out: Path = ROOT / "benchmark" / "results" / "authors-nystrom"
    """folder of summary.md and updates.csv"""


def jax_leaves(critic: nn.Sequential) -> list[torch.Tensor]:
    """The leaves of `ravel_pytree` over their Flax critic {"Dense_i": {"bias", "kernel"}}, in its order, each as the
    torch flat indices of its entries: layer by layer, the bias, then the kernel (in, out), which is torch's weight
    (out, in) transposed, row-major."""
    leaves, offset = [], 0
    for layer in (m for m in critic if isinstance(m, nn.Linear)):
        out_features, in_features = layer.weight.shape
        weight = offset + torch.arange(out_features * in_features).view(out_features, in_features)
        leaves += [offset + weight.numel() + torch.arange(out_features), weight.T.reshape(-1)]
        offset += weight.numel() + out_features
    return leaves


def their_rows(rows: torch.Tensor, coords: torch.Tensor, critic: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, S) as their code builds them from the exact rows H[coords, :] (torch order): C (k, d) in JAX's order of
    coordinates, and S, the coordinates' places in that order."""
    leaves = jax_leaves(critic)
    blocks = [rows[:, leaf] for leaf in leaves]  # jacrev: one (k, *leaf.shape) block per leaf
    flat = torch.cat([block.reshape(-1) for block in blocks])  # ravel_pytree of those blocks
    return flat.view(len(coords), -1), torch.argsort(torch.cat(leaves))[coords]  # reshape(rank, -1)


def measured_script(records: list[dict]):
    """The authors' script with its IHVP, mixed term and bound wrapped to append one record per update."""
    module = load_script("blpo_continuous_authors")
    ihvp, mixed, bound = module.nystrom_ihvp_plus_identity, module.mixed_term, module.bounded_hypergradient
    current = {}

    def measured_ihvp(rows, coords, v, rho):
        x = ihvp(rows, coords, v, rho)
        c_rows, s = their_rows(rows, coords, module.agent.critic)
        perm = torch.cat(jax_leaves(module.agent.critic))  # flat_jax = flat_torch[perm]
        x_theirs = torch.empty_like(x)
        x_theirs[perm] = ihvp(c_rows, s, v[perm], rho)
        current.update(x=x, x_theirs=x_theirs, x_gap=((x - v / rho).norm() / x.norm()).item())
        return x

    def measured_mixed(f2_grad_w, x, actor_params):
        grads = torch.autograd.grad(f2_grad_w @ current["x_theirs"], actor_params, retain_graph=True)
        current["c_theirs"] = module.flat(grads)
        return mixed(f2_grad_w, x, actor_params)

    def measured_bound(g, c, beta):
        h, scale = bound(g, c, beta)
        h_theirs, _ = bound(g, current["c_theirs"], beta)
        x_cos = module.cosine(current["x_theirs"], current["x"])
        records.append(dict(x_gap=current["x_gap"], x_cos=x_cos, h_gap=((h_theirs - h).norm() / h.norm()).item()))
        return h, scale

    module.nystrom_ihvp_plus_identity = measured_ihvp
    module.mixed_term = measured_mixed
    module.bounded_hypergradient = measured_bound
    return module


def summary_rows(env_id: str, records: list[dict]) -> list[dict]:
    rows = []
    for name in ("x_gap", "x_cos", "h_gap"):
        values = np.array([r[name] for r in records])
        extreme = {"min": values.min()} if name == "x_cos" else {}
        quantiles = {q: np.quantile(values, p) for q, p in QUANTILES.items() if name != "x_cos" or q == "median"}
        rows.append(dict(env_id=env_id, measure=name, updates=len(values)) | quantiles | extreme)
    return rows


def main(args: Args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    table, per_update = [], []
    for env_id in args.env_ids:
        records = []
        total = str(args.iterations * 32 * 640)
        flags = ["--algo", "blpo", "--env-id", env_id, "--seed", str(args.seed), "--total-timesteps", total]
        with tempfile.TemporaryDirectory() as cwd:  # the runs' events are not kept
            run_main(measured_script(records), flags, Path(cwd))
        table += summary_rows(env_id, records)
        per_update += [dict(env_id=env_id, update=i) | r for i, r in enumerate(records)]
    header = "| task | measure | updates | median | p90 | max | min |\n|---|---|---|---|---|---|---|\n"
    lines = [
        f"| {r['env_id']} | {r['measure']} | {r['updates']} | "
        + " | ".join(
            f"{r[q]:{'.6f' if r['measure'] == 'x_cos' else '.3g'}}" if q in r else "" for q in QUANTILES | {"min": 0}
        )
        + " |"
        for r in table
    ]
    command = "python -m benchmark.authors_nystrom " + " ".join(sys.argv[1:])
    markdown = f"`{command}`\n\n{header}" + "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(markdown)
    with open(args.out / "updates.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_update[0]))
        writer.writeheader()
        writer.writerows(per_update)
    print(markdown)


if __name__ == "__main__":
    main(tyro.cli(Args))
