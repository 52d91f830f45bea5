"""Milliseconds per minibatch update, PPO against BLPO's variants, on a random Hopper-sized rollout.

    OMP_NUM_THREADS=1 python -m benchmark.update_cost

The rollout is 1 env x 2048 steps of random data (11 observations, 3 actions, a few episode ends); each variant
runs `update_minibatch` of its script on 64-sample minibatches with the script's defaults otherwise, 10 warm-up
calls, then the mean of 320 (one iteration's worth) in CPU time of this process (one thread: its wall-clock on a quiet
machine, and unmoved by the runs sharing a loaded one). This times the update alone: the rollout, whose cost is the
same for both scripts, is left out.
"""

import time

import numpy as np
import torch

import blpo_continuous as blpo
import ppo_continuous as ppo

NUM_STEPS, OBS_DIM, ACT_DIM, MINIBATCH, CALLS = 2048, 11, 3, 64, 320
VARIANTS = {
    "BLPO --nested-updates 1 --no-hypergrad (= PPO)": dict(nested_updates=1, hypergrad=False),
    "BLPO --no-hypergrad (PPO-Nested, K = 3)": dict(hypergrad=False),
    "BLPO, CG k = 5 (default)": dict(),
    "BLPO, CG k = 20": dict(ihvp_rank=20),
    "BLPO, stabilized Nystrom k = 5": dict(ihvp="nystrom"),
    "BLPO, stabilized Nystrom k = 20": dict(ihvp="nystrom", ihvp_rank=20),
    "BLPO, the paper's Nystrom k = 5": dict(ihvp="nystrom-paper"),
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


def milliseconds(update) -> float:
    inds = np.random.default_rng(0).permutation(NUM_STEPS)
    minibatches = [inds[i : i + MINIBATCH] for i in range(0, NUM_STEPS, MINIBATCH)]
    for i in range(10):
        update(minibatches[i])
    start = time.process_time()
    for i in range(CALLS):
        update(minibatches[i % len(minibatches)])
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
        args = blpo.Args(**overrides)
        agent = blpo.Agent(OBS_DIM, ACT_DIM)
        groups = [{"params": agent.actor_parameters()}, {"params": list(agent.critic.parameters())}]
        optimizer = torch.optim.Adam(groups, lr=3e-4, eps=1e-5, fused=True)
        discount = blpo.gae_discount_matrix(extra["dones"], extra["next_done"], args.gamma, args.gae_lambda)
        batch = blpo.Batch(**flat, **extra, discount=discount)
        critic_fn, generator, stats = (
            blpo.functional_critic(agent.critic),
            torch.Generator().manual_seed(1),
            blpo.HypergradStats(),
        )

        def update(mb):
            return blpo.update_minibatch(agent, optimizer, critic_fn, batch, mb, args, generator, stats)

        print(f"{name:50s} {milliseconds(update):6.2f} ms")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
