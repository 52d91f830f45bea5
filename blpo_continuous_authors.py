# BLPO, PPO-Nested and PPO as the paper's authors ran them for their figures (github Arnie-He/BLPO, JAX + Brax: BLPO
# Stackelberg_RL/continuous/test.py@98cecb9, PPO-Nested continuous_nystrom_ppo.py@2628926 --vanilla=True, PPO
# Baselines/continuous_ppo.py@98cecb9; README "The authors' recipe"), translated to PyTorch and Gymnasium MuJoCo.
# blpo_continuous.py is BLPO on CleanRL's PPO; this script is their recipe, differences and all:
# - 32 envs x 640 steps; one set of observation and reward statistics for all envs, updated every vector step, no
#   clipping; GAE(0.99, 0.95) that bootstraps neither at termination nor at the time limit.
# - BLPO and PPO-Nested: 4 epochs over the 32 envs in a fresh order, each minibatch one env's whole trajectory in time
#   order. K Adam steps of the critic on mean (G - V)^2 alone (lr 1e-3), then the actor (lr 2.5e-4, constant) on the
#   clipped surrogate of A(w), GAE recomputed from the current critic and not normalized. No entropy, no clipping.
# - BLPO's actor follows h = g - c: x from the Nystrom IHVP with a +I core on 5 fixed coordinates (rho = 50),
#   c = D_w[grad_theta f2](x) for f2 = -2 sum_t min(r A(w), clip(r, 1 +- 0.5) A(w)) (G - V_w), and ||c|| <= ||g||.
# - PPO: 32 minibatches of 640 samples shuffled over the rollout; per minibatch one actor step on the rollout's
#   advantages (not normalized), then one critic step; both Adams at 2.5e-4, annealed to 0.
# What cannot be translated exactly, and what is done instead:
# - Brax's positional MuJoCo models -> Gymnasium's MuJoCo v4 tasks (other dynamics, observations and rewards).
# - JAX's coordinates: theirs come from jax.random key 0 over JAX's parameter order; here the first 5 of torch.randperm
#   with a generator seeded 0 over PyTorch's order: as theirs, the same at every update and for every seed. Their C
#   is not H[S, :] but jacrev's per-layer blocks concatenated and cut into k pieces; here the exact rows (the
#   difference in x and h: benchmark/authors_nystrom.py).
# - Brax's AutoReset restarts an env from the state cached at its first reset; Gymnasium's same-step autoreset draws
#   a fresh start for every episode (the observation after a done is the next episode's first).
# - Action bounds: their ClipAction clips to [-1, 1]; here to the env's action space (Humanoid-v4's is +-0.4).
# - Their update has no guard: a non-finite c is applied and counted; weights that turn non-finite, or a singular
#   core, stop the run with one `error:` line, the events and the last finite model kept.
import math
import os
import random
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

