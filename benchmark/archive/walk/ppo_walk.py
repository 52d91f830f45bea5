# PPO for continuous actions, after CleanRL's ppo_continuous_action.py, on Gymnasium 1.x.
# The baseline every BLPO claim in this repository is measured against.
# ppo_walk.py: a one-off copy of ppo_continuous.py with flags that switch PPO's machinery, one piece at a
# time, to the old BLPO machinery (see benchmark/walk/README.md); with no flag it is the original.
import math
import os
import random
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

os.environ.setdefault("MUJOCO_GL", "egl")
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
    env_id: str = "HalfCheetah-v4"
    """the id of the environment"""
    total_timesteps: int = 1000000
    """total timesteps of the experiments"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
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
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """Toggles advantages normalization"""
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

    # The walk's switches (defaults: PPO's behaviour)
    shared_norm_stats: bool = False
    """normalize (and clip) observations and rewards with vector wrappers: one set of statistics for all envs"""
    segment_minibatches: bool = False
    """minibatches of whole segments: num_envs / num_minibatches envs' consecutive steps, envs shuffled per epoch"""
    separate_clip: bool = False
    """two Adam optimizers (actor, critic), losses backpropagated separately, each gradient norm clipped alone"""
    rollout_adv_stats: bool = False
    """normalize advantages with the whole rollout's mean and std instead of each minibatch's"""
    critic_lr_scale: float = 1.0
    """the critic's learning rate as a multiple of the actor's (annealed alike)"""

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
    for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs", "total_timesteps"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    args.batch_size = args.num_envs * args.num_steps
    if args.batch_size % args.num_minibatches:
        fail(
            f"batch size {args.batch_size} (num-envs x num-steps) is not divisible by "
            f"--num-minibatches {args.num_minibatches}; pick sizes that divide"
        )
    args.minibatch_size = args.batch_size // args.num_minibatches
    if args.segment_minibatches and args.num_envs % args.num_minibatches:
        fail(f"--segment-minibatches needs --num-envs {args.num_envs} divisible by --num-minibatches")
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.num_iterations < 1:
        fail(f"--total-timesteps {args.total_timesteps} is smaller than one batch of {args.batch_size} steps")
    try:
        gym.spec(args.env_id)
    except gym.error.Error as e:
        fail(f"unknown env id {args.env_id!r} ({e}); pass a registered Gymnasium id such as HalfCheetah-v4")


def make_env(env_id, idx, capture_video, run_name, gamma, normalize=True):
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
        if not normalize:
            return env  # make_envs normalizes the vector env instead
        env = gym.wrappers.NormalizeObservation(env)
        env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), env.observation_space)
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        env = gym.wrappers.TransformReward(env, lambda reward: np.clip(reward, -10, 10))
        return env

    return thunk


def make_envs(env_id, num_envs, capture_video, run_name, gamma, shared_norm_stats=False):
    """Vector env with same-step autoreset: a done step returns the next episode's first observation,
    exactly as CleanRL's Gymnasium 0.29 scripts assume; the finished episode's statistics arrive in
    `infos["final_info"]`. With `shared_norm_stats` the observation and reward normalization wrap the
    vector env, so that all envs share one set of statistics; episode statistics stay per env and raw."""
    try:
        envs = gym.vector.SyncVectorEnv(
            [
                make_env(env_id, i, capture_video, run_name, gamma, normalize=not shared_norm_stats)
                for i in range(num_envs)
            ],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
    except gym.error.Error as e:
        fail(f"cannot make {env_id!r}: {e}")
    if not isinstance(envs.single_action_space, gym.spaces.Box):
        fail(
            f"{env_id} has a {type(envs.single_action_space).__name__} action space; "
            "this script needs a continuous (Box) one (use blpo_discrete.py)"
        )
    if shared_norm_stats:
        envs = shared_normalization(envs, gamma)
    return envs


def shared_normalization(envs, gamma):
    """The per-env normalization and clipping of `make_env`, as Gymnasium's vector wrappers around `envs`.

    Gymnasium's vector observation wrappers refuse a same-step autoreset env when they are built, because
    they leave `infos["final_obs"]` untransformed; this script never reads `final_obs` (the observation a
    done step returns is the next episode's first, which they do transform), so they are built while the
    metadata claims next-step autoreset, then the metadata is put back. NormalizeReward reads the metadata
    when it is built, after that, and so handles the same-step autoreset itself."""
    metadata = envs.metadata  # the SyncVectorEnv's own dict, which every vector wrapper returns
    autoreset_mode = metadata["autoreset_mode"]
    metadata["autoreset_mode"] = gym.vector.AutoresetMode.NEXT_STEP
    try:
        envs = gym.wrappers.vector.NormalizeObservation(envs)
        envs = gym.wrappers.vector.TransformObservation(envs, lambda obs: np.clip(obs, -10, 10), envs.observation_space)
    finally:
        metadata["autoreset_mode"] = autoreset_mode
    envs = gym.wrappers.vector.NormalizeReward(envs, gamma=gamma)
    envs = gym.wrappers.vector.TransformReward(envs, lambda reward: np.clip(reward, -10, 10))
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


def obs_normalizer(envs):
    """The NormalizeObservation wrapper whose statistics belong to the trained policy: the shared one around
    the vector env if there is one, else the first env's."""
    env = envs
    while isinstance(env, gym.vector.VectorWrapper):
        if isinstance(env, gym.wrappers.vector.NormalizeObservation):
            return env
        env = env.env
    env = env.envs[0]
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


def evaluate(model_path, env_id, eval_episodes=10, seed=1, gamma=0.99, deterministic=True, device="cpu"):
    """Run a saved policy for `eval_episodes` episodes with frozen observation statistics; return the
    undiscounted episodic returns."""
    envs = make_envs(env_id, 1, False, "eval", gamma)
    checkpoint = torch.load(model_path, map_location=device, weights_only=False)
    normalizer = obs_normalizer(envs)
    normalizer.update_running_mean = False
    obs_rms = normalizer.obs_rms
    obs_rms.mean, obs_rms.var, obs_rms.count = (checkpoint["obs_rms"][k] for k in ("mean", "var", "count"))
    agent = Agent(np.prod(envs.single_observation_space.shape), np.prod(envs.single_action_space.shape)).to(device)
    agent.load_state_dict(checkpoint["agent"])
    agent.eval()
    obs, _ = envs.reset(seed=seed)
    episodic_returns = []
    while len(episodic_returns) < eval_episodes:
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32, device=device)
            actions = agent.actor_mean(x) if deterministic else agent.get_action_and_value(x)[0]
        obs, _, _, _, infos = envs.step(actions.cpu().numpy())
        episodic_returns += [r for r, _ in finished_episodes(infos)]
    envs.close()
    return episodic_returns[:eval_episodes]


