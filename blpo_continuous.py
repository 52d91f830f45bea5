# BLPO (Bi-Level Policy Optimization with Nystrom hypergradients, arXiv:2505.11714) for continuous actions.
# PPO's actor-critic as a Stackelberg game: the critic (follower) takes K steps toward its best response on each
# minibatch, and the actor (leader) follows the hypergradient through that response. With --nested-updates 1
# --no-hypergrad every update is ppo_continuous.py's, number for number.
# Needs gymnasium >= 1.1 and torch >= 2.4: pip install -r requirements.txt
import math
import os
import random
import sys
import time
import warnings
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Annotated, Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import tyro
from torch.torch_version import TorchVersion
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
    env_id: str = "HalfCheetah-v4"  # the id of the environment
    total_timesteps: int = 1000000  # total timesteps of the experiments, rounded down to whole iterations
    learning_rate: Annotated[float, tyro.conf.arg(aliases=["--actor-lr"])] = 3e-4  # the actor's learning rate
    critic_lr: float = 3e-4  # the learning rate of the critic's parameters
    num_envs: int = 1  # the number of parallel game environments
    num_steps: int = 2048  # the number of steps to run in each environment per policy rollout
    anneal_lr: bool = True  # Toggle learning rate annealing for policy and value networks
    gamma: float = 0.99  # the discount factor gamma
    gae_lambda: float = 0.95  # the lambda for the general advantage estimation
    num_minibatches: int = 32  # the number of mini-batches
    update_epochs: int = 10  # the number of epochs over the batch per update
    norm_adv: bool = True  # Toggles advantages normalization
    clip_coef: float = 0.2  # the surrogate clipping coefficient
    clip_vloss: bool = True  # Toggles whether or not to use a clipped loss for the value function, as per the paper.
    ent_coef: float = 0.0  # coefficient of the entropy
    vf_coef: float = 0.5  # coefficient of the value function
    max_grad_norm: float = 0.5  # the maximum norm for the gradient clipping
    target_kl: float | None = None  # the target KL divergence threshold

    # BLPO specific arguments
    nested_updates: int = 3  # K: critic steps per minibatch, K - 1 alone, the last with the actor's (1 is PPO)
    hypergrad: bool = True  # follow the hypergradient h = g - c; --no-hypergrad follows the direct gradient g
    # x = (H + rho I)^-1 v by CG, the paper's Nystrom, a dense solve, or H's Gauss-Newton part (every solver's fallback)
    ihvp: Literal["cg", "nystrom", "exact", "gauss-newton"] = "cg"
    ihvp_rank: int = 5  # k: the solver's Hessian-vector products (CG iterations, or Nystrom's sampled rows)
    ihvp_rho: float = 50.0  # rho: regularizer of the inverse Hessian
    hypergrad_bound: float = 1.4  # beta: the correction's norm is capped at beta times the direct gradient's
    ihvp_check_every: int = 0  # every N-th update, log c's error against the exact IHVP's (0: off)

    # to be filled in runtime
    batch_size: int = field(default=0, init=False)  # the batch size (computed in runtime)
    minibatch_size: int = field(default=0, init=False)  # the mini-batch size (computed in runtime)
    num_iterations: int = field(default=0, init=False)  # the number of iterations (computed in runtime)


def make_env(env_id, idx, capture_video, run_name, gamma):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        if not isinstance(env.action_space, gym.spaces.Box):
            raise ValueError(f"{env_id} has {type(env.action_space).__name__} actions, not Box: use blpo_discrete.py")
        env = gym.wrappers.FlattenObservation(env)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = gym.wrappers.ClipAction(env)
        env = gym.wrappers.NormalizeObservation(env)
        env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), env.observation_space)
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        env = gym.wrappers.TransformReward(env, lambda reward: np.clip(reward, -10, 10))
        return env

    return thunk