warnings.filterwarnings("ignore", message=r".*is out of date", category=DeprecationWarning)  # CleanRL's -v4 ids
warnings.filterwarnings("ignore", message=r"MuJoCo: compiler attribute 'settotalmass' is deprecated")  # HalfCheetah


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # the name of this experiment
    seed: int = 1  # seed of the experiment
    torch_deterministic: bool = True  # if toggled, `torch.backends.cudnn.deterministic=True`
    cuda: bool = True  # if toggled, cuda will be used when available
    track: bool = False  # if toggled, this experiment will be tracked with Weights and Biases
    wandb_project_name: str = "blpo"  # the wandb's project name
    wandb_entity: str | None = None  # the entity (team) of wandb's project
    capture_video: bool = False  # whether to capture videos of the agent performances (check out `videos` folder)
    save_model: bool = False  # whether to save the model into the `runs/{run_name}` folder

    # Algorithm specific arguments
    algo: Literal["blpo", "nested", "ppo"] = "blpo"  # their BLPO, their PPO-Nested (BLPO without c), or their PPO
    env_id: str = "Hopper-v4"  # the id of the environment
    total_timesteps: int = 8000000  # total timesteps of the experiments, rounded down to whole iterations
    learning_rate: float = 2.5e-4  # the actor's learning rate (PPO's: both networks', annealed to 0)
    critic_lr: float = 1e-3  # the critic's learning rate for blpo and nested (constant)
    num_envs: int = 32  # the number of parallel game environments
    num_steps: int = 640  # the number of steps to run in each environment per policy rollout
    gamma: float = 0.99  # the discount factor gamma
    gae_lambda: float = 0.95  # the lambda for the general advantage estimation
    num_minibatches: int = 32  # ppo's minibatches of shuffled samples (blpo and nested take one env's trajectory each)
    update_epochs: int = 4  # the number of epochs over the batch per update
    clip_coef: float = 0.2  # the surrogate clipping coefficient
    nested_updates: int | None = None  # K, critic steps before each actor step; default per task (their F scripts)
    mixed_clip: float = 0.5  # c_f, the clip of the mixed surrogate f2
    ihvp_rank: int = 5  # k, the Nystrom coordinates
    ihvp_rho: float = 50.0  # rho, the regularizer of the inverse Hessian
    hypergrad_bound: float = 1.0  # beta: ||c|| is capped at beta ||g||
    correction: Literal["ift", "matched", "random"] = "ift"  # c, or a control: matched_control or random_control

    # to be filled in runtime
    batch_size: int = field(default=0, init=False)  # the batch size (computed in runtime)
    minibatch_size: int = field(default=0, init=False)  # the mini-batch size (computed in runtime)
    num_iterations: int = field(default=0, init=False)  # the number of iterations (computed in runtime)


NESTED_UPDATES = {"HalfCheetah": 5, "Walker2d": 2, "HumanoidStandup": 5, "InvertedPendulum": 5}
"""K per task in their F scripts (run_brax*.sh); every other task 3"""


def default_nested_updates(env_id):
    return next((k for task, k in NESTED_UPDATES.items() if env_id.startswith(task)), 3)


def check_args(args: Args) -> None:
    """ValueError naming the first setting that cannot run."""
    counts = ["num_envs", "num_steps", "num_minibatches", "update_epochs", "total_timesteps", "ihvp_rank"]
    batch_size = args.num_envs * args.num_steps
    for bad, message in [
        *[(getattr(args, n) < 1, f"--{n.replace('_', '-')} {getattr(args, n)} is less than 1") for n in counts],
        (args.nested_updates is not None and args.nested_updates < 1, "--nested-updates is less than 1"),
        ("/" in args.exp_name, f"--exp-name {args.exp_name!r} contains '/', but it names the run directory"),
        (
            args.algo == "ppo" and batch_size % max(args.num_minibatches, 1),
            f"--num-minibatches does not divide the {batch_size} steps",
        ),
        (args.total_timesteps < batch_size, f"--total-timesteps is less than one batch ({batch_size} steps)"),
        (not args.ihvp_rho > 0, f"--ihvp-rho must be positive, got {args.ihvp_rho}"),
        (not args.hypergrad_bound >= 0, f"--hypergrad-bound must be non-negative, got {args.hypergrad_bound}"),
    ]:
        if bad:
            raise ValueError(message)


def make_env(env_id, idx, capture_video, run_name):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        if not isinstance(env.action_space, gym.spaces.Box):
            raise ValueError(f"{env_id} has {type(env.action_space).__name__} actions, not Box: use blpo_discrete.py")
        env = gym.wrappers.FlattenObservation(env)
        return gym.wrappers.RecordEpisodeStatistics(env)  # the raw returns; normalization happens in the main loop

    return thunk


