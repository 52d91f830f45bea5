"""Where BLPO's correction c falls among the actor's parameters, against the direct gradient g, over a short run.

    OMP_NUM_THREADS=1 python -m benchmark.correction_split --env-id Hopper-v4 --iterations 30

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
    seed: int = 1
    """the run's seed"""
    flags: list[str] = field(default_factory=list)
    """further flags for blpo_continuous.py, e.g. --flags=--norm-adv-stats --flags=rollout"""


def main(args: Args) -> None:
    blpo = load_script("blpo_continuous")
    recorded, bounded = [], blpo.bounded_hypergradient

    def recording(g, c, bound):
        recorded.append(torch.stack([g, c]).detach().clone())
        return bounded(g, c, bound)

    blpo.bounded_hypergradient = recording
    argv = ["--env-id", args.env_id, "--seed", str(args.seed), "--total-timesteps", str(2048 * args.iterations)]
    with tempfile.TemporaryDirectory() as cwd:
        run_main(blpo, argv + args.flags, Path(cwd))
    g, c = torch.stack(recorded).unbind(1)
    # the trained agent is in the script's namespace; its actor parameters in the order g and c are flattened in
    names = {id(p): name for name, p in blpo.agent.named_parameters()}
    actor = blpo.agent.actor_parameters()
    names, sizes = [names[id(p)] for p in actor], [p.numel() for p in actor]
    print(f"{args.env_id}, seed {args.seed}, {len(g)} updates, flags {args.flags}")
    print(f"{'parameters':22s} {'mean |c|/|g|':>13s} {'|mean c|/|mean g|':>18s}")
    print(f"{'(all)':22s} {(c.norm(dim=1) / g.norm(dim=1)).mean():13.4g} {c.mean(0).norm() / g.mean(0).norm():18.4g}")
    for name, g_part, c_part in zip(names, g.split(sizes, dim=1), c.split(sizes, dim=1)):
        ratio = (c_part.norm(dim=1) / g_part.norm(dim=1).clamp_min(1e-12)).mean()
        drift = c_part.mean(0).norm() / g_part.mean(0).norm().clamp_min(1e-12)
        print(f"{name:22s} {ratio:13.4g} {drift:18.4g}")


if __name__ == "__main__":
    main(tyro.cli(Args))