def make_envs(env_id, num_envs, capture_video, run_name, gamma):
    """The vector env, with same-step autoreset and one set of normalization statistics, env 0's, that every env
    updates in turn; ValueError for an env id that cannot be made or does not fit, RuntimeError if video cannot work."""
    try:
        if capture_video:
            check_rendering(env_id)
        envs = gym.vector.SyncVectorEnv(
            [make_env(env_id, i, capture_video, run_name, gamma) for i in range(num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
    except gym.error.Error as e:
        raise ValueError(f"cannot make {env_id!r}: {e}") from None
    for env in envs.envs[1:]:  # each env keeps its own discounted return, not its own statistics
        for name in ("obs_rms", "return_rms"):
            env.set_wrapper_attr(name, envs.envs[0].get_wrapper_attr(name))
    return envs


def finished_episodes(infos):
    """(return, length) of every episode that ended in this vector step."""
    final = infos.get("final_info", {})
    if "episode" not in final:
        return []
    mask = final["_episode"]
    return [(float(r), int(l)) for r, l in zip(final["episode"]["r"][mask], final["episode"]["l"][mask])]


def gaussian_log_prob(action, mean, logstd):
    """log N(action; mean, exp(logstd)^2), summed over the action dimensions."""
    return (-0.5 * ((action - mean) / logstd.exp()) ** 2 - logstd - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(logstd):
    """Entropy of N(mean, exp(logstd)^2), summed over the action dimensions."""
    return (0.5 + 0.5 * math.log(2 * math.pi) + logstd).sum(-1)


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
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
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

    def get_value(self, x):
        return self.critic(x).squeeze(-1)

    def get_action_and_value(self, x, action=None):
        mean = self.actor_mean(x)
        logstd = self.actor_logstd.expand_as(mean)
        if action is None:
            action = mean + logstd.exp() * torch.randn_like(mean)
        return action, gaussian_log_prob(action, mean, logstd), gaussian_entropy(logstd), self.get_value(x)

    def actor_parameters(self):
        return [*self.actor_mean.parameters(), self.actor_logstd]


def compute_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """Generalized advantage estimation over a (num_steps, num_envs) rollout; dones[t] marks obs[t] as the first
    observation of an episode. Returns (advantages, returns = advantages + values)."""
    r, v, d, next_value, next_done = (x.cpu().numpy() for x in (rewards, values, dones, next_value, next_done))
    num_steps = r.shape[0]
    advantages = np.zeros_like(r)
    lastgaelam = 0
    for t in reversed(range(num_steps)):
        nextnonterminal = 1.0 - (next_done if t == num_steps - 1 else d[t + 1])
        nextvalues = next_value if t == num_steps - 1 else v[t + 1]
        delta = r[t] + gamma * nextvalues * nextnonterminal - v[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    advantages = torch.as_tensor(advantages, device=values.device)
    return advantages, advantages + values


class Batch(NamedTuple):
    """A rollout flattened step-major: sample i is step i // num_envs of env i % num_envs; A(w)'s fields unflattened."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor
    states: torch.Tensor  # (num_steps + 1, num_envs, ...): the observations and the bootstrap observations
    rewards: torch.Tensor
    dones: torch.Tensor
    next_done: torch.Tensor
    gae_matrix: torch.Tensor | None  # gae_discount_matrix, built when the hypergradient is on


def clipped_surrogate(ratio, advantages, clip_coef):
    """PPO's policy loss: mean of -min(r A, clip(r, 1 - eps, 1 + eps) A)."""
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    return torch.max(pg_loss1, pg_loss2).mean()


def value_loss(newvalue, old_values, returns, clip_coef, clip_vloss):
    """PPO's value loss: 0.5 mean (V - G)^2, with V clipped to old_values +- clip_coef if clip_vloss (elementwise
    the larger of the clipped and unclipped squares)."""
    v_loss_unclipped = (newvalue - returns) ** 2
    if not clip_vloss:
        return 0.5 * v_loss_unclipped.mean()
    v_clipped = old_values + torch.clamp(newvalue - old_values, -clip_coef, clip_coef)
    v_loss_clipped = (v_clipped - returns) ** 2
    return 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()


# BLPO's pieces, in the order of the update: the critic as a function of its flat weights w, A(w) for v = grad_w l,
# Hessian-vector products of the critic's loss L, the solvers of x = (H + rho I)^-1 v, the mixed term, the size rule


def flat(tensors):
    """The tensors as one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def critic_layers(critic, w):
    """The Sequential of Linear and Tanh layers `critic` with its parameters taken from one flat vector w: a list with
    (weight, bias) for each Linear and None for each Tanh; TypeError for any other layer or a Linear without bias."""
    if not all(isinstance(m, nn.Tanh) or isinstance(m, nn.Linear) and m.bias is not None for m in critic):
        raise TypeError(f"the functional critic runs Linear and Tanh layers only, with biases, not {critic}")
    linears = [layer for layer in critic if isinstance(layer, nn.Linear)]
    chunks = w.split([n for layer in linears for n in (layer.out_features * layer.in_features, layer.out_features)])
    params = iter([(weight.view(len(bias), -1), bias) for weight, bias in zip(chunks[::2], chunks[1::2])])
    return [next(params) if isinstance(layer, nn.Linear) else None for layer in critic]


def critic_forward(layers, obs):
    """hs with hs[l] the input of layer l and hs[-1] the critic's output, (B, 1)."""
    hs = [obs]
    for wb in layers:
        hs.append(torch.tanh(hs[-1]) if wb is None else F.linear(hs[-1], *wb))
    return hs


def tanh_slopes(layers, hs):
    """slopes[l] = 1 - hs[l + 1]^2, tanh's derivative, for each Tanh layer l; None for each Linear."""
    return [1 - hs[l + 1] ** 2 if wb is None else None for l, wb in enumerate(layers)]


def critic_tangents(layers, hs, slopes, tangents):
    """rs with rs[l] the derivative of hs[l] along a direction u of the weights, tangents = critic_layers(critic, u):
    d(W h + b) = dW h + db + W dh and d tanh(z) = (1 - tanh(z)^2) dz, carried forward layer by layer."""
    rs = [torch.zeros_like(hs[0])]
    for l, wb in enumerate(layers):
        rs.append(slopes[l] * rs[l] if wb is None else F.linear(hs[l], *tangents[l]) + F.linear(rs[l], wb[0]))
    return rs


def functional_critic(critic):
    """critic_fn(w, obs) = V_w(obs), the critic with flat weights w; critic_fn(w, obs, u) = (V_w(obs), grad_w V . u)."""
    critic_layers(critic, flat(critic.parameters()))  # TypeError now for a layer it cannot run

    def critic_fn(w, obs, u=None):
        layers = critic_layers(critic, w)
        hs = critic_forward(layers, obs)
        if u is None:
            return hs[-1].squeeze(-1)
        rs = critic_tangents(layers, hs, tanh_slopes(layers, hs), critic_layers(critic, u))
        return hs[-1].squeeze(-1), rs[-1].squeeze(-1)

    return critic_fn


def gae_discount_matrix(dones, next_done, gamma, gae_lambda):
    """D (num_envs, num_steps, num_steps) with advantages[t, e] = sum_s D[e, t, s] delta[s, e]: D[e, t, s] =
    (gamma lambda)^(s - t) when s >= t and steps t..s of env e lie in one episode, else 0."""
    episode = torch.cumsum(dones, 0).T  # (num_envs, num_steps): episode counter, bumped where obs[t] starts one
    t = torch.arange(dones.shape[0], device=dones.device)
    lag = (t[None, :] - t[:, None]).to(dones.dtype)  # lag[t, s] = s - t
    same_episode = episode[:, :, None] == episode[:, None, :]
    return torch.where(same_episode & (lag >= 0), (gamma * gae_lambda) ** lag.clamp(min=0), 0.0).contiguous()


def td_errors(values, rewards, dones, next_done, gamma):
    """delta[t] = r[t] + gamma (1 - dones[t + 1]) V(obs[t + 1]) - V(obs[t]), differentiable in the values at the
    num_steps + 1 states (the last the bootstrap)."""
    next_nonterminal = 1.0 - torch.cat([dones[1:], next_done[None]])
    return rewards + gamma * next_nonterminal * values[1:] - values[:-1]


def critic_advantages(values, batch, mb_inds, gamma):
    """A(w) at the samples mb_inds: the GAE rows D[e_i, t_i, :] times env e_i's TD errors delta(w), where `values`
    (num_steps + 1, num_envs) are V_w at batch.states."""
    num_envs, num_steps = batch.gae_matrix.shape[:2]
    mb_inds = torch.as_tensor(mb_inds, device=values.device)
    mb_envs = mb_inds % num_envs
    rows = batch.gae_matrix.reshape(-1, num_steps).index_select(0, mb_envs * num_steps + mb_inds // num_envs)
    deltas = td_errors(values, batch.rewards, batch.dones, batch.next_done, gamma)
    return (rows * deltas.T.index_select(0, mb_envs)).sum(-1)


def anchored_advantages(rollout_advantages, advantages_w):
    """The rollout's advantages as values, A(w)'s as the dependence on w: A_rollout + A(w) - A(w_t), held at w_t."""
    return rollout_advantages + (advantages_w - advantages_w.detach())


def squared_error_hvp(critic, w, obs, targets):
    """u -> H u, H the Hessian of L(w) = mean (V_w(obs) - targets)^2 at w, by Pearlmutter's R-operator: the derivatives
    along u of the forward pass h and the backward pass delta = dL/dh, in closed form; u is (d,) or a batch (k, d)."""
    layers = critic_layers(critic, w.detach())
    hs = critic_forward(layers, obs)  # hs[l] is layer l's input, hs[l + 1] its output
    slopes = tanh_slopes(layers, hs)
    deltas = [2 * (hs[-1] - targets[:, None]) / len(obs)]  # deltas[l] = dL/dhs[l + 1], from the last layer back
    for l in reversed(range(1, len(layers))):
        deltas.insert(0, deltas[0] * slopes[l] if layers[l] is None else deltas[0] @ layers[l][0])
    # R{delta (1 - y^2)} = R{delta} (1 - y^2) - 2 delta y R{y} at each Tanh's output y: its u-free factors, once
    curvatures = [2 * deltas[l] * hs[l + 1] if wb is None else None for l, wb in enumerate(layers)]

    def hvp_one(u):
        tangents = critic_layers(critic, u)
        r = critic_tangents(layers, hs, slopes, tangents)  # r[l] = R{hs[l]}, hs[l]'s derivative along u
        products, r_delta = [], 2 * r[-1] / len(obs)  # r_delta = R{delta}, from the critic's output back
        for l in reversed(range(len(layers))):
            if layers[l] is None:  # delta_in = delta (1 - y^2), y = tanh's output
                r_delta = r_delta * slopes[l] - curvatures[l] * r[l + 1]
            else:  # dL/dW = delta^T h, dL/db = sum delta, delta_in = delta W; at l = 0, R{h} = 0 and delta_in unused
                products[:0] = [r_delta.T @ hs[l] + deltas[l].T @ r[l] if l else r_delta.T @ hs[l], r_delta.sum(0)]
                r_delta = r_delta @ layers[l][0] + deltas[l] @ tangents[l][0] if l else None
        return torch.cat([t.reshape(-1) for t in products])

    return lambda u: torch.vmap(hvp_one)(u) if u.dim() == 2 else hvp_one(u)


def hessian_rows(hvp, coords, dim):
    """H[coords, :]: H is symmetric, so row j is H e_j; one batched product with the unit vectors."""
    return hvp(torch.zeros(len(coords), dim, device=coords.device).scatter_(1, coords[:, None], 1.0))


def cg_ihvp(hvp, v, rho, iterations, tol=0.0):
    """At most `iterations` CG steps from x = 0, until ||r|| <= tol ||v||; NaN if H + rho I has curvature <= 0."""
    x, r, d = torch.zeros_like(v), v.clone(), v.clone()
    rs, stop = r @ r, (tol * v.norm()) ** 2
    for _ in range(iterations):
        if rs <= stop:
            break
        Ad = hvp(d) + rho * d
        curvature = d @ Ad
        if not curvature > 0:
            return torch.full_like(v, float("nan"))
        alpha = rs / curvature
        x, r = x + alpha * d, r - alpha * Ad
        rs_old, rs = rs, r @ r
        d = r + (rs / rs_old) * d
    return x


def nystrom_ihvp(rows, coords, v, rho):
    """The paper's Nystrom, H_nys = C^T M^-1 C for C = H[S, :] at k coordinates S and M = C[:, S], by Woodbury:
    x = v / rho - C^T (rho M + C C^T)^-1 C v / rho. NaN where rho M + C C^T is singular (a zero Hessian row)."""
    inner = rho * rows[:, coords] + rows @ rows.T
    solution, info = torch.linalg.solve_ex(inner, rows @ v)
    if info.item() != 0:
        return torch.full_like(v, float("nan"))
    return (v - rows.T @ solution) / rho


def exact_ihvp(hvp, v, rho, max_dense_dim=8192):
    """A dense solve in float64 with H from d Hessian-vector products; above max_dense_dim, CG to 1e-10."""
    dim = v.numel()
    if dim > max_dense_dim:
        return cg_ihvp(hvp, v, rho, iterations=10 * dim, tol=1e-10)
    h = torch.cat([hvp(rows) for rows in torch.eye(dim, device=v.device).split(512)]).double()
    regularized = (h + h.T) / 2 + rho * torch.eye(dim, dtype=h.dtype, device=v.device)
    return torch.linalg.solve(regularized, v.double()).to(v.dtype)


def critic_jacobian(critic_fn, w, obs):
    """J = dV_w(obs) / dw, (B, d): the critic's Jacobian at the minibatch's B states."""
    return torch.func.jacrev(lambda w_: critic_fn(w_, obs))(w.detach())


def gauss_newton_hvp(jac):
    """u -> G u for the Gauss-Newton part G = (2/B) J^T J of H, u one vector (d,) or a batch (k, d)."""
    return lambda u: (2 / jac.shape[0]) * (u @ jac.T) @ jac


def gauss_newton_ihvp(jac, v, rho):
    """x = (G + rho I)^-1 v exactly, G = (2/B) J^T J the Gauss-Newton part of H: H adds (2/B) sum_i (V(s_i) - G_i)
    d^2 V(s_i) / dw^2, the only source of negative eigenvalues, so G + rho I >= rho I. Woodbury on G's rank B, in
    float64: x = (v - J^T (rho B / 2 I + J J^T)^-1 J v) / rho."""
    j, v64 = jac.double(), v.double()
    inner = (rho * j.shape[0] / 2) * torch.eye(j.shape[0], dtype=j.dtype, device=j.device) + j @ j.T
    return ((v64 - j.T @ torch.linalg.solve(inner, j @ v64)) / rho).to(v.dtype)


def solve_ihvp(hvp, v, args, generator):
    """x with the chosen solver and k = ihvp_rank; Nystrom's k coordinates are fresh from `generator`."""
    if args.ihvp == "cg":
        return cg_ihvp(hvp, v, args.ihvp_rho, args.ihvp_rank)
    if args.ihvp == "nystrom":
        coords = torch.randperm(v.numel(), generator=generator)[: args.ihvp_rank].to(v.device)
        return nystrom_ihvp(hessian_rows(hvp, coords, v.numel()), coords, v, args.ihvp_rho)
    return exact_ihvp(hvp, v, args.ihvp_rho)


def mixed_term(x, ratio, critic_fn, w, mb_obs, mb_returns, actor_params):
    """c = (d^2 L / d theta d w) x for L = mean (V_w(s) - G)^2, by the score function: c = grad_theta[-2 mean_i
    r_i(theta) delta_i u_i], with u_i = grad_w V(s_i) . x (one critic JVP) and delta_i = G_i - V(s_i) held constant."""
    values, u = critic_fn(w.detach(), mb_obs, x)
    surrogate = -2.0 * (ratio * ((mb_returns - values) * u).detach()).mean()
    return flat(torch.autograd.grad(surrogate, actor_params, retain_graph=True))


def bounded_hypergradient(g, c, bound):
    """(h, scale): h = g - scale c with scale = min(1, bound ||g|| / ||c||); (g, NaN) for a non-finite c."""
    if not torch.isfinite(c).all():
        return g, math.nan
    c_norm, limit = c.norm(), bound * g.norm()
    if c_norm > limit:
        return g - c * (limit / c_norm), (limit / c_norm).item()
    return g - c, 1.0


def cosine(a, b):
    """cos(a, b) in float64, exact for vectors of any size; 0 if either is zero."""
    norms = a.double().norm() * b.double().norm()
    return (a.double() @ b.double() / norms).item() if norms > 0 else 0.0


class HypergradStats:
    """Diagnostics: means since the last `pop_means`, and the run's counts of updates and of both fallbacks."""

    def __init__(self):
        self.updates, self.gauss_newton, self.fallbacks, self.values = 0, 0, 0, defaultdict(list)

    def check_due(self, every):
        """Whether the next update is one of every `every`-th (0: none), whose c is checked against the exact IHVP's."""
        return bool(every) and (self.updates + 1) % every == 0

    def add(self, g, c, scale, gauss_newton=False, c_exact=None):
        """One update: g, c before the bound, its scale (NaN: h = g), a solver's fall to Gauss-Newton, c* if checked."""
        self.updates += 1
        self.gauss_newton += gauss_newton
        if math.isnan(scale):
            self.fallbacks += 1
            return
        g_norm, c_norm = g.norm().item(), c.norm().item()
        values = dict(direct_grad_norm=g_norm, correction_norm=c_norm, correction_ratio=c_norm / max(g_norm, 1e-12))
        values |= dict(cos_correction_direct=cosine(c, g), bound_active_frac=float(scale < 1))
        if c_exact is not None:
            error = (c - c_exact).norm() / max(c_exact.norm(), 1e-12)
            values |= dict(ihvp_error=error.item(), ihvp_cos=cosine(c, c_exact))
        for name, value in values.items():
            self.values[name].append(value)

    def pop_means(self):
        means = {name: sum(values) / len(values) for name, values in self.values.items()}
        self.values.clear()
        return means | {"nonfinite_fallbacks": self.fallbacks, "gauss_newton_fallbacks": self.gauss_newton}


def update_minibatch(agent, optimizer, critic_fn, batch, mb_inds, args, generator, check=False):
    """One bilevel update on mb_inds: K - 1 critic steps alone, then PPO's step with the actor's hypergradient.
    Returns the losses and HypergradStats.add's arguments (with c* from the exact IHVP if `check`), or None."""
    mb_obs, mb_returns, mb_values = batch.obs[mb_inds], batch.returns[mb_inds], batch.values[mb_inds]
    # 3a. Nested critic: K - 1 optimizer steps on PPO's value loss alone, toward the best response w*(theta)
    for _ in range(args.nested_updates - 1):
        v_loss = value_loss(agent.get_value(mb_obs), mb_values, mb_returns, args.clip_coef, args.clip_vloss)
        optimizer.zero_grad()
        (v_loss * args.vf_coef).backward()
        nn.utils.clip_grad_norm_(agent.critic.parameters(), args.max_grad_norm)
        optimizer.step()

    # 3b. g = grad_theta l and v = grad_w l of PPO's loss l at (theta, w); for v the advantages carry A(w)'s
    # dependence on the critic's weights w, with the rollout's values: A_rollout + A(w) - A(w_t)
    _, newlogprob, entropy, newvalue = agent.get_action_and_value(mb_obs, batch.actions[mb_inds])
    logratio = newlogprob - batch.logprobs[mb_inds]
    ratio = logratio.exp()

    with torch.no_grad():
        # calculate approx_kl http://joschu.net/blog/kl-approx.html
        old_approx_kl = (-logratio).mean()
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()

    mb_advantages = batch.advantages[mb_inds]
    if args.hypergrad:
        w = flat(agent.critic.parameters()).detach().requires_grad_()
        all_values = critic_fn(w, batch.states.flatten(0, 1)).view(batch.states.shape[:2])
        mb_advantages = anchored_advantages(mb_advantages, critic_advantages(all_values, batch, mb_inds, args.gamma))
    if args.norm_adv:
        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

    pg_loss = clipped_surrogate(ratio, mb_advantages, args.clip_coef)
    v_loss = value_loss(newvalue, mb_values, mb_returns, args.clip_coef, args.clip_vloss)
    entropy_loss = entropy.mean()
    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

    optimizer.zero_grad()
    loss.backward(retain_graph=args.hypergrad)
    if args.hypergrad:
        actor_params = agent.actor_parameters()
        g, v = flat(p.grad for p in actor_params), w.grad

        # 3c. IHVP: x ~ (H + rho I)^-1 v, H the Hessian of the critic's loss L(w) = mean (V_w(s) - G)^2
        x = hvp = None
        if args.ihvp != "gauss-newton":
            hvp = squared_error_hvp(agent.critic, w, mb_obs, mb_returns)
            x = solve_ihvp(hvp, v, args, generator)
        gauss_newton = x is None or not torch.isfinite(x).all()  # chosen, or CG met H + rho I indefinite
        if gauss_newton:  # x = (G + rho I)^-1 v, G the Gauss-Newton part of H
            jacobian = critic_jacobian(critic_fn, w, mb_obs)
            x = gauss_newton_ihvp(jacobian, v, args.ihvp_rho)
        x_exact = exact_ihvp(gauss_newton_hvp(jacobian) if gauss_newton else hvp, v, args.ihvp_rho) if check else None

        # 3d. Mixed term: c = (d^2 L / d theta d w) x, and when checked c* from the exact x of the same system
        c = mixed_term(x, ratio, critic_fn, w, mb_obs, mb_returns, actor_params)
        c_exact = mixed_term(x_exact, ratio, critic_fn, w, mb_obs, mb_returns, actor_params) if check else None

        # 3e. Bound: h = g - c with ||c|| capped at beta ||g||; a non-finite c falls back to h = g
        h, scale = bounded_hypergradient(g, c, args.hypergrad_bound)
        for p, grad in zip(actor_params, h.split([p.numel() for p in actor_params])):
            p.grad = grad.view_as(p).clone()
        hypergrad = dict(g=g, c=c, scale=scale, c_exact=c_exact, gauss_newton=gauss_newton and hvp is not None)

    # 3f. Step: both networks, as PPO's (the critic's K-th, the actor's first): clip the joint norm, then Adam
    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    losses = dict(value_loss=v_loss, policy_loss=pg_loss, entropy=entropy_loss)
    losses |= dict(old_approx_kl=old_approx_kl, approx_kl=approx_kl, clipfrac=clipfrac)
    return {name: t.item() for name, t in losses.items()}, hypergrad if args.hypergrad else None


def check_args(args: Args) -> None:
    """ValueError naming the first setting that cannot run, or the package that is too old."""
    versions = [(m.__name__, m.__version__, need) for m, need in ((gym, "1.1"), (torch, "2.4"))]
    too_old = [f"{name} {v} is too old (< {need})" for name, v, need in versions if TorchVersion(v) < need]
    batch_size = args.num_envs * args.num_steps
    counts = ["num_envs", "num_steps", "num_minibatches", "update_epochs", "total_timesteps"]
    counts += ["nested_updates", "ihvp_rank"]
    for bad, message in [
        (too_old, "; ".join(too_old) + ": pip install -r requirements.txt"),
        *[(getattr(args, n) < 1, f"--{n.replace('_', '-')} {getattr(args, n)} is less than 1") for n in counts],
        ("/" in args.exp_name, f"--exp-name {args.exp_name!r} contains '/', but it names the run directory"),
        (batch_size % max(args.num_minibatches, 1), f"--num-minibatches does not divide the {batch_size} steps"),
        (args.total_timesteps < batch_size, f"--total-timesteps is less than one batch ({batch_size} steps)"),
        (not args.ihvp_rho > 0, f"--ihvp-rho must be positive, got {args.ihvp_rho}"),
        (not args.hypergrad_bound >= 0, f"--hypergrad-bound must be non-negative, got {args.hypergrad_bound}"),
        (args.ihvp_check_every < 0, f"--ihvp-check-every must be 0 (off) or positive, got {args.ihvp_check_every}"),
    ]:
        if bad:
            raise ValueError(message)


def route_mujoco_warnings() -> None:
    """MuJoCo's warnings through Python's filters, not into MUJOCO_LOG.TXT; RuntimeError if MuJoCo cannot load."""
    try:
        import mujoco  # loads the OpenGL library MUJOCO_GL names
    except Exception as e:
        raise RuntimeError(f"MuJoCo cannot load with MUJOCO_GL={os.environ['MUJOCO_GL']} (try egl): {e!r}") from e
    mujoco.set_mju_user_warning(lambda message: warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2))


def check_rendering(env_id):
    """Render a frame of a throwaway `env_id` before training; RuntimeError with the renderer's complaints."""
    with warnings.catch_warnings(record=True) as caught, gym.make(env_id, render_mode="rgb_array") as env:
        try:
            env.reset(seed=0)
            env.render()
        except Exception as e:
            complaints = [str(w.message) for w in caught if w.category is not DeprecationWarning] + [repr(e)]
            where = f"cannot render {env_id!r} for --capture-video with MUJOCO_GL={os.environ.get('MUJOCO_GL')}"
            raise RuntimeError(f"{where}: {'; '.join(dict.fromkeys(complaints))}") from e


def save_model(path, agent, envs):
    """Weights plus the observation normalization statistics the policy was trained with."""
    torch.save({"agent": agent.state_dict(), "obs_rms": vars(envs.envs[0].get_wrapper_attr("obs_rms"))}, path)


def evaluate(model_path, env_id, eval_episodes=10, seed=1, gamma=0.99, deterministic=True, device="cpu"):
    """The undiscounted returns of `eval_episodes` episodes of a saved policy, with its observation statistics
    frozen. ValueError for an env id that cannot be made or a checkpoint that does not fit this script's agent."""
    envs, script = make_envs(env_id, 1, False, "eval", gamma), os.path.basename(__file__)
    try:
        agent = Agent(np.prod(envs.single_observation_space.shape), np.prod(envs.single_action_space.shape)).to(device)
        checkpoint = torch.load(model_path, map_location=device, weights_only=False)
        if not isinstance(checkpoint, dict) or not {"agent", "obs_rms"} <= checkpoint.keys():
            raise ValueError(f"{model_path} is not a checkpoint of {script}'s --save-model")
        try:
            agent.load_state_dict(checkpoint["agent"])
        except RuntimeError as e:  # PyTorch's message names every tensor that is missing, unexpected or resized
            reason = " ".join(str(e).split())
            raise ValueError(f"{model_path} does not fit {script}'s agent on {env_id}: {reason}") from None
        normalizer = envs.envs[0]
        while not isinstance(normalizer, gym.wrappers.NormalizeObservation):
            normalizer = normalizer.env
        normalizer.update_running_mean = False  # the statistics the policy was trained with, frozen
        vars(normalizer.obs_rms).update(checkpoint["obs_rms"])
        obs, _ = envs.reset(seed=seed)
        episodic_returns = []
        while len(episodic_returns) < eval_episodes:
            with torch.no_grad():
                x = torch.as_tensor(obs, dtype=torch.float32, device=device)
                actions = agent.actor_mean(x) if deterministic else agent.get_action_and_value(x)[0]
            obs, _, _, _, infos = envs.step(actions.cpu().numpy())
            episodic_returns += [r for r, _ in finished_episodes(infos)]
    finally:
        envs.close()
    return episodic_returns[:eval_episodes]


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo's renderer for --capture-video, which needs no display
    args = tyro.cli(Args)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    try:  # every check before the first step: one `error:` line, no traceback
        check_args(args)
        route_mujoco_warnings()
        envs = make_envs(args.env_id, args.num_envs, args.capture_video, run_name, args.gamma)
        os.makedirs(f"runs/{run_name}", exist_ok=True)  # now, so that saving the model cannot fail after training
    except OSError as e:
        sys.exit(f"error: cannot create {e.filename}: {e.strerror}")
    except (ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
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

    agent = Agent(np.prod(envs.single_observation_space.shape), np.prod(envs.single_action_space.shape)).to(device)
    # one Adam for both networks, as PPO's, with a learning rate each
    param_groups = [{"params": agent.actor_parameters(), "lr": args.learning_rate}]
    param_groups.append({"params": list(agent.critic.parameters()), "lr": args.critic_lr})
    optimizer = optim.Adam(param_groups, eps=1e-5, fused=True)
    critic_fn = functional_critic(agent.critic)
    if args.ihvp_rank > (num_critic_params := sum(p.numel() for p in agent.critic.parameters())):
        sys.exit(f"error: --ihvp-rank {args.ihvp_rank} exceeds the critic's {num_critic_params} parameters")
    generator = torch.Generator().manual_seed(args.seed)  # Nystrom's coordinates, fresh per call
    stats = HypergradStats()

    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape).to(device)
    logprobs, rewards, dones, values = (torch.zeros((args.num_steps, args.num_envs)).to(device) for _ in range(4))

    global_step, start_time = 0, time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    next_obs = torch.Tensor(next_obs).to(device)
    next_done = torch.zeros(args.num_envs).to(device)
    recent_returns = deque(maxlen=20)  # for the progress bar
    progress = tqdm(range(1, args.num_iterations + 1), unit="step", unit_scale=args.batch_size, dynamic_ncols=True)
    interrupted = False
    try:  # Ctrl-C ends the training: the model is saved as it is and the events are closed below
        for iteration in progress:
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / args.num_iterations
                optimizer.param_groups[0]["lr"] = frac * args.learning_rate
                optimizer.param_groups[1]["lr"] = frac * args.critic_lr

            # 1. Rollout: num_steps x num_envs transitions with the current policy
            for step in range(0, args.num_steps):
                global_step += args.num_envs
                obs[step] = next_obs
                dones[step] = next_done

                with torch.inference_mode():
                    action, logprob, _, value = agent.get_action_and_value(next_obs)
                    values[step] = value
                actions[step] = action
                logprobs[step] = logprob

                next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
                next_done = np.logical_or(terminations, truncations)
                rewards[step] = torch.as_tensor(reward, dtype=torch.float32, device=device)
                next_obs = torch.Tensor(next_obs).to(device)
                next_done = torch.Tensor(next_done).to(device)

                for episodic_return, episodic_length in finished_episodes(infos):
                    recent_returns.append(episodic_return)
                    writer.add_scalar("charts/episodic_return", episodic_return, global_step)
                    writer.add_scalar("charts/episodic_length", episodic_length, global_step)

            # 2. Advantages: GAE(gamma, lambda) with the rollout's values, bootstrapped from the last observation
            with torch.no_grad():
                next_value = agent.get_value(next_obs)
            advantages, returns = compute_gae(
                rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda
            )

            # flatten the batch; A(w) also needs the rollout's shape, its bootstrap states and its GAE matrix
            flat_rollout = [t.flatten(0, 1) for t in (obs, actions, logprobs, advantages, returns, values)]
            gae_matrix = gae_discount_matrix(dones, next_done, args.gamma, args.gae_lambda) if args.hypergrad else None
            batch = Batch(*flat_rollout, torch.cat([obs, next_obs[None]]), rewards, dones, next_done, gae_matrix)

            # 3. Update: update_epochs passes over random minibatches, each a bilevel step (critic K times, actor once)
            b_inds = np.arange(args.batch_size)
            clipfracs = []
            for epoch in range(args.update_epochs):
                np.random.shuffle(b_inds)
                for start in range(0, args.batch_size, args.minibatch_size):
                    mb_inds = b_inds[start : start + args.minibatch_size]
                    check = stats.check_due(args.ihvp_check_every)
                    losses, diag = update_minibatch(agent, optimizer, critic_fn, batch, mb_inds, args, generator, check)
                    clipfracs.append(losses["clipfrac"])
                    if diag:
                        stats.add(**diag)

                if args.target_kl is not None and losses["approx_kl"] > args.target_kl:
                    break

            y_pred, y_true = batch.values.cpu().numpy(), batch.returns.cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

            # 4. Logging
            sps = int(global_step / (time.time() - start_time))
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            losses |= {"clipfrac": np.mean(clipfracs), "explained_variance": explained_var}
            for name, value in losses.items():
                writer.add_scalar(f"losses/{name}", value, global_step)
            for name, value in (stats.pop_means() if args.hypergrad else {}).items():
                writer.add_scalar(f"hypergrad/{name}", value, global_step)
            progress.set_postfix(SPS=sps, ret=np.mean(recent_returns) if recent_returns else np.nan, refresh=False)
    except KeyboardInterrupt:
        interrupted = True

    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        save_model(model_path, agent, envs)
        print(f"model saved to {model_path}")
    envs.close()
    try:  # evaluate a finished run's model; Ctrl-C skips it
        if args.save_model and not interrupted:
            returns = evaluate(model_path, args.env_id, seed=args.seed, gamma=args.gamma, device=device)
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