def make_envs(env_id, num_envs, capture_video, run_name):
    """The vector env with same-step autoreset; ValueError for an env id that cannot be made or does not fit."""
    try:
        return gym.vector.SyncVectorEnv(
            [make_env(env_id, i, capture_video, run_name) for i in range(num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
    except gym.error.Error as e:
        raise ValueError(f"cannot make {env_id!r}: {e}") from None


def finished_episodes(infos):
    """(return, length) of every episode that ended in this vector step."""
    final = infos.get("final_info", {})
    if "episode" not in final:
        return []
    mask = final["_episode"]
    return [(float(r), int(l)) for r, l in zip(final["episode"]["r"][mask], final["episode"]["l"][mask])]


class RunningMeanStd:
    """Their running mean and variance (core/wrappers.py): a batch per update; initial mean 0, var 1, count 1e-4."""

    def __init__(self, shape=()):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), 1e-4

    def update(self, batch):
        batch_mean, batch_var, batch_count = batch.mean(0), batch.var(0), batch.shape[0]
        delta, total = batch_mean - self.mean, self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var, self.count = m2 / total, total


class Normalizer:
    """Their NormalizeVecObservation and NormalizeVecReward: one set of statistics for all envs, updated with every
    vector step before use, unclipped; rewards divided by the standard deviation of each env's discounted return."""

    def __init__(self, obs_shape, num_envs, gamma):
        self.obs_rms, self.return_rms, self.gamma = RunningMeanStd(obs_shape), RunningMeanStd(), gamma
        self.discounted_return = np.zeros(num_envs)
        self.frozen = False  # evaluation: the saved statistics, not updated

    def obs(self, obs):
        if not self.frozen:
            self.obs_rms.update(obs)
        return (obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + 1e-8)

    def reward(self, reward, done):
        self.discounted_return = self.discounted_return * self.gamma * (1 - done) + reward  # restarts at a done
        self.return_rms.update(self.discounted_return)
        return reward / np.sqrt(self.return_rms.var + 1e-8)


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """Their separate actor and critic: 64-64 tanh, orthogonal init (sqrt 2 hidden, 0.01 actor head, 1 critic head),
    zero biases, a state-independent log std initialized at 0."""

    def __init__(self, obs_dim, act_dim):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, act_dim), std=0.01),
        )
        self.actor_logstd = nn.Parameter(torch.zeros(act_dim))

    def get_value(self, x):
        return self.critic(x).squeeze(-1)

    def get_action(self, x, action=None):
        """(action, log pi(action | x), entropy), the action drawn if not given."""
        dist = torch.distributions.Normal(self.actor_mean(x), self.actor_logstd.exp())
        action = dist.sample() if action is None else action
        return action, dist.log_prob(action).sum(-1), dist.entropy().sum(-1)

    def actor_parameters(self):
        return [*self.actor_mean.parameters(), self.actor_logstd]


# Their GAE, with done[t] the flag of transition t: delta[t] = r[t] + gamma (1 - done[t]) V(s[t + 1]) - V(s[t]),
# A[t] = delta[t] + gamma lambda (1 - done[t]) A[t + 1]. A(w) is linear in the values: A = D delta(w)


def gae_discount_matrix(dones, gamma, gae_lambda):
    """D (..., T, T) for dones (..., T): D[t, s] = (gamma lambda)^(s - t) for s >= t when no transition t..s-1 ends an
    episode, else 0."""
    num_steps = dones.shape[-1]
    episode = torch.cumsum(dones, -1) - dones  # the episode that transition t belongs to
    t = torch.arange(num_steps, device=dones.device)
    lag = (t[None, :] - t[:, None]).to(dones.dtype)
    same = episode[..., :, None] == episode[..., None, :]
    return torch.where(same & (lag >= 0), (gamma * gae_lambda) ** lag.clamp(min=0), 0.0)


def advantages_from_values(values, rewards, dones, gae_matrix, gamma):
    """A = D delta for values (..., T + 1): V at the T states and the bootstrap state, differentiable in them."""
    deltas = rewards + gamma * (1 - dones) * values[..., 1:] - values[..., :-1]
    return (gae_matrix @ deltas[..., None]).squeeze(-1)


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def functional_critic(critic):
    """critic_fn(w, obs) = critic(obs) with its parameters taken from one flat vector w."""
    names, shapes = zip(*[(name, p.shape) for name, p in critic.named_parameters()])

    def critic_fn(w, obs):
        params = {n: t.view(s) for n, s, t in zip(names, shapes, w.split([math.prod(s) for s in shapes]))}
        return torch.func.functional_call(critic, params, (obs,)).squeeze(-1)

    return critic_fn


