# BLPO (Bi-Level Policy Optimization with Nystrom hypergradients, arXiv:2505.11714) for discrete actions.
# PPO's actor-critic as a Stackelberg game: the critic (follower) takes K nested steps toward its best
# response, and the actor (leader) follows the hypergradient through that response.
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
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

warnings.filterwarnings("ignore", message=r".*is out of date", category=DeprecationWarning)  # CleanRL's -v4 ids


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
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    total_timesteps: int = 500000
    """total timesteps of the experiments"""
    actor_lr: float = 2.5e-4
    """the learning rate of the actor's optimizer"""
    critic_lr: float = 2.5e-4
    """the learning rate of the critic's optimizer"""
    num_envs: int = 4
    """the number of parallel game environments"""
    num_steps: int = 128
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """Toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches; each holds whole trajectory segments of num_envs / num_minibatches envs"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """Toggles advantages normalization"""
    adv_values: Literal["critic", "rollout"] = "critic"
    """the actor's advantages: A(w) from the current critic, or the rollout's GAE values with A(w)'s dependence on w"""
    norm_adv_stats: Literal["minibatch", "rollout"] = "minibatch"
    """normalize A(w) with each minibatch's own mean and std (PPO), or with those of the rollout's advantages"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    ent_coef: float = 0.01
    """coefficient of the entropy"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: float | None = None
    """the target KL divergence threshold"""

    # BLPO specific arguments
    nested_updates: int = 10
    """K: critic optimizer steps on each minibatch before the actor step"""
    hypergrad: bool = True
    """follow the hypergradient h = g - c; --no-hypergrad follows the direct gradient g"""
    ihvp: Literal["nystrom", "cg"] = "nystrom"
    """solver for x = (H + rho I)^-1 v: Nystrom (k Hessian rows) or conjugate gradient (k iterations)"""
    nystrom_rank: int = 5
    """k: Hessian rows of the Nystrom approximation, or CG iterations"""
    nystrom_rho: float = 50.0
    """rho: regularizer of the inverse Hessian"""
    hypergrad_bound: float = 1.4
    """beta: the correction's norm is capped at beta times the direct gradient's"""
    flip_mixed_sign: bool = False
    """use the authors' code's sign for the mixed term, h = g + c, to compare against the derivation's"""

    # to be filled in runtime
    batch_size: int = field(default=0, init=False)
    """the batch size (computed in runtime)"""
    envs_per_minibatch: int = field(default=0, init=False)
    """the number of env trajectory segments per mini-batch (computed in runtime)"""
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
        "nystrom_rank",
    ):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.nystrom_rho > 0:
        fail(f"--nystrom-rho must be positive, got {args.nystrom_rho}")
    if not args.hypergrad_bound >= 0:
        fail(f"--hypergrad-bound must be non-negative, got {args.hypergrad_bound}")
    args.batch_size = args.num_envs * args.num_steps
    if args.num_envs % args.num_minibatches:
        fail(
            f"--num-envs {args.num_envs} is not divisible by --num-minibatches {args.num_minibatches}: each minibatch "
            "holds whole env trajectory segments; pick sizes that divide"
        )
    args.envs_per_minibatch = args.num_envs // args.num_minibatches
    args.minibatch_size = args.envs_per_minibatch * args.num_steps
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.num_iterations < 1:
        fail(f"--total-timesteps {args.total_timesteps} is smaller than one batch of {args.batch_size} steps")
    try:
        gym.spec(args.env_id)
    except gym.error.Error as e:
        fail(f"unknown env id {args.env_id!r} ({e}); pass a registered Gymnasium id such as CartPole-v1")


def make_env(env_id, idx, capture_video, run_name):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        return env

    return thunk


def make_envs(env_id, num_envs, capture_video, run_name):
    """Vector env with same-step autoreset: a done step returns the next episode's first observation,
    exactly as CleanRL's Gymnasium 0.29 scripts assume; the finished episode's statistics arrive in
    `infos["final_info"]`."""
    try:
        envs = gym.vector.SyncVectorEnv(
            [make_env(env_id, i, capture_video, run_name) for i in range(num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
    except gym.error.Error as e:
        fail(f"cannot make {env_id!r}: {e}")
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        fail(
            f"{env_id} has a {type(envs.single_action_space).__name__} action space; "
            "this script needs a Discrete one (use blpo_continuous.py)"
        )
    return envs


def finished_episodes(infos):
    """(return, length) of every episode that ended in this vector step."""
    final = infos.get("final_info", {})
    if "episode" not in final:
        return []
    mask = final["_episode"]
    return [(float(r), int(l)) for r, l in zip(final["episode"]["r"][mask], final["episode"]["l"][mask])]


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim, num_actions):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, num_actions), std=0.01),
        )

    def get_value(self, x):
        return self.critic(x).squeeze(-1)

    def get_action(self, x, action=None):
        probs = Categorical(logits=self.actor(x), validate_args=False)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy()

    def actor_parameters(self):
        return list(self.actor.parameters())


