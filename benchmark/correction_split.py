"""Where BLPO's correction c falls among the actor's parameters, against the direct gradient g, over a short run.

    OMP_NUM_THREADS=1 python -m benchmark.correction_split --env-id Hopper-v4 --iterations 30
    OMP_NUM_THREADS=1 python -m benchmark.correction_split --iterations 250 --skip-iterations 200   # 410k-512k steps

Runs `blpo_continuous.py` in this process at its defaults (plus any `--flags` given), records g and c of every
update, and prints one line per actor parameter tensor: the mean of ||c|| / ||g|| over the updates, and the
drift, ||mean c|| / ||mean g||, which says whether c pushes that tensor one way consistently (a small ratio with a
large drift would still move it). The last line, `actor_logstd`, sets the policy's entropy.
"""

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

from benchmark.in_process import load_script, run_main


@dataclass
class Args:
    env_id: str = "Hopper-v4"
    """the MuJoCo task"""
    iterations: int = 30
    """rollouts of 2,048 steps to run"""
    skip_iterations: int = 0
    """leave the updates of the first this many rollouts out of the statistics (to look at a later phase)"""
    seed: int = 1
    """the run's seed"""
    flags: list[str] = field(default_factory=list)
    """further flags for blpo_continuous.py, e.g. --flags=--norm-adv-stats --flags=rollout"""


def main(args: Args) -> None:
    blpo = load_script("blpo_continuous")
    bounded = blpo.bounded_hypergradient
    sums = {"g": 0.0, "c": 0.0}  # running sums of g and c
    ratios = []  # per update, ||c|| / ||g|| of each actor tensor and of the whole actor

    def recording(g, c, bound):
        if blpo.iteration <= args.skip_iterations:  # the main loop's counter, 1 for the first rollout
            return bounded(g, c, bound)
        sizes = [p.numel() for p in blpo.agent.actor_parameters()]
        sums["g"], sums["c"] = sums["g"] + g.detach(), sums["c"] + c.detach()
        parts = zip(g.detach().split(sizes), c.detach().split(sizes))
        ratios.append([c.norm() / g.norm()] + [cp.norm() / gp.norm().clamp_min(1e-12) for gp, cp in parts])
        return bounded(g, c, bound)

    blpo.bounded_hypergradient = recording
    argv = ["--env-id", args.env_id, "--seed", str(args.seed), "--total-timesteps", str(2048 * args.iterations)]
    with tempfile.TemporaryDirectory() as cwd:
        run_main(blpo, argv + args.flags, Path(cwd))
    # the trained agent is in the script's namespace; its actor parameters in the order g and c are flattened in
    names = {id(p): name for name, p in blpo.agent.named_parameters()}
    actor = blpo.agent.actor_parameters()
    names, sizes = ["(all)"] + [names[id(p)] for p in actor], [p.numel() for p in actor]
    mean_ratios = torch.tensor(ratios).mean(0)
    g_parts, c_parts = [sums["g"]] + list(sums["g"].split(sizes)), [sums["c"]] + list(sums["c"].split(sizes))
    after = f"{len(ratios)} updates after rollout {args.skip_iterations}"
    print(f"{args.env_id}, seed {args.seed}, {after}, flags {args.flags}")
    print(f"{'parameters':22s} {'mean |c|/|g|':>13s} {'|mean c|/|mean g|':>18s}")
    for name, ratio, g_sum, c_sum in zip(names, mean_ratios, g_parts, c_parts):
        print(f"{name:22s} {ratio:13.4g} {c_sum.norm() / g_sum.norm().clamp_min(1e-12):18.4g}")


if __name__ == "__main__":
    main(tyro.cli(Args))