def fixed_coordinates(dim, rank):
    """Their k coordinates: the first k of a permutation from a constant seed, the same for every call and seed."""
    return torch.randperm(dim, generator=torch.Generator().manual_seed(0))[:rank]


def nystrom_ihvp_plus_identity(rows, coords, v, rho):
    """Their Nystrom: C = H[S, :], M = C[:, S], x = v / rho - C^T (rho (M + I) + C C^T)^-1 C v / rho, which is
    (C^T (M + I)^-1 C + rho I)^-1 v."""
    core = rho * (rows[:, coords] + torch.eye(len(coords), dtype=v.dtype, device=v.device)) + rows @ rows.T
    return (v - rows.T @ torch.linalg.solve(core, rows @ v)) / rho


def hessian_rows(loss_fn, w, coords):
    """H[coords, :] for the Hessian H of loss_fn at w: one batched forward-over-reverse product per unit vector."""
    units = torch.zeros(len(coords), w.numel(), dtype=w.dtype, device=w.device)
    units[torch.arange(len(coords)), coords] = 1.0
    hvp = lambda u: torch.func.jvp(torch.func.grad(loss_fn), (w,), (u,))[1]  # noqa: E731
    return torch.func.vmap(hvp)(units)


def clipped_surrogate(ratio, advantages, clip):
    """min(r A, clip(r, 1 - clip, 1 + clip) A), per sample."""
    return torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)


def mixed_term(f2_grad_w, x, actor_params):
    """c = D_w[grad_theta f2](x) = grad_theta (grad_w f2 . x), from grad_w f2 taken with create_graph=True."""
    return flat(torch.autograd.grad(f2_grad_w @ x, actor_params))


def matched_control(c, g, sizes, generator):
    """c = a g / ||g|| + r, r orthogonal to g, with r replaced per tensor (`sizes` splits the vectors) by a random r'
    orthogonal to g there and of r's norm: ||c||, cos(c, g) and each ||r_i|| stay c's. A one-entry tensor keeps r_i."""
    g_unit = g / g.norm() if g.norm() > 0 else g
    along = (c @ g_unit) * g_unit
    pieces = []
    for r_i, g_i in zip((c - along).split(sizes), g.split(sizes)):
        z = torch.randn(r_i.shape, generator=generator, dtype=r_i.dtype).to(r_i.device)
        z = z - (z @ g_i) / (g_i @ g_i).clamp(min=1e-30) * g_i  # orthogonal to g_i (a zero g_i leaves z)
        pieces.append(z * (r_i.norm() / z.norm()) if r_i.numel() > 1 else r_i)
    return along + torch.cat(pieces)


def random_control(c, generator):
    """A Gaussian direction with c's norm."""
    z = torch.randn(c.shape, generator=generator, dtype=c.dtype).to(c.device)
    return z * (c.norm() / z.norm())


def bounded_hypergradient(g, c, bound):
    """Their bound: h = g - min(1, beta ||g|| / (||c|| + 1e-8)) c, with global norms. Returns (h, scale)."""
    scale = torch.clamp(bound * g.norm() / (c.norm() + 1e-8), max=1.0)
    return g - scale * c, scale.item()


def cosine(a, b):
    """cos(a, b) in float64; 0 if either is zero."""
    norms = a.double().norm() * b.double().norm()
    return (a.double() @ b.double() / norms).item() if norms > 0 else 0.0


def set_grads(params, vector):
    for p, grad in zip(params, vector.split([p.numel() for p in params])):
        p.grad = grad.view_as(p).clone()


def minibatch_losses(v_loss, pg_loss, entropy, logratio, clip_coef):
    """CleanRL's logged losses of one minibatch, with its KL estimates (http://joschu.net/blog/kl-approx.html)."""
    with torch.no_grad():
        ratio = logratio.exp()
        kl = dict(old_approx_kl=(-logratio).mean(), approx_kl=((ratio - 1) - logratio).mean())
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return {"value_loss": v_loss, "policy_loss": pg_loss, "entropy": entropy.mean(), **kl, "clipfrac": clipfrac}