if __name__ == "__main__":
    args = tyro.cli(Args)
    check_args(args)
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    envs = make_envs(args.env_id, args.num_envs, args.capture_video, run_name, args.gamma, args.shared_norm_stats)
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
    actor_params = [*agent.actor_mean.parameters(), agent.actor_logstd]
    critic_params = list(agent.critic.parameters())
    critic_lr = args.critic_lr_scale * args.learning_rate
    if args.separate_clip:
        optimizer = optim.Adam(actor_params, lr=args.learning_rate, eps=1e-5, fused=True)
        critic_optimizer = optim.Adam(critic_params, lr=critic_lr, eps=1e-5, fused=True)
        optimizers = [(optimizer, args.learning_rate), (critic_optimizer, critic_lr)]
    elif args.critic_lr_scale != 1.0:
        param_groups = [{"params": actor_params}, {"params": critic_params, "lr": critic_lr}]
        optimizer = optim.Adam(param_groups, lr=args.learning_rate, eps=1e-5, fused=True)
        optimizers = [(optimizer, args.learning_rate)]  # the critic group is annealed below
    else:
        optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
        optimizers = [(optimizer, args.learning_rate)]

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
    progress = tqdm(total=args.num_iterations * args.batch_size, unit="step", mininterval=1.0, dynamic_ncols=True)
    next_obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    next_obs = torch.Tensor(next_obs).to(device)
    next_done = torch.zeros(args.num_envs).to(device)

    for iteration in range(1, args.num_iterations + 1):
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            for opt, lr in optimizers:
                opt.param_groups[0]["lr"] = frac * lr
            if len(optimizer.param_groups) > 1:
                optimizer.param_groups[1]["lr"] = frac * critic_lr

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

        # 2. Advantages: GAE(gamma, lambda) with the rollout's values, bootstrapped from the last observation
        with torch.no_grad():
            next_value = agent.get_value(next_obs)
            advantages, returns = compute_gae(
                rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda
            )

        # flatten the batch
        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape((-1,) + envs.single_action_space.shape)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)

        if args.rollout_adv_stats:
            b_adv_mean, b_adv_std = b_advantages.mean(), b_advantages.std()

        # 3. Update: update_epochs passes of clipped-surrogate minibatch steps
        b_inds = np.arange(args.batch_size)
        env_inds = np.arange(args.num_envs)
        envs_per_minibatch = args.num_envs // args.num_minibatches
        step_offsets = np.arange(args.num_steps) * args.num_envs  # b_obs[t * num_envs + e] is env e's step t
        clipfracs = []
        for epoch in range(args.update_epochs):
            if args.segment_minibatches:
                np.random.shuffle(env_inds)
                # minibatch k: the consecutive steps of envs env_inds[k * envs_per_minibatch : (k + 1) * ...]
                b_inds = (env_inds[:, None] + step_offsets[None, :]).reshape(-1)
            else:
                np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                end = start + args.minibatch_size
                mb_inds = b_inds[start:end]

                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()

                with torch.no_grad():
                    # calculate approx_kl http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]

                mb_advantages = b_advantages[mb_inds]
                if args.norm_adv and args.rollout_adv_stats:
                    mb_advantages = (mb_advantages - b_adv_mean) / (b_adv_std + 1e-8)
                elif args.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                # Policy loss: -min(r A, clip(r, 1 - eps, 1 + eps) A)
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                # Value loss
                if args.clip_vloss:
                    v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(
                        newvalue - b_values[mb_inds],
                        -args.clip_coef,
                        args.clip_coef,
                    )
                    v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                    v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
                    v_loss = 0.5 * v_loss_max.mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                if args.separate_clip:
                    # the actor's and the critic's parameters are disjoint: each loss reaches one network only
                    optimizer.zero_grad()
                    critic_optimizer.zero_grad()
                    (pg_loss - args.ent_coef * entropy_loss).backward()
                    (v_loss * args.vf_coef).backward()
                    nn.utils.clip_grad_norm_(actor_params, args.max_grad_norm)
                    nn.utils.clip_grad_norm_(critic_params, args.max_grad_norm)
                    optimizer.step()
                    critic_optimizer.step()
                else:
                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        # 4. Logging
        sps = int(global_step / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        progress.update(args.batch_size)
        progress.set_postfix(SPS=sps, ret=f"{np.mean(recent_returns):.1f}" if recent_returns else "-", refresh=False)

    progress.close()
    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        save_model(model_path, agent, envs)
        print(f"model saved to {model_path}")
        returns = evaluate(model_path, args.env_id, eval_episodes=10, seed=args.seed, gamma=args.gamma, device=device)
        for idx, episodic_return in enumerate(returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)

    envs.close()
    writer.close()
