"""Where BLPO's correction c falls among the actor's parameters, against the direct gradient g, over a short run.

    OMP_NUM_THREADS=1 python -m benchmark.correction_split --env-id Hopper-v4 --iterations 30
    OMP_NUM_THREADS=1 python -m benchmark.correction_split --iterations 250 --skip-iterations 200   # 410k-512k steps

Runs `blpo_continuous.py` in this process at its defaults (plus any `--flags` given), follows g and c of every
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


def norms(vector, sizes):
    """||vector|| and the norm of each of its parts of the given sizes, as one tensor."""
    return torch.stack([vector.norm()] + [part.norm() for part in vector.split(sizes)])


def main(args: Args) -> None:
    blpo = load_script("blpo_continuous")
    bounded = blpo.bounded_hypergradient
    sums = {"g": 0.0, "c": 0.0}  # running sums of g and c
    ratios = []  # per update, ||c|| / ||g|| of the whole actor and of each of its tensors
    sizes = []  # the actor tensors' sizes, in the order g and c are flattened in; read at the first update

    def recording(g, c, bound, fixed=False):
        if blpo.iteration > args.skip_iterations:  # the main loop's counter, 1 for the first rollout
            sizes[:] = sizes or [p.numel() for p in blpo.agent.actor_parameters()]
            g_, c_ = g.detach(), c.detach()
            sums["g"], sums["c"] = sums["g"] + g_, sums["c"] + c_
            ratios.append(norms(c_, sizes) / norms(g_, sizes).clamp_min(1e-12))
        return bounded(g, c, bound, fixed)

    blpo.bounded_hypergradient = recording
    argv = ["--env-id", args.env_id, "--seed", str(args.seed), "--total-timesteps", str(2048 * args.iterations)]
    with tempfile.TemporaryDirectory() as cwd:
        run_main(blpo, argv + args.flags, Path(cwd))
    # the trained agent is in the script's namespace
    names = {id(p): name for name, p in blpo.agent.named_parameters()}
    names = ["(all)"] + [names[id(p)] for p in blpo.agent.actor_parameters()]
    mean_ratios = torch.stack(ratios).mean(0)
    drifts = norms(sums["c"], sizes) / norms(sums["g"], sizes).clamp_min(1e-12)
    after = f"{len(ratios)} updates after rollout {args.skip_iterations}"
    print(f"{args.env_id}, seed {args.seed}, {after}, flags {args.flags}")
    print(f"{'parameters':22s} {'mean |c|/|g|':>13s} {'|mean c|/|mean g|':>18s}")
    for name, ratio, drift in zip(names, mean_ratios, drifts):
        print(f"{name:22s} {ratio:13.4g} {drift:18.4g}")


if __name__ == "__main__":
    main(tyro.cli(Args))