def update_trajectory(agent, actor_opt, critic_opt, critic_fn, traj, args, generator=None):
    """BLPO or PPO-Nested on one env's trajectory `traj` (its steps, bootstrap observation last_obs and gae_matrix): K
    critic steps alone, then one actor step; `generator` draws the controls. Returns the losses and g, c, h, scale."""
    # 3a. Nested critic: K Adam steps on L(w) = mean (G - V_w(s))^2 over the trajectory
    for _ in range(args.nested_updates):
        v_loss = ((traj["targets"] - agent.get_value(traj["obs"])) ** 2).mean()
        critic_opt.zero_grad()
        v_loss.backward()
        critic_opt.step()

    # 3b. g = grad_theta l and v = grad_w l, l = -mean min(r A(w), clip(r, 1 +- eps) A(w)) with A(w) recomputed
    w = flat(agent.critic.parameters()).detach().requires_grad_()
    states = torch.cat([traj["obs"], traj["last_obs"][None]])
    advantages = advantages_from_values(
        critic_fn(w, states), traj["rewards"], traj["dones"], traj["gae_matrix"], args.gamma
    )
    _, newlogprob, entropy = agent.get_action(traj["obs"], traj["actions"])
    logratio = newlogprob - traj["logprobs"]
    ratio = logratio.exp()
    pg_loss = -clipped_surrogate(ratio, advantages, args.clip_coef).mean()
    actor_params = agent.actor_parameters()
    grads = torch.autograd.grad(pg_loss, [*actor_params, w], retain_graph=args.algo == "blpo")
    g, v = flat(grads[:-1]), grads[-1]
    h, hypergrad = g, None
    if args.algo == "blpo":
        # 3c. Their IHVP: x = (C^T (M + I)^-1 C + rho I)^-1 v at k fixed coordinates, H the Hessian of L at w
        loss_fn = lambda w_: ((traj["targets"] - critic_fn(w_, traj["obs"])) ** 2).mean()  # noqa: E731
        coords = fixed_coordinates(w.numel(), args.ihvp_rank).to(w.device)
        x = nystrom_ihvp_plus_identity(hessian_rows(loss_fn, w.detach(), coords), coords, v, args.ihvp_rho)

        # 3d. Mixed term: f2 = -2 sum_t min(r A(w), clip(r, 1 +- c_f) A(w)) (G - V_w(s)), c = D_w[grad_theta f2](x)
        f2 = -2 * (
            clipped_surrogate(ratio, advantages, args.mixed_clip) * (traj["targets"] - critic_fn(w, traj["obs"]))
        )
        (f2_grad_w,) = torch.autograd.grad(f2.sum(), w, create_graph=True)
        c = mixed_term(f2_grad_w, x, actor_params)
        if args.correction == "matched":  # the controls: c's size (and angle to g), a random direction
            c = matched_control(c, g, [p.numel() for p in actor_params], generator)
        elif args.correction == "random":
            c = random_control(c, generator)

        # 3e. Bound: h = g - min(1, beta ||g|| / (||c|| + 1e-8)) c; a non-finite c is counted and applied, as theirs
        h, scale = bounded_hypergradient(g, c, args.hypergrad_bound)
        hypergrad = dict(g=g, c=c, h=h, scale=scale)

    # 3f. Step: the actor alone, Adam, no clipping
    set_grads(actor_params, h)
    actor_opt.step()
    return minibatch_losses(v_loss, pg_loss, entropy, logratio, args.clip_coef), hypergrad


def update_samples(agent, actor_opt, critic_opt, mb, args):
    """Their PPO on a minibatch of shuffled samples: an actor step on the rollout's advantages, then a critic step."""
    _, newlogprob, entropy = agent.get_action(mb["obs"], mb["actions"])
    logratio = newlogprob - mb["logprobs"]
    ratio = logratio.exp()
    pg_loss = -clipped_surrogate(ratio, mb["advantages"], args.clip_coef).mean()
    actor_opt.zero_grad()
    pg_loss.backward()
    actor_opt.step()
    v_loss = ((mb["targets"] - agent.get_value(mb["obs"])) ** 2).mean()
    critic_opt.zero_grad()
    v_loss.backward()
    critic_opt.step()
    return minibatch_losses(v_loss, pg_loss, entropy, logratio, args.clip_coef)


