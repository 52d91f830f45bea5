"""Milliseconds per minibatch update, PPO against BLPO's variants, on a random Hopper-sized rollout.

    OMP_NUM_THREADS=1 python -m benchmark.update_cost
    OMP_NUM_THREADS=1 python -m benchmark.update_cost --against ../other-checkout/blpo_continuous.py

The rollout is 1 env x 2048 steps of random data (11 observations, 3 actions, a few episode ends); each variant
runs `update_minibatch` of its script on 64-sample minibatches with the script's defaults otherwise, 10 warm-up
calls, then the mean of 320 (one iteration's worth) in CPU time of this process (one thread: its wall-clock on a quiet
machine, and unmoved by the runs sharing a loaded one). This times the update alone: the rollout, whose cost is the
same for both scripts, is left out.

With `--against`, BLPO's default update of this checkout and of another checkout's script take turns in this one
process, in blocks of 32 calls: the median of the blocks' time ratios holds against a load that drifts.
"""

import importlib.util
import inspect
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

import blpo_continuous as blpo
import ppo_continuous as ppo

NUM_STEPS, OBS_DIM, ACT_DIM, MINIBATCH, CALLS = 2048, 11, 3, 64, 320
VARIANTS = {
    "BLPO --nested-updates 1 --no-hypergrad (= PPO)": dict(nested_updates=1, hypergrad=False),
    "BLPO --no-hypergrad (PPO-Nested, K = 3)": dict(hypergrad=False),
    "BLPO, CG k = 5 (default)": dict(),
    "BLPO, CG k = 20": dict(ihvp_rank=20),
    "BLPO, the paper's Nystrom k = 5": dict(ihvp="nystrom"),
}


def rollout():
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(NUM_STEPS, 1, OBS_DIM, generator=gen)
    dones = (torch.rand(NUM_STEPS, 1, generator=gen) < 0.01).float()
    flat = {
        "obs": obs.reshape(-1, OBS_DIM),
        "actions": torch.randn(NUM_STEPS, ACT_DIM, generator=gen),
        "logprobs": torch.randn(NUM_STEPS, generator=gen) - 3,
        "advantages": torch.randn(NUM_STEPS, generator=gen),
        "returns": torch.randn(NUM_STEPS, generator=gen),
        "values": torch.randn(NUM_STEPS, generator=gen),
    }
    extra = {
        "states": torch.cat([obs, torch.randn(1, 1, OBS_DIM, generator=gen)]),
        "rewards": torch.randn(NUM_STEPS, 1, generator=gen),
        "dones": dones,
        "next_done": torch.zeros(1),
    }
    return flat, extra


def minibatches():
    inds = np.random.default_rng(0).permutation(NUM_STEPS)
    return [inds[i : i + MINIBATCH] for i in range(0, NUM_STEPS, MINIBATCH)]


def milliseconds(update) -> float:
    mbs = minibatches()
    for i in range(10):
        update(mbs[i])
    start = time.process_time()
    for i in range(CALLS):
        update(mbs[i % len(mbs)])
    return 1000 * (time.process_time() - start) / CALLS


def main():
    torch.manual_seed(0)
    flat, extra = rollout()
    args = ppo.Args()
    args.minibatch_size = MINIBATCH
    agent = ppo.Agent(OBS_DIM, ACT_DIM)
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-4, eps=1e-5, fused=True)
    batch = ppo.Batch(**flat)
    ppo_ms = milliseconds(lambda mb: ppo.update_minibatch(agent, optimizer, batch, mb, args))
    print(f"{'ppo_continuous.py':50s} {ppo_ms:6.2f} ms")
    for name, overrides in VARIANTS.items():
        print(f"{name:50s} {milliseconds(blpo_update(blpo, flat, extra, overrides)[0]):6.2f} ms")


def blpo_update(module, flat, extra, overrides):
    """(mb_inds -> module.update_minibatch on the rollout, its agent): a fresh agent, the Args overrides."""
    args = module.Args(**overrides)
    agent = module.Agent(OBS_DIM, ACT_DIM)
    groups = [{"params": agent.actor_parameters()}, {"params": list(agent.critic.parameters())}]
    optimizer = torch.optim.Adam(groups, lr=3e-4, eps=1e-5, fused=True)
    matrix = module.gae_discount_matrix(extra["dones"], extra["next_done"], args.gamma, args.gae_lambda)
    field = "gae_matrix" if "gae_matrix" in module.Batch._fields else "discount"  # its name before #43
    batch = module.Batch(**flat, **extra, **{field: matrix})
    critic_fn, generator = module.functional_critic(agent.critic), torch.Generator().manual_seed(1)
    # the last argument: no IHVP check; before #43 the update took HypergradStats there and recorded into it
    last = module.HypergradStats() if "stats" in inspect.signature(module.update_minibatch).parameters else False
    return lambda mb: module.update_minibatch(agent, optimizer, critic_fn, batch, mb, args, generator, last), agent


def compare(other: Path, blocks: int) -> dict[str, torch.nn.Module]:
    """BLPO's default update, this checkout's against `other`'s, in alternating blocks of 32 calls; returns the two
    agents as the updates left them."""
    if not other.is_file():
        raise SystemExit(f"error: --against {other}: no such file; give another checkout's blpo_continuous.py")
    spec = importlib.util.spec_from_file_location("blpo_other", other)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    flat, extra = rollout()
    updates, agents = {}, {}
    for name, script in (("this", blpo), ("other", module)):
        torch.manual_seed(0)
        updates[name], agents[name] = blpo_update(script, flat, extra, {})
    mbs, times = minibatches(), {"this": [], "other": []}
    for name in times:
        for mb in mbs[:10]:
            updates[name](mb)
    for block in range(blocks):
        for name in ("this", "other") if block % 2 == 0 else ("other", "this"):
            start = time.process_time()
            for mb in mbs:
                updates[name](mb)
            times[name].append(1000 * (time.process_time() - start) / len(mbs))
    ratios = [a / b for a, b in zip(times["this"], times["other"])]
    this, that = statistics.median(times["this"]), statistics.median(times["other"])
    print(f"this checkout {this:.2f} ms, {other} {that:.2f} ms per update (medians over {blocks} blocks)")
    print(f"ratio this/other: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")
    return agents


@dataclass
class Args:
    against: Path | None = None
    """another checkout's blpo_continuous.py: time BLPO's default update here against it, instead of the table"""
    blocks: int = 40
    """with --against: blocks of 32 calls for each script"""


if __name__ == "__main__":
    torch.set_num_threads(1)
    cli = tyro.cli(Args)
    compare(cli.against, cli.blocks) if cli.against else main()