def anchored_advantages(rollout_advantages, advantages_w):
    """The rollout's advantages as values, A(w)'s as the dependence on w: A_rollout + A(w) - A(w_t), held at w_t."""
    return rollout_advantages + (advantages_w - advantages_w.detach())


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
    return torch.where(same_episode & (lag >= 0), (gamma * gae_lambda) ** lag.clamp(min=0), 0.0)


def td_errors(values, next_value, rewards, dones, next_done, gamma):
    """delta[t] = r[t] + gamma (1 - dones[t + 1]) V(obs[t + 1]) - V(obs[t]), differentiable in the values."""
    next_values = torch.cat([values[1:], next_value[None]])
    next_nonterminal = 1.0 - torch.cat([dones[1:], next_done[None]])
    return rewards + gamma * next_nonterminal * next_values - values


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


def nystrom_ihvp(rows, coords, v, rho):
    """x = (H_nys + rho I)^-1 v for the Nystrom approximation H_nys = C^T M^-1 C, C = H[S, :], M = C[:, S].

    Woodbury, exact for H_nys: x = v / rho - C^T (rho M + C C^T)^-1 C v / rho. A singular system gives NaN,
    which the caller treats as a non-finite correction.
    """
    inner = rho * rows[:, coords] + rows @ rows.T
    solution, info = torch.linalg.solve_ex(inner, rows @ v)
    if info.item() != 0:
        return torch.full_like(v, float("nan"))
    return (v - rows.T @ solution) / rho


