# BLPO (Bi-Level Policy Optimization with Nystrom hypergradients, arXiv:2505.11714) for continuous actions.
# PPO's actor-critic as a Stackelberg game: the critic (follower) takes K steps toward its best response on
# each minibatch, and the actor (leader) follows the hypergradient through that response. With
# --nested-updates 1 --no-hypergrad every update is ppo_continuous.py's, number for number.
# Requires Python >= 3.10, gymnasium >= 1.1 (gym.vector.AutoresetMode) and torch >= 2.4 (Adam's fused CPU kernel);
# requirements.txt pins the tested versions, with the extras --capture-video needs (moviepy, pygame-ce).
import math
import os
import random
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

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
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "blpo"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to capture videos of the agent performances (check out `videos` folder)"""
    save_model: bool = False
    """whether to save the model into the `runs/{run_name}` folder"""

    # Algorithm specific arguments
    env_id: str = "HalfCheetah-v4"
    """the id of the environment"""
    total_timesteps: int = 1000000
    """total timesteps of the experiments, rounded down to whole iterations of num_envs * num_steps (the bar shows
    the steps that run)"""
    actor_lr: float = 3e-4
    """the learning rate of the actor's parameters"""
    critic_lr: float = 3e-4
    """the learning rate of the critic's parameters"""
    num_envs: int = 1
    """the number of parallel game environments"""
    num_steps: int = 2048
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """Toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 32
    """the number of mini-batches"""
    update_epochs: int = 10
    """the number of epochs over the batch per update"""
    norm_adv: bool = True
    """Toggles advantages normalization"""
    norm_adv_stats: Literal["minibatch", "rollout"] = "minibatch"
    """normalize the advantages with each minibatch's own mean and std (PPO), or with the whole rollout's"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """Toggles whether or not to use a clipped loss for the value function, as per the paper."""
    ent_coef: float = 0.0
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: float | None = None
    """the target KL divergence threshold"""

    # BLPO specific arguments
    nested_updates: int = 3
    """K: critic optimizer steps per minibatch, K - 1 alone and the last one with the actor's step (1 is PPO)"""
    hypergrad: bool = True
    """follow the hypergradient h = g - c; --no-hypergrad follows the direct gradient g"""
    ihvp: Literal["cg", "nystrom", "nystrom-paper", "exact"] = "cg"
    """solver of x = (H + rho I)^-1 v: conjugate gradient, stabilized Gaussian-sketch Nystrom, the paper's
    coordinate Nystrom, or a dense solve (d^2 memory, for checks and small critics)"""
    ihvp_rank: int = 5
    """k: the solver's Hessian-vector products (CG iterations, or Nystrom's sketch size)"""
    ihvp_rho: float = 50.0
    """rho: regularizer of the inverse Hessian"""
    hypergrad_bound: float = 1.4
    """beta: the correction's norm is capped at beta times the direct gradient's"""
    correction: Literal["bounded", "fixed", "random"] = "bounded"
    """the correction applied: c capped at beta ||g|| (the paper's), c rescaled to exactly beta ||g||, or the control:
    a random direction from the seeded generator, fresh on every update, rescaled to exactly beta ||g||"""
    flip_mixed_sign: bool = False
    """use the authors' code's sign for the mixed term, h = g + c, to compare against the derivation's"""
    ihvp_check_every: int = 0
    """every N-th update, also solve for x exactly and log the correction's error against the exact one (0: off)"""

    # to be filled in runtime
    batch_size: int = field(default=0, init=False)
    """the batch size (computed in runtime)"""
    minibatch_size: int = field(default=0, init=False)
    """the mini-batch size (computed in runtime)"""
    num_iterations: int = field(default=0, init=False)
    """the number of iterations (computed in runtime)"""


def fail(message: str) -> None:
    """Stop with one line on stderr and a non-zero exit, no traceback."""
    sys.exit(f"error: {message}")


def check_args(args: Args) -> None:
    """Derive the batch sizes and reject settings that cannot run."""
    for name in (
        "num_envs",
        "num_steps",
        "num_minibatches",
        "update_epochs",
        "total_timesteps",
        "nested_updates",
        "ihvp_rank",
    ):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if "/" in args.exp_name:
        fail(
            f"--exp-name {args.exp_name!r} contains '/'; it names the run directory and the saved model file, "
            f"so use e.g. {args.exp_name.replace('/', '-')!r}"
        )
    if not args.ihvp_rho > 0:
        fail(f"--ihvp-rho must be positive, got {args.ihvp_rho}")
    if not args.hypergrad_bound >= 0:
        fail(f"--hypergrad-bound must be non-negative, got {args.hypergrad_bound}")
    if args.correction != "bounded" and math.isinf(args.hypergrad_bound):
        fail(f"--correction {args.correction} rescales c to beta ||g||: give a finite --hypergrad-bound")
    if args.ihvp_check_every < 0:
        fail(f"--ihvp-check-every must be 0 (off) or positive, got {args.ihvp_check_every}")
    args.batch_size = args.num_envs * args.num_steps
    if args.batch_size % args.num_minibatches:
        fail(
            f"batch size {args.batch_size} (num-envs x num-steps) is not divisible by "
            f"--num-minibatches {args.num_minibatches}; pick sizes that divide"
        )
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.num_iterations < 1:
        fail(f"--total-timesteps {args.total_timesteps} is smaller than one batch of {args.batch_size} steps")
    try:
        gym.spec(args.env_id)
    except gym.error.Error as e:
        fail(f"unknown env id {args.env_id!r} ({e}); pass a registered Gymnasium id such as HalfCheetah-v4")