class HypergradStats:
    """Means since the last `pop_means` of ||g||, ||c|| and their ratio before the bound, cos(c, g) and how often the
    bound acts; over the run, the count of non-finite c and the push of the applied d = g - h on the log std (the last
    `logstd_size` entries of g): ||sum d|| / ||sum g|| and cos(sum d, sum g)."""

    def __init__(self, logstd_size):
        self.values, self.nonfinite, self.logstd = {}, 0, slice(-logstd_size, None)
        self.sum_d = self.sum_g = 0.0

    def add(self, g, c, h, scale):
        if not torch.isfinite(c).all():
            self.nonfinite += 1
            return
        self.sum_d, self.sum_g = self.sum_d + (g - h)[self.logstd].double(), self.sum_g + g[self.logstd].double()
        g_norm, c_norm = g.norm().item(), c.norm().item()
        values = dict(direct_grad_norm=g_norm, correction_norm=c_norm, correction_ratio=c_norm / max(g_norm, 1e-12))
        values |= dict(cos_correction_direct=cosine(c, g), bound_active_frac=float(scale < 1))
        for name, value in values.items():
            self.values.setdefault(name, []).append(value)

    def pop_means(self):
        means = {name: sum(values) / len(values) for name, values in self.values.items()}
        self.values.clear()
        push = (
            dict(
                logstd_push_ratio=(self.sum_d.norm() / self.sum_g.norm()).item(),
                logstd_push_cos=cosine(self.sum_d, self.sum_g),
            )
            if torch.is_tensor(self.sum_d)
            else {}
        )
        return means | push | {"nonfinite_corrections": self.nonfinite}


class BrokenUpdate(Exception):
    """An update that turned the weights non-finite or could not solve; its arguments: the state dict from before that
    update, and what went wrong."""


def save_model(path, agent, normalizer):
    """Weights plus the observation statistics the policy was trained with."""
    torch.save({"agent": agent.state_dict(), "obs_rms": vars(normalizer.obs_rms)}, path)