def cg_ihvp(hvp, v, rho, iterations):
    """x ~ (H + rho I)^-1 v by `iterations` steps of conjugate gradient from x = 0."""
    x = torch.zeros_like(v)
    r = v.clone()
    p = r.clone()
    rs = r @ r
    for _ in range(iterations):
        Ap = hvp(p) + rho * p
        alpha = rs / (p @ Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = r @ r
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def mixed_term(ratio, td_error, critic_jvp, actor_params):
    """c = (d^2 L / d theta d w) x by the score function: c = grad_theta[-2 mean_i r_i(theta) delta_i u_i],
    with u_i = grad_w V(s_i) . x (one critic JVP) and delta_i = G_i - V(s_i) held constant."""
    surrogate = -2.0 * (ratio * (td_error * critic_jvp).detach()).mean()
    return flat(torch.autograd.grad(surrogate, actor_params))


def bounded_hypergradient(g, c, bound):
    """h = g - c with c rescaled to norm at most bound * ||g||; a non-finite c falls back to h = g.
    Returns (h, bound_active, fell_back)."""
    if not torch.isfinite(c).all():
        return g, False, True
    c_norm, limit = c.norm(), bound * g.norm()
    if c_norm > limit:
        return g - c * (limit / c_norm), True, False
    return g - c, False, False


def flat(tensors):
    """The tensors as one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def set_grads(params, vector):
    """Write a flat gradient vector into the parameters' .grad fields."""
    for p, grad in zip(params, vector.split([p.numel() for p in params])):
        p.grad = grad.view_as(p).clone()


class HypergradStats:
    """Means of the hypergradient diagnostics since the last `pop_means`, and the run's count of
    non-finite fallbacks."""

    def __init__(self):
        self.fallbacks = 0
        self.sums, self.count = {}, 0

    def add(self, g, c, bound_active, fell_back):
        if fell_back:
            self.fallbacks += 1
            return
        g_norm, c_norm = g.norm().item(), c.norm().item()
        for name, value in (
            ("direct_grad_norm", g_norm),
            ("correction_norm", c_norm),
            ("correction_ratio", c_norm / max(g_norm, 1e-12)),
            ("cos_correction_direct", (c @ g).item() / max(c_norm * g_norm, 1e-12)),
            ("bound_active_frac", float(bound_active)),
        ):
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def pop_means(self):
        means = {name: total / self.count for name, total in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


def hypergradient(g, v, hvp, ratio, actor_params, critic_fn, w, mb_obs, mb_returns, args, generator):
    """Steps 3-5 of a BLPO update. Returns (h, c, x, bound_active, fell_back).

    g = grad_theta l and v = grad_w l are given, and hvp(u) = H u with H the Hessian of the critic's minibatch
    loss at w; x ~ (H + rho I)^-1 v; c = (d^2 L / d theta d w) x; h = g - c with ||c|| <= beta ||g||.
    """
    if args.ihvp == "nystrom":
        coords = torch.randperm(w.numel(), generator=generator)[: args.nystrom_rank].to(w.device)
        x = nystrom_ihvp(hessian_rows(hvp, coords, w.numel()), coords, v, args.nystrom_rho)
    else:
        x = cg_ihvp(hvp, v, args.nystrom_rho, args.nystrom_rank)
    values, u = torch.func.jvp(lambda w_: critic_fn(w_, mb_obs), (w.detach(),), (x,))
    c = mixed_term(ratio, mb_returns - values, u, actor_params)
    if args.flip_mixed_sign:
        c = -c
    h, bound_active, fell_back = bounded_hypergradient(g, c, args.hypergrad_bound)
    return h, c, x, bound_active, fell_back


def ihvp_residual(hvp, x, v, rho):
    """||(H + rho I) x - v|| / ||v||: how well x solves the regularized system (one extra Hessian-vector product)."""
    return ((hvp(x) + rho * x - v).norm() / v.norm()).item()


def save_model(path, agent):
    torch.save({"agent": agent.state_dict()}, path)


def evaluate(model_path, env_id, eval_episodes=10, seed=1, deterministic=True, device="cpu"):
    """Run a saved policy for `eval_episodes` episodes; return the undiscounted episodic returns."""
    envs = make_envs(env_id, 1, False, "eval")
    checkpoint = torch.load(model_path, map_location=device, weights_only=False)
    agent = Agent(np.prod(envs.single_observation_space.shape), envs.single_action_space.n).to(device)
    agent.load_state_dict(checkpoint["agent"])
    agent.eval()
    obs, _ = envs.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32, device=device)
            actions = agent.actor(x).argmax(-1) if deterministic else agent.get_action(x)[0]
        obs, _, _, _, infos = envs.step(actions.cpu().numpy())
        episodic_returns += [r for r, _ in finished_episodes(infos)]
    envs.close()
    return episodic_returns[:eval_episodes]


if __name__ == "__main__":
    args = tyro.cli(Args)
    check_args(args)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    envs = make_envs(args.env_id, args.num_envs, args.capture_video, run_name)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    coord_generator = torch.Generator().manual_seed(args.seed)  # Nystrom coordinates, fresh every call

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    obs_dim = np.prod(envs.single_observation_space.shape)
    agent = Agent(obs_dim, envs.single_action_space.n).to(device)
    actor_params = agent.actor_parameters()
    actor_optimizer = optim.Adam(actor_params, lr=args.actor_lr, eps=1e-5, fused=True)
    critic_optimizer = optim.Adam(agent.critic.parameters(), lr=args.critic_lr, eps=1e-5, fused=True)
    critic_fn = functional_critic(agent.critic)
    num_critic_params = sum(p.numel() for p in agent.critic.parameters())
    if args.nystrom_rank > num_critic_params:
        fail(
            f"--nystrom-rank {args.nystrom_rank} exceeds the critic's {num_critic_params} parameters; "
            "pick a smaller rank"
        )

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
    next_obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    next_obs = torch.Tensor(next_obs).to(device)
    next_done = torch.zeros(args.num_envs).to(device)

    for iteration in range(1, args.num_iterations + 1):
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            actor_optimizer.param_groups[0]["lr"] = frac * args.actor_lr
            critic_optimizer.param_groups[0]["lr"] = frac * args.critic_lr

        # 1. Rollout: num_steps x num_envs transitions with the current policy
        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic
            with torch.inference_mode():
                action, logprob, _ = agent.get_action(next_obs)
                values[step] = agent.get_value(next_obs)
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

        # 2. Advantages: the critic's targets G = A + V once per rollout; the actor's advantages are
        # recomputed from the current critic in every minibatch, A(w) = D delta(w) (or anchored to these)
        with torch.no_grad():
            next_value = agent.get_value(next_obs)
            advantages, returns = compute_gae(
                rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda
            )
            discount = gae_discount_matrix(dones, next_done, args.gamma, args.gae_lambda)
            rollout_adv_mean, rollout_adv_std = advantages.mean(), advantages.std()

        # 3. Update: update_epochs passes over minibatches, each a bilevel step (critic K times, then actor).
        # A minibatch is whole trajectory segments of some envs, so A(w) is recomputed from their states alone.
        env_inds = np.arange(args.num_envs)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(env_inds)
            for start in range(0, args.num_envs, args.envs_per_minibatch):
                mb_envs = env_inds[start : start + args.envs_per_minibatch]
                mb_returns = returns[:, mb_envs].reshape(-1)
                mb_states = torch.cat([obs[:, mb_envs], next_obs[None, mb_envs]]).flatten(0, 1)  # + bootstrap states
                mb_obs = mb_states[: -len(mb_envs)]  # the segments' own states, step-major

                # 3a. Nested critic: K optimizer steps on L(w) = mean (V_w(s) - G)^2, toward w*(theta)
                for _ in range(args.nested_updates):
                    v_loss = ((agent.get_value(mb_obs) - mb_returns) ** 2).mean()
                    critic_optimizer.zero_grad()
                    v_loss.backward()
                    nn.utils.clip_grad_norm_(agent.critic.parameters(), args.max_grad_norm)
                    critic_optimizer.step()

                # 3b. Actor loss l(theta, w): clipped surrogate with advantages that depend on w through A(w)
                w = flat(agent.critic.parameters()).detach().requires_grad_(args.hypergrad)
                with torch.set_grad_enabled(args.hypergrad):
                    mb_values = critic_fn(w, mb_states).view(args.num_steps + 1, len(mb_envs))
                    deltas = td_errors(
                        mb_values[:-1],
                        mb_values[-1],
                        rewards[:, mb_envs],
                        dones[:, mb_envs],
                        next_done[mb_envs],
                        args.gamma,
                    )
                    mb_advantages = torch.einsum("ets,se->te", discount[mb_envs], deltas).reshape(-1)
                    if args.adv_values == "rollout":
                        # the critic was just fitted to these samples' returns, which moves part of each action's
                        # credit into V; keep the rollout's values, and A(w)'s dependence on w for v = grad_w l
                        mb_advantages = anchored_advantages(advantages[:, mb_envs].reshape(-1), mb_advantages)

                _, newlogprob, entropy = agent.get_action(mb_obs, actions[:, mb_envs].reshape(-1).long())
                logratio = newlogprob - logprobs[:, mb_envs].reshape(-1)
                ratio = logratio.exp()

                with torch.no_grad():
                    # calculate approx_kl http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]

                if args.norm_adv:
                    # the minibatch's own mean also removes a shift shared by all its values, most of what the
                    # hypergradient corrects; the rollout's statistics are constants in w and keep it
                    if args.norm_adv_stats == "rollout":
                        adv_mean, adv_std = rollout_adv_mean, rollout_adv_std
                    else:
                        adv_mean, adv_std = mb_advantages.mean(), mb_advantages.std()
                    mb_advantages = (mb_advantages - adv_mean) / (adv_std + 1e-8)

                # Policy loss: -min(r A, clip(r, 1 - eps, 1 + eps) A)
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()
                entropy_loss = entropy.mean()
                actor_loss = pg_loss - args.ent_coef * entropy_loss

                actor_optimizer.zero_grad()
                if args.hypergrad:
                    # 3c. Direct gradients g = grad_theta l, v = grad_w l in one backward pass, then the
                    # hypergradient h = g - (d^2 L / d theta d w)(H + rho I)^-1 v, bounded
                    *g_parts, v = torch.autograd.grad(actor_loss, actor_params + [w], retain_graph=True)
                    g = flat(g_parts)
                    critic_loss = ((mb_values[:-1].reshape(-1) - mb_returns) ** 2).mean()  # L(w) at this w
                    hvp = make_hvp(critic_loss, w)
                    h, c, x, bound_active, fell_back = hypergradient(
                        g, v, hvp, ratio, actor_params, critic_fn, w, mb_obs, mb_returns, args, coord_generator
                    )
                    stats.add(g, c, bound_active, fell_back)
                    set_grads(actor_params, h)
                else:
                    actor_loss.backward()
                # 3d. Actor step: clip the gradient's global norm, then Adam
                nn.utils.clip_grad_norm_(actor_params, args.max_grad_norm)
                actor_optimizer.step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        y_pred, y_true = values.cpu().numpy(), returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        # 4. Logging
        sps = int(global_step / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", actor_optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        if args.hypergrad:
            for name, value in stats.pop_means().items():
                writer.add_scalar(f"hypergrad/{name}", value, global_step)
            writer.add_scalar("hypergrad/nonfinite_fallbacks", stats.fallbacks, global_step)
            residual = ihvp_residual(hvp, x, v, args.nystrom_rho)
            writer.add_scalar("hypergrad/ihvp_residual", residual, global_step)
        progress.update(args.batch_size)
        progress.set_postfix(SPS=sps, ret=f"{np.mean(recent_returns):.1f}" if recent_returns else "-", refresh=False)

    progress.close()
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        save_model(model_path, agent)
        print(f"model saved to {model_path}")
        returns = evaluate(model_path, args.env_id, eval_episodes=10, seed=args.seed, device=device)
        for idx, episodic_return in enumerate(returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