def check_versions() -> None:
    """Raise RuntimeError when the installed gymnasium or torch is older than this script needs (see the header)."""
    if not hasattr(gym.vector, "AutoresetMode"):
        raise RuntimeError(
            f"gymnasium {gym.__version__} is too old: this script needs gymnasium >= 1.1 (gym.vector.AutoresetMode); "
            "pip install -r requirements.txt"
        )
    if torch.__version__ < "2.4":
        raise RuntimeError(
            f"torch {torch.__version__} is too old: this script needs torch >= 2.4 (Adam's fused CPU kernel); "
            "pip install -r requirements.txt"
        )


def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings through Python's warnings, and so through the filters above, instead of MuJoCo's own
    print and its MUJOCO_LOG.TXT in the working directory. MuJoCo loads the OpenGL library that MUJOCO_GL names when
    it is imported, with or without --capture-video: raise RuntimeError when it cannot."""
    try:
        import mujoco
    except ModuleNotFoundError:
        return  # no MuJoCo: making a MuJoCo env says so
    except Exception as e:
        raise RuntimeError(
            f"MuJoCo cannot load its OpenGL backend MUJOCO_GL={os.environ.get('MUJOCO_GL')} "
            f"({type(e).__name__}: {e}); use MUJOCO_GL=egl, which needs no display"
        ) from e
    mujoco.set_mju_user_warning(lambda message: warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2))


def check_rendering(env_id):
    """Render one frame of a throwaway `env_id`, so that a --capture-video renderer that cannot work fails before
    training; raise RuntimeError with the renderer's complaints (e.g. GLFW's missing display)."""
    env = gym.make(env_id, render_mode="rgb_array")
    try:
        with warnings.catch_warnings(record=True) as caught:
            env.reset(seed=0)
            env.render()
    except Exception as e:
        complaints = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
        mujoco_env = hasattr(env.unwrapped, "mujoco_renderer")
        backend = f" with MUJOCO_GL={os.environ.get('MUJOCO_GL')} (egl needs no display)" if mujoco_env else ""
        raise RuntimeError(
            f"cannot render {env_id!r} for --capture-video{backend}: "
            + "; ".join([*dict.fromkeys(complaints), f"{type(e).__name__}: {e}"])
        ) from e
    finally:
        env.close()


def make_env(env_id, idx, capture_video, run_name, gamma):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        env = gym.wrappers.FlattenObservation(env)  # deal with dm_control's Dict observation space
        env = gym.wrappers.RecordEpisodeStatistics(env)
        if not isinstance(env.action_space, gym.spaces.Box):
            return env  # make_envs rejects it with a clear message
        env = gym.wrappers.ClipAction(env)
        env = gym.wrappers.NormalizeObservation(env)
        env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), env.observation_space)
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        env = gym.wrappers.TransformReward(env, lambda reward: np.clip(reward, -10, 10))
        return env

    return thunk


def make_envs(env_id, num_envs, capture_video, run_name, gamma):
    """Vector env with same-step autoreset: a done step returns the next episode's first observation,
    exactly as CleanRL's Gymnasium 0.29 scripts assume; the finished episode's statistics arrive in
    `infos["final_info"]`. Raises ValueError when `env_id` cannot be made or does not fit this script,
    RuntimeError when gymnasium or torch is too old or --capture-video cannot render."""
    check_versions()
    try:
        if capture_video:
            check_rendering(env_id)
        envs = gym.vector.SyncVectorEnv(
            [make_env(env_id, i, capture_video, run_name, gamma) for i in range(num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
    except gym.error.Error as e:
        raise ValueError(f"cannot make {env_id!r}: {e}") from None
    if not isinstance(envs.single_action_space, gym.spaces.Box):
        envs.close()
        raise ValueError(
            f"{env_id} has a {type(envs.single_action_space).__name__} action space; "
            "this script needs a continuous (Box) one (use blpo_discrete.py)"
        )
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
        action_mean = self.actor_mean(x)
        action_logstd = self.actor_logstd.expand_as(action_mean)
        if action is None:
            action = action_mean + action_logstd.exp() * torch.randn_like(action_mean)
        return (
            action,
            gaussian_log_prob(action, action_mean, action_logstd),
            gaussian_entropy(action_logstd),
            self.get_value(x),
        )

    def actor_parameters(self):
        return [*self.actor_mean.parameters(), self.actor_logstd]


def compute_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """Generalized advantage estimation over a (num_steps, num_envs) rollout.

    dones[t] marks obs[t] as the first observation of a new episode, so step t bootstraps from
    values[t + 1] only when dones[t + 1] is 0. Returns (advantages, returns = advantages + values).
    The reverse loop runs in NumPy, whose per-step overhead on small arrays is a fraction of torch's.
    """
    r, v, d = (x.cpu().numpy() for x in (rewards, values, dones))
    next_value, next_done = next_value.cpu().numpy(), next_done.cpu().numpy()
    num_steps = r.shape[0]
    advantages = np.zeros_like(r)
    lastgaelam = 0
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - d[t + 1]
            nextvalues = v[t + 1]
        delta = r[t] + gamma * nextvalues * nextnonterminal - v[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    advantages = torch.as_tensor(advantages, device=values.device)
    return advantages, advantages + values


def gae_discount_matrix(dones, next_done, gamma, gae_lambda):
    """D of shape (num_envs, num_steps, num_steps) with advantages[t, e] = sum_s D[e, t, s] delta[s, e].

    GAE is linear in the TD errors: D[e, t, s] = (gamma lambda)^(s - t) when s >= t and steps t..s of env e
    lie in one episode, else 0. It depends only on the dones, so it is built once per rollout.
    """
    num_steps = dones.shape[0]
    episode = torch.cumsum(dones, 0).T  # (num_envs, num_steps): episode counter, bumped where obs[t] starts one
    t = torch.arange(num_steps, device=dones.device)
    lag = (t[None, :] - t[:, None]).to(dones.dtype)  # lag[t, s] = s - t
    same_episode = episode[:, :, None] == episode[:, None, :]
    return torch.where(same_episode & (lag >= 0), (gamma * gae_lambda) ** lag.clamp(min=0), 0.0).contiguous()


def td_errors(values, next_value, rewards, dones, next_done, gamma):
    """delta[t] = r[t] + gamma (1 - dones[t + 1]) V(obs[t + 1]) - V(obs[t]), differentiable in the values."""
    next_values = torch.cat([values[1:], next_value[None]])
    next_nonterminal = 1.0 - torch.cat([dones[1:], next_done[None]])
    return rewards + gamma * next_nonterminal * next_values - values


class Batch(NamedTuple):
    """A rollout flattened to (num_steps * num_envs, ...), step-major: sample i is step i // num_envs of env
    i % num_envs. The last fields keep the rollout's shape, for recomputing A(w) from the critic."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor
    adv_mean: torch.Tensor
    adv_std: torch.Tensor
    states: torch.Tensor  # (num_steps + 1, num_envs, ...): the observations and the bootstrap observations
    rewards: torch.Tensor
    dones: torch.Tensor
    next_done: torch.Tensor
    discount: torch.Tensor | None  # gae_discount_matrix, built when the hypergradient is on


