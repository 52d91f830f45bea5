# PPO for continuous actions, after CleanRL's ppo_continuous_action.py: the baseline BLPO is measured against.
# Needs gymnasium >= 1.1 and torch >= 2.4: pip install -r requirements.txt
import math
import os
import random
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
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
    learning_rate: float = 3e-4  # the learning rate of the optimizer
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
    """A rollout flattened step-major: sample i is step i // num_envs of env i % num_envs."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor


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


def update_minibatch(agent, optimizer, batch, mb_inds, args):
    """One optimizer step of PPO's loss on the samples mb_inds."""
    mb_obs, mb_returns, mb_values = batch.obs[mb_inds], batch.returns[mb_inds], batch.values[mb_inds]
    _, newlogprob, entropy, newvalue = agent.get_action_and_value(mb_obs, batch.actions[mb_inds])
    logratio = newlogprob - batch.logprobs[mb_inds]
    ratio = logratio.exp()

    with torch.no_grad():
        # calculate approx_kl http://joschu.net/blog/kl-approx.html
        old_approx_kl = (-logratio).mean()
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()

    mb_advantages = batch.advantages[mb_inds]
    if args.norm_adv:
        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

    pg_loss = clipped_surrogate(ratio, mb_advantages, args.clip_coef)
    v_loss = value_loss(newvalue, mb_values, mb_returns, args.clip_coef, args.clip_vloss)
    entropy_loss = entropy.mean()
    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    losses = dict(value_loss=v_loss, policy_loss=pg_loss, entropy=entropy_loss)
    losses |= dict(old_approx_kl=old_approx_kl, approx_kl=approx_kl, clipfrac=clipfrac)
    return {name: t.item() for name, t in losses.items()}


# Plumbing: the checks before the first step, the checkpoint and its evaluation
def check_args(args: Args) -> None:
    """ValueError naming the first setting that cannot run, or the package that is too old."""
    versions = [(m.__name__, m.__version__, need) for m, need in ((gym, "1.1"), (torch, "2.4"))]
    too_old = [f"{name} {v} is too old (< {need})" for name, v, need in versions if TorchVersion(v) < need]
    batch_size = args.num_envs * args.num_steps
    counts = ["num_envs", "num_steps", "num_minibatches", "update_epochs", "total_timesteps"]
    for bad, message in [
        (too_old, "; ".join(too_old) + ": pip install -r requirements.txt"),
        *[(getattr(args, n) < 1, f"--{n.replace('_', '-')} {getattr(args, n)} is less than 1") for n in counts],
        ("/" in args.exp_name, f"--exp-name {args.exp_name!r} contains '/', but it names the run directory"),
        (batch_size % max(args.num_minibatches, 1), f"--num-minibatches does not divide the {batch_size} steps"),
        (args.total_timesteps < batch_size, f"--total-timesteps is less than one batch ({batch_size} steps)"),
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
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)

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

            batch = Batch(*[t.flatten(0, 1) for t in (obs, actions, logprobs, advantages, returns, values)])

            # 3. Update: update_epochs passes of clipped-surrogate minibatch steps
            b_inds = np.arange(args.batch_size)
            clipfracs = []
            for epoch in range(args.update_epochs):
                np.random.shuffle(b_inds)
                for start in range(0, args.batch_size, args.minibatch_size):
                    mb_inds = b_inds[start : start + args.minibatch_size]
                    losses = update_minibatch(agent, optimizer, batch, mb_inds, args)
                    clipfracs.append(losses["clipfrac"])

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