def evaluate(model_path, env_id, eval_episodes=10, seed=1, deterministic=True, device="cpu"):
    """The undiscounted returns of `eval_episodes` episodes of a saved policy, its observation statistics frozen.
    ValueError for an env id that cannot be made or a checkpoint that does not fit this script's agent."""
    envs, script = make_envs(env_id, 1, False, "eval"), os.path.basename(__file__)
    try:
        agent = Agent(np.prod(envs.single_observation_space.shape), np.prod(envs.single_action_space.shape)).to(device)
        checkpoint = torch.load(model_path, map_location=device, weights_only=False)
        if not isinstance(checkpoint, dict) or not {"agent", "obs_rms"} <= checkpoint.keys():
            raise ValueError(f"{model_path} is not a checkpoint of {script}'s --save-model")
        try:
            agent.load_state_dict(checkpoint["agent"])
        except RuntimeError as e:
            raise ValueError(f"{model_path} does not fit {script}'s agent on {env_id}: {' '.join(str(e).split())}")
        normalizer = Normalizer(envs.single_observation_space.shape, 1, 0.99)
        vars(normalizer.obs_rms).update(checkpoint["obs_rms"])
        normalizer.frozen = True
        low, high = envs.single_action_space.low, envs.single_action_space.high
        obs, _ = envs.reset(seed=seed)
        episodic_returns = []
        while len(episodic_returns) < eval_episodes:
            with torch.no_grad():
                x = torch.as_tensor(normalizer.obs(obs), dtype=torch.float32, device=device)
                actions = agent.actor_mean(x) if deterministic else agent.get_action(x)[0]
            obs, _, _, _, infos = envs.step(np.clip(actions.cpu().numpy(), low, high))
            episodic_returns += [r for r, _ in finished_episodes(infos)]
    finally:
        envs.close()
    return episodic_returns[:eval_episodes]


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo's renderer for --capture-video, which needs no display
    args = tyro.cli(Args)
    run_name = f"{args.env_id}__{args.exp_name}__{args.algo}__{args.seed}__{int(time.time())}"
    try:  # every check before the first step: one `error:` line, no traceback
        check_args(args)
        envs = make_envs(args.env_id, args.num_envs, args.capture_video, run_name)
        os.makedirs(f"runs/{run_name}", exist_ok=True)
    except OSError as e:
        sys.exit(f"error: cannot create {e.filename}: {e.strerror}")
    except (ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    if args.nested_updates is None:
        args.nested_updates = default_nested_updates(args.env_id)
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            monitor_gym=True,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    obs_shape, act_shape = envs.single_observation_space.shape, envs.single_action_space.shape
    agent = Agent(np.prod(obs_shape), np.prod(act_shape)).to(device)
    if args.ihvp_rank > sum(p.numel() for p in agent.critic.parameters()):
        sys.exit(f"error: --ihvp-rank {args.ihvp_rank} exceeds the critic's parameters")
    # two Adams: PPO's both at learning_rate, annealed; BLPO's and PPO-Nested's at learning_rate and critic_lr
    critic_rate = args.learning_rate if args.algo == "ppo" else args.critic_lr
    actor_opt = optim.Adam(agent.actor_parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    critic_opt = optim.Adam(agent.critic.parameters(), lr=critic_rate, eps=1e-5, fused=True)
    critic_fn = functional_critic(agent.critic)
    stats = HypergradStats(logstd_size=int(np.prod(act_shape)))
    gen = torch.Generator().manual_seed(args.seed)  # the controls' draws, apart from the global generator's
    normalizer = Normalizer(obs_shape, args.num_envs, args.gamma)
    low, high = envs.single_action_space.low, envs.single_action_space.high

    obs = torch.zeros((args.num_steps, args.num_envs) + obs_shape).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs) + act_shape).to(device)
    logprobs, rewards, dones, values = (torch.zeros((args.num_steps, args.num_envs)).to(device) for _ in range(4))

    global_step, start_time = 0, time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    next_obs = torch.Tensor(normalizer.obs(next_obs)).to(device)
    recent_returns = deque(maxlen=20)  # for the progress bar
    progress = tqdm(range(1, args.num_iterations + 1), unit="step", unit_scale=args.batch_size, dynamic_ncols=True)
    interrupted, broken = False, None
    try:  # Ctrl-C ends the training: the model is saved as it is and the events are closed below
        for iteration in progress:
            if args.algo == "ppo":  # their linear_schedule: constant within an iteration
                frac = 1.0 - (iteration - 1.0) / args.num_iterations
                for opt in (actor_opt, critic_opt):
                    opt.param_groups[0]["lr"] = frac * args.learning_rate

            # 1. Rollout: num_steps x num_envs transitions; actions unclipped, clipped inside the env step only
            for step in range(0, args.num_steps):
                global_step += args.num_envs
                obs[step] = next_obs
                with torch.no_grad():
                    action, logprob, _ = agent.get_action(next_obs)
                    values[step] = agent.get_value(next_obs)
                actions[step], logprobs[step] = action, logprob

                next_obs, reward, terminations, truncations, infos = envs.step(np.clip(action.cpu().numpy(), low, high))
                done = np.logical_or(terminations, truncations)
                rewards[step] = torch.as_tensor(normalizer.reward(reward, done), dtype=torch.float32, device=device)
                dones[step] = torch.as_tensor(done, dtype=torch.float32, device=device)
                next_obs = torch.Tensor(normalizer.obs(next_obs)).to(device)

                for episodic_return, episodic_length in finished_episodes(infos):
                    recent_returns.append(episodic_return)
                    writer.add_scalar("charts/episodic_return", episodic_return, global_step)
                    writer.add_scalar("charts/episodic_length", episodic_length, global_step)

            # 2. Advantages: their GAE with the rollout's critic; targets G = A + V stay fixed during the update
            with torch.no_grad():
                all_values = torch.cat([values, agent.get_value(next_obs)[None]]).T  # (num_envs, num_steps + 1)
                gae_matrix = gae_discount_matrix(dones.T, args.gamma, args.gae_lambda)
                advantages = advantages_from_values(all_values, rewards.T, dones.T, gae_matrix, args.gamma).T
                targets = advantages + values

            # 3. Update: update_epochs passes over shuffled samples (ppo) or over the envs' trajectories (blpo, nested)
            rollout = dict(obs=obs, actions=actions, logprobs=logprobs, rewards=rewards, dones=dones, targets=targets)
            samples = {k: t.flatten(0, 1) for k, t in rollout.items()} | {"advantages": advantages.flatten()}
            clipfracs = []
            for epoch in range(args.update_epochs):
                if args.algo == "ppo":
                    b_inds = np.random.permutation(args.batch_size)
                    for start in range(0, args.batch_size, args.minibatch_size):
                        mb = {k: t[b_inds[start : start + args.minibatch_size]] for k, t in samples.items()}
                        losses = update_samples(agent, actor_opt, critic_opt, mb, args)
                        clipfracs.append(losses["clipfrac"].item())
                    continue
                for env_idx in np.random.permutation(args.num_envs):  # one env's whole trajectory per minibatch
                    traj = {k: t[:, env_idx] for k, t in rollout.items()}
                    traj |= {"last_obs": next_obs[env_idx], "gae_matrix": gae_matrix[env_idx]}
                    before = {k: t.clone() for k, t in agent.state_dict().items()}
                    try:
                        losses, hypergrad = update_trajectory(agent, actor_opt, critic_opt, critic_fn, traj, args, gen)
                    except torch.linalg.LinAlgError as e:  # a singular Nystrom core
                        raise BrokenUpdate(before, f"the IHVP failed ({' '.join(str(e).split())})") from None
                    clipfracs.append(losses["clipfrac"].item())
                    if hypergrad is not None:
                        stats.add(**hypergrad)
                    if not all(torch.isfinite(p).all() for p in agent.parameters()):
                        raise BrokenUpdate(before, "the parameters turned non-finite")

            y_pred, y_true = values.flatten().cpu().numpy(), targets.flatten().cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

            # 4. Logging
            sps = int(global_step / (time.time() - start_time))
            writer.add_scalar("charts/learning_rate", actor_opt.param_groups[0]["lr"], global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            losses = {k: t.item() for k, t in losses.items()} | {"clipfrac": np.mean(clipfracs)}
            for name, value in (losses | {"explained_variance": explained_var}).items():
                writer.add_scalar(f"losses/{name}", value, global_step)
            if args.algo == "blpo":
                for name, value in stats.pop_means().items():
                    writer.add_scalar(f"hypergrad/{name}", value, global_step)
            progress.set_postfix(SPS=sps, ret=np.mean(recent_returns) if recent_returns else np.nan, refresh=False)
    except KeyboardInterrupt:
        interrupted = True
    except BrokenUpdate as e:
        broken = e.args

    model_path = f"runs/{run_name}/{args.exp_name}.pt"
    if broken is not None:  # their update has no guard: keep the model from before the update that broke
        agent.load_state_dict(broken[0])
        save_model(model_path, agent, normalizer)
        writer.add_scalar("hypergrad/nonfinite_corrections", stats.nonfinite, global_step)
        writer.close()
        envs.close()
        sys.exit(
            f"error: {broken[1]} at step {global_step} ({stats.nonfinite} non-finite corrections);"
            f" the last finite model is in {model_path}, the events in runs/{run_name}"
        )
    if args.save_model:
        save_model(model_path, agent, normalizer)
        print(f"model saved to {model_path}")
    envs.close()
    try:  # evaluate a finished run's model; Ctrl-C skips it
        if args.save_model and not interrupted:
            returns = evaluate(model_path, args.env_id, seed=args.seed, device=device)
            print(f"evaluation: mean return {np.mean(returns):.2f} over {len(returns)} episodes")
            for idx, episodic_return in enumerate(returns):
                writer.add_scalar("eval/episodic_return", episodic_return, idx)
    except KeyboardInterrupt:
        interrupted = True
    writer.close()
    if interrupted:
        total = args.num_iterations * args.batch_size
        print(f"interrupted at step {global_step} of {total}; its events are in runs/{run_name}", file=sys.stderr)
        sys.exit(130)