def critic_advantages(values, batch, mb_inds, gamma):
    """A(w) at the samples mb_inds: the GAE rows D[e_i, t_i, :] times env e_i's TD errors delta(w), where `values`
    (num_steps + 1, num_envs) are V_w at batch.states."""
    num_envs, num_steps = batch.discount.shape[:2]
    mb_inds = torch.as_tensor(mb_inds, device=values.device)
    mb_envs = mb_inds % num_envs
    rows = batch.discount.reshape(-1, num_steps).index_select(0, mb_envs * num_steps + mb_inds // num_envs)
    deltas = td_errors(values[:-1], values[-1], batch.rewards, batch.dones, batch.next_done, gamma)
    return (rows * deltas.T.index_select(0, mb_envs)).sum(-1)


def anchored_advantages(rollout_advantages, advantages_w):
    """The rollout's advantages as values, A(w)'s as the dependence on w: A_rollout + A(w) - A(w_t), held at w_t."""
    return rollout_advantages + (advantages_w - advantages_w.detach())


def functional_critic(critic):
    """critic_fn(w, obs) = critic(obs) with the parameters given as one flat vector w."""
    names, shapes = zip(*[(name, p.shape) for name, p in critic.named_parameters()])
    sizes = [shape.numel() for shape in shapes]

    def critic_fn(w, obs):
        params = {name: t.view(shape) for name, t, shape in zip(names, w.split(sizes), shapes)}
        return torch.func.functional_call(critic, params, (obs,)).squeeze(-1)

    return critic_fn


def make_hvp(loss, w):
    """u -> H u for the Hessian H of `loss` (computed from w with its graph) at w, by double backward through
    one retained gradient graph. u is one vector (d,) or a batch of them (k, d)."""
    (grad,) = torch.autograd.grad(loss, w, create_graph=True)

    def hvp(u):
        return torch.autograd.grad(grad, w, grad_outputs=u, retain_graph=True, is_grads_batched=u.dim() == 2)[0]

    return hvp


def hessian_rows(hvp, coords, dim):
    """H[coords, :]: H is symmetric, so row j is H e_j; one batched product with the unit vectors."""
    unit = torch.zeros(len(coords), dim, device=coords.device)
    unit[torch.arange(len(coords)), coords] = 1.0
    return hvp(unit)


def cg_ihvp(hvp, v, rho, iterations, tol=0.0):
    """x ~ (H + rho I)^-1 v by at most `iterations` steps of conjugate gradient from x = 0, stopping once
    ||r|| <= tol ||v||. A direction of non-positive curvature (H + rho I not positive definite) gives NaN."""
    x = torch.zeros_like(v)
    r = v.clone()
    p = r.clone()
    rs = r @ r
    stop = (tol * v.norm()) ** 2
    for _ in range(iterations):
        if rs <= stop:
            break
        Ap = hvp(p) + rho * p
        curvature = p @ Ap
        if not curvature > 0:
            return torch.full_like(v, float("nan"))
        alpha = rs / curvature
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = r @ r
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def gaussian_sketch(dim, rank, generator):
    """Omega (dim, rank): an orthonormal basis of a Gaussian random subspace, fresh from `generator`."""
    return torch.linalg.qr(torch.randn(dim, rank, generator=generator))[0]


def nystrom_ihvp(hvp, v, rho, sketch):
    """x = (H_nys + rho I)^-1 v for the Nystrom approximation H_nys = Y M^+ Y^T, Y = H Omega, M = Omega^T H Omega,
    with the pseudo-inverse taken on M's positive eigenvalues only (Frangella, Tropp and Udell's stable form).

    H_nys = F F^T with F = Y Q_+ diag(m_+)^(-1/2), so Woodbury's core rho I + F^T F has every eigenvalue >= rho
    and the solve is stable for any H, indefinite or with zero rows. Exact for rank = dim and H PSD.
    """
    y = hvp(sketch.T).T  # (d, k): H Omega, one batched product
    core = sketch.T @ y
    eigvals, eigvecs = torch.linalg.eigh((core + core.T) / 2)
    keep = eigvals > eigvals.abs().max() * len(eigvals) * torch.finfo(eigvals.dtype).eps
    if not keep.any():
        return v / rho
    f = (y @ eigvecs[:, keep]) / eigvals[keep].sqrt()
    inner = rho * torch.eye(f.shape[1], dtype=v.dtype, device=v.device) + f.T @ f
    return (v - f @ torch.linalg.solve(inner, f.T @ v)) / rho


def paper_nystrom_ihvp(rows, coords, v, rho):
    """The paper's Nystrom: x = (H_nys + rho I)^-1 v for H_nys = C^T M^-1 C, C = H[S, :] at k sampled coordinates S,
    M = C[:, S], by Woodbury's x = v / rho - C^T (rho M + C C^T)^-1 C v / rho. Singular whenever a sampled
    coordinate's Hessian row is zero: then NaN, which the caller treats as a non-finite correction."""
    inner = rho * rows[:, coords] + rows @ rows.T
    solution, info = torch.linalg.solve_ex(inner, rows @ v)
    if info.item() != 0:
        return torch.full_like(v, float("nan"))
    return (v - rows.T @ solution) / rho


DENSE_IHVP_MAX_DIM = 8192
"""exact_ihvp builds H densely up to this many critic parameters, and runs CG to tolerance above it"""


def exact_ihvp(hvp, v, rho):
    """(H + rho I)^-1 v to float64 accuracy: a dense solve with H built from d Hessian-vector products, or for
    d > DENSE_IHVP_MAX_DIM conjugate gradient to a relative residual of 1e-10."""
    dim = v.numel()
    if dim > DENSE_IHVP_MAX_DIM:
        return cg_ihvp(hvp, v, rho, iterations=10 * dim, tol=1e-10)
    eye = torch.eye(dim, device=v.device)
    h = torch.cat([hvp(rows) for rows in eye.split(512)]).double()
    regularized = (h + h.T) / 2 + rho * torch.eye(dim, dtype=h.dtype, device=v.device)
    return torch.linalg.solve(regularized, v.double()).to(v.dtype)


def solve_ihvp(hvp, v, args, generator):
    """x ~ (H + rho I)^-1 v with the chosen solver, from k = ihvp_rank Hessian-vector products; the sketch or
    the coordinates are drawn fresh on every call from `generator`."""
    rho, rank, dim = args.ihvp_rho, args.ihvp_rank, v.numel()
    if args.ihvp == "cg":
        return cg_ihvp(hvp, v, rho, rank)
    if args.ihvp == "nystrom":
        return nystrom_ihvp(hvp, v, rho, gaussian_sketch(dim, rank, generator).to(v.device))
    if args.ihvp == "nystrom-paper":
        coords = torch.randperm(dim, generator=generator)[:rank].to(v.device)
        return paper_nystrom_ihvp(hessian_rows(hvp, coords, dim), coords, v, rho)
    return exact_ihvp(hvp, v, rho)


def mixed_term(ratio, td_error, critic_jvp, actor_params):
    """c = (d^2 L / d theta d w) x by the score function: c = grad_theta[-2 mean_i r_i(theta) delta_i u_i],
    with u_i = grad_w V(s_i) . x (one critic JVP) and delta_i = G_i - V(s_i) held constant."""
    surrogate = -2.0 * (ratio * (td_error * critic_jvp).detach()).mean()
    return flat(torch.autograd.grad(surrogate, actor_params, retain_graph=True))


def correction(x, ratio, critic_fn, w, mb_obs, mb_returns, actor_params):
    """c = (d^2 L / d theta d w) x for L = mean (V_w(s) - G)^2 on the minibatch: u = grad_w V(s) . x by one critic
    JVP, delta = G - V(s), then the mixed term's score-function form."""
    values, u = torch.func.jvp(lambda w_: critic_fn(w_, mb_obs), (w.detach(),), (x,))
    return mixed_term(ratio, mb_returns - values, u, actor_params)


def random_direction(c, generator):
    """The random control's stand-in for c: a Gaussian vector from `generator`, fresh on every call, whose norm the
    caller sets; a non-finite c is kept, so that the update falls back as c's would."""
    direction = torch.randn(c.shape, generator=generator).to(c.device)
    return direction if torch.isfinite(c).all() else c


def bounded_hypergradient(g, c, bound, fixed=False):
    """h = g - c with c rescaled to norm at most bound * ||g||, or to exactly bound * ||g|| if `fixed`; a non-finite c
    falls back to h = g. Returns (h, scale), scale the factor c was multiplied by (NaN on the fallback)."""
    if not torch.isfinite(c).all():
        return g, math.nan
    c_norm, limit = c.norm(), bound * g.norm()
    if (fixed and c_norm > 0) or c_norm > limit:
        return g - c * (limit / c_norm), (limit / c_norm).item()
    return g - c, 1.0


def flat(tensors):
    """The tensors as one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def set_grads(params, vector):
    """Write a flat gradient vector into the parameters' .grad fields."""
    for p, grad in zip(params, vector.split([p.numel() for p in params])):
        p.grad = grad.view_as(p).clone()


def cosine(a, b):
    return ((a @ b) / max(a.norm() * b.norm(), 1e-12)).item()


class HypergradStats:
    """Means of the hypergradient diagnostics since the last `pop_means`, the run's count of updates and of
    non-finite fallbacks, and the run's sums of g, of the applied correction g - h and of its squares."""

    def __init__(self):
        self.updates = self.fallbacks = 0
        self.sums, self.counts = {}, {}
        self.sum_g = self.sum_applied = self.sum_applied_sq = 0.0

    def _add(self, name, value):
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def add(self, g, c, h, scale):
        """One update: direct gradient g, correction c (before its size rule), hypergradient h, and the factor
        the size rule multiplied the applied direction by (NaN: c was not finite, h = g)."""
        self.updates += 1
        applied = (g - h).detach()
        self.sum_g, self.sum_applied = self.sum_g + g, self.sum_applied + applied
        self.sum_applied_sq = self.sum_applied_sq + applied**2
        if math.isnan(scale):
            self.fallbacks += 1
            return
        g_norm, c_norm = g.norm().item(), c.norm().item()
        self._add("direct_grad_norm", g_norm)
        self._add("correction_norm", c_norm)
        self._add("correction_ratio", c_norm / max(g_norm, 1e-12))
        self._add("cos_correction_direct", cosine(c, g))
        self._add("cos_applied_correction", cosine(applied, c))
        self._add("bound_active_frac", float(scale < 1))
        self._add("enlarged_frac", float(scale > 1))

    def add_check(self, c, c_exact):
        """The correction c against the one from the exact IHVP: ||c - c*|| / ||c*|| and cos(c, c*)."""
        self._add("ihvp_error", ((c - c_exact).norm() / max(c_exact.norm(), 1e-12)).item())
        self._add("ihvp_cos", cosine(c, c_exact))

    def pop_means(self):
        means = {name: total / self.counts[name] for name, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means

    def push(self, tensors):
        """Whether the applied correction d = g - h pushes each actor tensor one way over the run so far, for
        `tensors` [(name, size)] in the order g is flattened in: ||sum d|| / ||sum g|| (its share of g's cumulative
        move), cos(sum d, sum g), and the coherence ||sum d|| / sqrt(sum ||d||^2) (about 1 for noise, a random walk;
        sqrt(updates) for a constant push)."""
        sizes = [size for _, size in tensors]
        parts = zip(*(t.split(sizes) for t in (self.sum_applied, self.sum_g, self.sum_applied_sq)))
        push = {}
        for (name, _), (d, g, d_sq) in zip(tensors, parts):
            push[f"{name}/ratio"] = (d.norm() / max(g.norm(), 1e-12)).item()
            push[f"{name}/cos_direct"] = cosine(d, g)
            push[f"{name}/coherence"] = (d.norm() / max(d_sq.sum().sqrt(), 1e-12)).item()
        return push


class Losses(NamedTuple):
    """What one minibatch update logs."""

    v_loss: float
    pg_loss: float
    entropy_loss: float
    old_approx_kl: float
    approx_kl: float
    clipfrac: float


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


def update_minibatch(agent, optimizer, critic_fn, batch, mb_inds, args, generator, stats):
    """One bilevel update on the samples mb_inds: K - 1 critic steps alone, then one step of PPO's loss for both
    networks with the actor's gradient replaced by the hypergradient."""
    mb_obs, mb_returns, mb_values = batch.obs[mb_inds], batch.returns[mb_inds], batch.values[mb_inds]
    # 3a. Nested critic: K - 1 optimizer steps on PPO's value loss alone, toward the best response w*(theta)
    for _ in range(args.nested_updates - 1):
        v_loss = value_loss(agent.get_value(mb_obs), mb_values, mb_returns, args.clip_coef, args.clip_vloss)
        optimizer.zero_grad()
        (v_loss * args.vf_coef).backward()
        nn.utils.clip_grad_norm_(agent.critic.parameters(), args.max_grad_norm)
        optimizer.step()

    # 3b. PPO's loss at (theta, w); for the hypergradient the advantages also carry A(w)'s dependence on the
    # critic's weights w, with the rollout's values: A_rollout + A(w) - A(w_t)
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
        if args.norm_adv_stats == "rollout":
            mb_advantages = (mb_advantages - batch.adv_mean) / (batch.adv_std + 1e-8)
        else:
            mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

    pg_loss = clipped_surrogate(ratio, mb_advantages, args.clip_coef)
    v_loss = value_loss(newvalue, mb_values, mb_returns, args.clip_coef, args.clip_vloss)
    entropy_loss = entropy.mean()
    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

    optimizer.zero_grad()
    loss.backward(retain_graph=args.hypergrad)
    if args.hypergrad:
        # 3c. Hypergradient from g = grad_theta l and v = grad_w l of the backward pass above:
        # h = g - (d^2 L / d theta d w) (H + rho I)^-1 v, H the Hessian of L(w) = mean (V_w(s) - G)^2 here
        actor_params = agent.actor_parameters()
        g, v = flat(p.grad for p in actor_params), w.grad
        hvp = make_hvp(((critic_fn(w, mb_obs) - mb_returns) ** 2).mean(), w)
        mixed = (ratio, critic_fn, w, mb_obs, mb_returns, actor_params)
        c = correction(solve_ihvp(hvp, v, args, generator), *mixed)
        if args.flip_mixed_sign:
            c = -c
        applied = random_direction(c, generator) if args.correction == "random" else c
        h, scale = bounded_hypergradient(g, applied, args.hypergrad_bound, fixed=args.correction != "bounded")
        stats.add(g, c, h, scale)
        if args.ihvp_check_every and stats.updates % args.ihvp_check_every == 0 and not math.isnan(scale):
            c_exact = correction(exact_ihvp(hvp, v, args.ihvp_rho), *mixed)
            stats.add_check(c, -c_exact if args.flip_mixed_sign else c_exact)
        set_grads(actor_params, h)

    # 3d. One step of both networks, as PPO's: the critic's K-th, the actor's first; clip the joint norm, then Adam
    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    return Losses(*(t.item() for t in (v_loss, pg_loss, entropy_loss, old_approx_kl, approx_kl, clipfrac)))


def obs_normalizer(envs):
    """The first env's NormalizeObservation wrapper, whose statistics belong to the trained policy."""
    env = envs.envs[0]
    while not isinstance(env, gym.wrappers.NormalizeObservation):
        env = env.env
    return env


def save_model(path, agent, envs):
    """Weights plus the observation normalization statistics the policy was trained with."""
    obs_rms = obs_normalizer(envs).obs_rms
    torch.save(
        {"agent": agent.state_dict(), "obs_rms": {"mean": obs_rms.mean, "var": obs_rms.var, "count": obs_rms.count}},
        path,
    )


def load_checkpoint(model_path, device):
    """The dict a --save-model run saved at `model_path`; ValueError if it is something else."""
    checkpoint = torch.load(model_path, map_location=device, weights_only=False)
    if not isinstance(checkpoint, dict) or "agent" not in checkpoint:
        raise ValueError(f"{model_path} is not a checkpoint of --save-model: it has no 'agent' weights")
    return checkpoint


def load_weights(agent, weights, model_path, env_id):
    """Load saved weights into `agent`; ValueError, naming what differs, if they belong to another network (another
    script's checkpoint, or one trained on an env with other observation or action sizes)."""
    expected = {name: tuple(t.shape) for name, t in agent.state_dict().items()}
    saved = {name: tuple(t.shape) for name, t in weights.items()}
    if saved != expected:
        differences = {
            "missing": [name for name in expected if name not in saved],
            "unexpected": [name for name in saved if name not in expected],
            "resized": [
                f"{name} {saved[name]}" for name in expected if saved.get(name, expected[name]) != expected[name]
            ],
        }
        listed = [
            f"{kind} {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            for kind, names in differences.items()
            if names
        ]
        raise ValueError(
            f"{model_path} does not fit {os.path.basename(__file__)}'s agent on {env_id} (a checkpoint of another "
            f"script or env?): {'; '.join(listed)}"
        )
    agent.load_state_dict(weights)


def evaluate(model_path, env_id, eval_episodes=10, seed=1, gamma=0.99, deterministic=True, device="cpu"):
    """Run a saved policy for `eval_episodes` episodes with frozen observation statistics; return the
    undiscounted episodic returns. Raises ValueError for an env id that cannot be made or a checkpoint that
    does not fit this script's agent on it."""
    envs = make_envs(env_id, 1, False, "eval", gamma)
    try:
        checkpoint = load_checkpoint(model_path, device)
        if "obs_rms" not in checkpoint:
            raise ValueError(
                f"{model_path} has no observation statistics ('obs_rms'), so it is not a checkpoint of "
                f"{os.path.basename(__file__)}'s --save-model (blpo_discrete.py saves none)"
            )
        agent = Agent(np.prod(envs.single_observation_space.shape), np.prod(envs.single_action_space.shape)).to(device)
        load_weights(agent, checkpoint["agent"], model_path, env_id)
        agent.eval()
        normalizer = obs_normalizer(envs)
        normalizer.update_running_mean = False
        obs_rms = normalizer.obs_rms
        obs_rms.mean, obs_rms.var, obs_rms.count = (checkpoint["obs_rms"][k] for k in ("mean", "var", "count"))
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
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws classic-control frames off-screen, quietly
    args = tyro.cli(Args)
    check_args(args)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    try:
        route_mujoco_warnings()
        envs = make_envs(args.env_id, args.num_envs, args.capture_video, run_name, args.gamma)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    try:  # now, so that saving the model cannot fail after training
        os.makedirs(f"runs/{run_name}", exist_ok=True)
    except OSError as e:
        fail(f"cannot create the run directory runs/{run_name}: {e.strerror}; run from a writable directory")
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

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    obs_dim = np.prod(envs.single_observation_space.shape)
    act_dim = np.prod(envs.single_action_space.shape)
    agent = Agent(obs_dim, act_dim).to(device)
    # one Adam for both networks, as PPO's, with a learning rate each (Adam's state is per parameter)
    param_groups = [{"params": agent.actor_parameters(), "lr": args.actor_lr}]
    param_groups.append({"params": list(agent.critic.parameters()), "lr": args.critic_lr})
    optimizer = optim.Adam(param_groups, eps=1e-5, fused=True)
    critic_fn = functional_critic(agent.critic)
    num_critic_params = sum(p.numel() for p in agent.critic.parameters())
    if args.ihvp_rank > num_critic_params:
        fail(f"--ihvp-rank {args.ihvp_rank} exceeds the critic's {num_critic_params} parameters; pick a smaller rank")
    generator = torch.Generator().manual_seed(args.seed)  # the IHVP's sketches and random directions, fresh per call
    names = {id(p): name for name, p in agent.named_parameters()}
    actor_tensors = [(names[id(p)], p.numel()) for p in agent.actor_parameters()]

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape).to(device)
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)
    rewards = torch.zeros((args.num_steps, args.num_envs)).to(device)
    dones = torch.zeros((args.num_steps, args.num_envs)).to(device)
    values = torch.zeros((args.num_steps, args.num_envs)).to(device)

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    recent_returns = deque(maxlen=20)
    stats = HypergradStats()
    progress = tqdm(total=args.num_iterations * args.batch_size, unit="step", mininterval=1.0, dynamic_ncols=True)
    interrupted = False
    try:
        next_obs, _ = envs.reset(seed=args.seed)
        envs.action_space.seed(args.seed)
        next_obs = torch.Tensor(next_obs).to(device)
        next_done = torch.zeros(args.num_envs).to(device)

        for iteration in range(1, args.num_iterations + 1):
            # Annealing the rate if instructed to do so.
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / args.num_iterations
                optimizer.param_groups[0]["lr"] = frac * args.actor_lr
                optimizer.param_groups[1]["lr"] = frac * args.critic_lr

            # 1. Rollout: num_steps x num_envs transitions with the current policy
            for step in range(0, args.num_steps):
                global_step += args.num_envs
                obs[step] = next_obs
                dones[step] = next_done

                # ALGO LOGIC: action logic
                with torch.inference_mode():
                    action, logprob, _, value = agent.get_action_and_value(next_obs)
                    values[step] = value
                actions[step] = action
                logprobs[step] = logprob

                # TRY NOT TO MODIFY: execute the game and log data.
                next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
                next_done = np.logical_or(terminations, truncations)
                rewards[step] = torch.as_tensor(reward, dtype=torch.float32, device=device)
                next_obs = torch.Tensor(next_obs).to(device)
                next_done = torch.Tensor(next_done).to(device)

                for episodic_return, episodic_length in finished_episodes(infos):
                    recent_returns.append(episodic_return)
                    writer.add_scalar("charts/episodic_return", episodic_return, global_step)
                    writer.add_scalar("charts/episodic_length", episodic_length, global_step)

            # 2. Advantages: GAE(gamma, lambda) with the rollout's values, bootstrapped from the last observation.
            # The actor keeps these values; the hypergradient adds A(w) = D delta(w)'s dependence on the critic
            with torch.no_grad():
                next_value = agent.get_value(next_obs)
                advantages, returns = compute_gae(
                    rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda
                )

            # flatten the batch
            batch = Batch(
                obs=obs.reshape((-1,) + envs.single_observation_space.shape),
                actions=actions.reshape((-1,) + envs.single_action_space.shape),
                logprobs=logprobs.reshape(-1),
                advantages=advantages.reshape(-1),
                returns=returns.reshape(-1),
                values=values.reshape(-1),
                adv_mean=advantages.mean(),
                adv_std=advantages.std(),
                states=torch.cat([obs, next_obs[None]]),
                rewards=rewards,
                dones=dones,
                next_done=next_done,
                discount=gae_discount_matrix(dones, next_done, args.gamma, args.gae_lambda) if args.hypergrad else None,
            )

            # 3. Update: update_epochs passes over random minibatches, each a bilevel step (critic K times, actor once)
            b_inds = np.arange(args.batch_size)
            clipfracs = []
            for epoch in range(args.update_epochs):
                np.random.shuffle(b_inds)
                for start in range(0, args.batch_size, args.minibatch_size):
                    end = start + args.minibatch_size
                    losses = update_minibatch(
                        agent, optimizer, critic_fn, batch, b_inds[start:end], args, generator, stats
                    )
                    clipfracs.append(losses.clipfrac)

                if args.target_kl is not None and losses.approx_kl > args.target_kl:
                    break

            y_pred, y_true = batch.values.cpu().numpy(), batch.returns.cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

            # 4. Logging
            sps = int(global_step / (time.time() - start_time))
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("losses/value_loss", losses.v_loss, global_step)
            writer.add_scalar("losses/policy_loss", losses.pg_loss, global_step)
            writer.add_scalar("losses/entropy", losses.entropy_loss, global_step)
            writer.add_scalar("losses/old_approx_kl", losses.old_approx_kl, global_step)
            writer.add_scalar("losses/approx_kl", losses.approx_kl, global_step)
            writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
            writer.add_scalar("losses/explained_variance", explained_var, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            if args.hypergrad:
                for name, value in stats.pop_means().items():
                    writer.add_scalar(f"hypergrad/{name}", value, global_step)
                writer.add_scalar("hypergrad/nonfinite_fallbacks", stats.fallbacks, global_step)
                for name, value in stats.push(actor_tensors).items():
                    writer.add_scalar(f"hypergrad/push/{name}", value, global_step)
            progress.update(args.batch_size)
            progress.set_postfix(
                SPS=sps, ret=f"{np.mean(recent_returns):.1f}" if recent_returns else "-", refresh=False
            )
    except KeyboardInterrupt:  # Ctrl-C: keep what there is, below
        interrupted = True

    # The end, of a finished or an interrupted run: the model as it is, evaluated if finished; complete events
    progress.close()
    if interrupted:
        print(
            f"interrupted at step {global_step} of {progress.total}; its events are in runs/{run_name}", file=sys.stderr
        )
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        save_model(model_path, agent, envs)
        print(f"model saved to {model_path}")
    envs.close()
    if args.save_model and not interrupted:
        try:
            returns = evaluate(
                model_path, args.env_id, eval_episodes=10, seed=args.seed, gamma=args.gamma, device=device
            )
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted during the evaluation; stopping", file=sys.stderr)
        else:
            print(f"evaluation: mean return {np.mean(returns):.2f} over {len(returns)} episodes")
            for idx, episodic_return in enumerate(returns):
                writer.add_scalar("eval/episodic_return", episodic_return, idx)
    writer.close()
    if interrupted:
        sys.exit(130)
