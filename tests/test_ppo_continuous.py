"""Tests for ppo_continuous.py: env pipeline, GAE, Gaussian policy, and the script end to end.

The Gaussian policy and action clipping checks also run on blpo_continuous.py, which shares that code.
"""

import ctypes.util
import importlib
import math
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from scripts import (
    CLEANRL_TAGS,
    assert_fails_with_one_error_line,
    finish_script,
    only_run_dir,
    read_scalars,
    record_calls,
    run_scripts,
    start_script,
    wait_for_text,
)

import ppo_continuous
from benchmark.in_process import load_script, run_main

# Two iterations of 256 steps on one Hopper env: episodes end, the whole run takes seconds.
TINY_RUN = ["ppo_continuous.py", "--env-id", "Hopper-v4", "--total-timesteps", "512", "--num-steps", "256"]
TINY_RUN += ["--num-minibatches", "4", "--update-epochs", "1", "--seed", "7"]
CONTINUOUS_SCRIPTS = ["ppo_continuous", "blpo_continuous"]
ALL_SCRIPTS = [*CONTINUOUS_SCRIPTS, "blpo_discrete"]

pytestmark = pytest.mark.usefixtures("run_in_tmp_cwd")


@pytest.fixture(params=CONTINUOUS_SCRIPTS)
def continuous_script(request):
    """ppo_continuous or blpo_continuous, which share the Gaussian policy and the env pipeline."""
    return importlib.import_module(request.param)


def find_wrapper(env: gym.Env, wrapper_type: type) -> gym.Wrapper:
    """The outermost wrapper of `wrapper_type` in `env`'s wrapper chain."""
    while not isinstance(env, wrapper_type):
        assert isinstance(env, gym.Wrapper), f"no {wrapper_type.__name__} in the wrapper chain"
        env = env.env
    return env


# ---------------------------------------------------------------------------------------------------------------
# 1. Environment pipeline
# ---------------------------------------------------------------------------------------------------------------


class SpikeEnv(gym.Env):
    """Zero observations and rewards, then huge raw spikes of both signs: forces the [-10, 10] clips to act.

    A lone outlier among n samples has a z-score of about sqrt(n), so after 200 quiet steps the normalized
    spike is about 14 and must come out clipped to exactly 10.
    """

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    SPIKE_STEP = 200

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3), {}

    def step(self, action):
        self.t += 1
        obs, reward = np.zeros(3), 0.0
        if self.t == self.SPIKE_STEP:
            obs, reward = np.array([1e6, -1e6, 0.0]), 1e6
        elif self.t == self.SPIKE_STEP + 1:
            reward = -1e9
        return obs, reward, False, False, {}


@pytest.fixture(scope="module")
def spike_env_id():
    """Register SpikeEnv for the duration of this module."""
    env_id = "TestPpoSpike-v0"
    gym.register(env_id, entry_point=SpikeEnv)
    yield env_id
    del gym.registry[env_id]


def test_make_envs_shapes_and_bounds():
    """HalfCheetah through make_envs: (2, 17) observations, observations and rewards stay within [-10, 10]."""
    envs = ppo_continuous.make_envs("HalfCheetah-v4", 2, False, "x", 0.99)
    obs, _ = envs.reset(seed=0)
    envs.action_space.seed(0)
    assert obs.shape == (2, 17)
    assert envs.single_action_space.shape == (6,)
    all_obs, all_rewards = [obs], []
    for _ in range(300):
        obs, reward, _, _, _ = envs.step(envs.action_space.sample())
        all_obs.append(obs)
        all_rewards.append(reward)
    envs.close()
    all_obs, all_rewards = np.stack(all_obs), np.stack(all_rewards)
    assert all_obs.shape == (301, 2, 17) and all_rewards.shape == (300, 2)
    assert np.all(np.abs(all_obs) <= 10) and np.all(np.abs(all_rewards) <= 10)
    assert np.isfinite(all_obs).all() and np.isfinite(all_rewards).all()
    assert all_obs.std() > 0.1, "observations should be normalized, not collapsed"


def test_large_raw_observations_and_rewards_are_clipped_to_10(spike_env_id):
    """Raw values of +-1e6 and -1e9 reach the agent as exactly +-10 after normalization and clipping."""
    env = ppo_continuous.make_env(spike_env_id, 0, False, "x", 0.99)()
    env.reset(seed=0)
    for _ in range(SpikeEnv.SPIKE_STEP - 1):
        obs, reward, *_ = env.step(env.action_space.sample())
        assert np.all(obs == 0) and reward == 0
    obs, reward, *_ = env.step(env.action_space.sample())
    np.testing.assert_array_equal(obs, [10.0, -10.0, 0.0])
    assert reward == 10.0
    _, reward, *_ = env.step(env.action_space.sample())
    assert reward == -10.0


def test_out_of_range_actions_are_clipped_before_the_simulator(continuous_script):
    """ClipAction: MuJoCo receives the action clipped to the [-1, 1] control range."""
    env = continuous_script.make_env("HalfCheetah-v4", 0, False, "x", 0.99)()
    env.reset(seed=0)
    env.step(np.array([5.0, -5.0, 0.5, -0.25, 100.0, -100.0]))
    np.testing.assert_array_equal(env.unwrapped.data.ctrl, [1.0, -1.0, 0.5, -0.25, 1.0, -1.0])
    env.close()


def test_finished_episode_reports_raw_return_and_length():
    """finished_episodes returns the unnormalized return of a Hopper episode, equal to a plain env's reward sum."""
    envs = ppo_continuous.make_envs("Hopper-v4", 1, False, "x", 0.99)
    raw_env = gym.make("Hopper-v4")
    envs.reset(seed=3)
    raw_env.reset(seed=3)  # vector env i is seeded with seed + i, so env 0 matches
    rng = np.random.default_rng(0)
    raw_rewards, seen_rewards = [], []
    done = False
    while not done:
        action = rng.uniform(-1.0, 1.0, size=3)
        _, raw_reward, terminated, truncated, _ = raw_env.step(action)
        _, reward, _, _, infos = envs.step(action[None])
        raw_rewards.append(raw_reward)
        seen_rewards.append(float(reward[0]))
        done = terminated or truncated
        if not done:
            assert ppo_continuous.finished_episodes(infos) == []
    envs.close()
    raw_env.close()
    raw_return = 0.0
    for r in raw_rewards:  # same summation order as RecordEpisodeStatistics, so the result is exact
        raw_return += r
    assert ppo_continuous.finished_episodes(infos) == [(raw_return, len(raw_rewards))]
    assert not math.isclose(sum(seen_rewards), raw_return, rel_tol=1e-3), "agent should see normalized rewards"


# ---------------------------------------------------------------------------------------------------------------
# 2. GAE
# ---------------------------------------------------------------------------------------------------------------


def test_compute_gae_hand_worked_example():
    """4 steps x 2 envs, gamma = lambda = 0.5 (so gamma * lambda = 0.25), worked out by hand.

    env 0: dones[2] = 1, so step 1 ends an episode (no bootstrap from values[2], no trace across it);
           the last step bootstraps from next_value = 8 (next_done = 0).
    env 1: next_done = 1, so the huge next_value = 100 must be ignored; dones[0] = 1 only concerns the
           previous rollout and must not change anything here.
    """
    rewards = torch.tensor([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [4.0, 2.0]])
    values = torch.tensor([[0.5, 1.0], [1.0, 2.0], [1.5, 2.0], [2.0, 4.0]])
    dones = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    next_value = torch.tensor([8.0, 100.0])
    next_done = torch.tensor([0.0, 1.0])

    # env 0, delta_t = r_t + 0.5 * V_next * nonterminal - V_t, A_t = delta_t + 0.25 * nonterminal * A_{t+1}
    a0_3 = 4 + 0.5 * 8 - 2  # = 6, bootstrap from next_value
    a0_2 = (3 + 0.5 * 2 - 1.5) + 0.25 * a0_3  # = 2.5 + 1.5 = 4
    a0_1 = 2 - 1  # = 1, episode ends: no bootstrap, no trace
    a0_0 = (1 + 0.5 * 1 - 0.5) + 0.25 * a0_1  # = 1 + 0.25 = 1.25
    # env 1
    a1_3 = 2 - 4  # = -2, next_done: next_value ignored
    a1_2 = (0 + 0.5 * 4 - 2) + 0.25 * a1_3  # = 0 - 0.5 = -0.5
    a1_1 = (1 + 0.5 * 2 - 2) + 0.25 * a1_2  # = 0 - 0.125 = -0.125
    a1_0 = (0 + 0.5 * 2 - 1) + 0.25 * a1_1  # = 0 - 0.03125 = -0.03125
    expected = torch.tensor([[a0_0, a1_0], [a0_1, a1_1], [a0_2, a1_2], [a0_3, a1_3]])
    assert expected.tolist() == [[1.25, -0.03125], [1.0, -0.125], [4.0, -0.5], [6.0, -2.0]]

    advantages, returns = ppo_continuous.compute_gae(rewards, values, dones, next_value, next_done, 0.5, 0.5)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(returns, expected + values, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# 3. Gaussian policy
# ---------------------------------------------------------------------------------------------------------------


def test_gaussian_log_prob_and_entropy_match_torch_normal(continuous_script):
    """Diagonal Gaussian log-prob and entropy, summed over 3 action dims, equal torch.distributions.Normal's."""
    mean = torch.tensor([[0.0, 1.0, -2.0], [0.5, -0.5, 3.0]])
    logstd = torch.tensor([[0.0, -1.0, 0.7], [0.3, 0.0, -2.0]])
    action = torch.tensor([[0.1, 2.0, -2.5], [0.0, 0.0, 3.1]])
    normal = torch.distributions.Normal(mean, logstd.exp())
    log_prob = continuous_script.gaussian_log_prob(action, mean, logstd)
    entropy = continuous_script.gaussian_entropy(logstd)
    assert log_prob.shape == entropy.shape == (2,)
    torch.testing.assert_close(log_prob, normal.log_prob(action).sum(-1))
    torch.testing.assert_close(entropy, normal.entropy().sum(-1))
    # One value by hand: N(0; 0, 1) has log-density -0.5 * log(2 pi)
    zero = torch.zeros(1, 1)
    assert continuous_script.gaussian_log_prob(zero, zero, zero).item() == pytest.approx(-0.5 * math.log(2 * math.pi))


def act(agent, x, action=None):
    """(action, log_prob, entropy, value) from either script's Agent."""
    return agent.get_action_and_value(x, action)


def test_agent_get_action_and_value_is_consistent(continuous_script):
    """The agent scores a given action with the Gaussian helpers and returns the critic's value."""
    torch.manual_seed(0)
    agent = continuous_script.Agent(5, 3)
    with torch.no_grad():
        agent.actor_logstd.copy_(torch.tensor([[0.2, -0.4, 0.1]]))
    x = torch.randn(4, 5)
    given = torch.randn(4, 3)
    action, log_prob, entropy, value = act(agent, x, given)
    assert action is given
    with torch.no_grad():
        normal = torch.distributions.Normal(agent.actor_mean(x), agent.actor_logstd.exp().expand(4, 3))
        torch.testing.assert_close(log_prob, normal.log_prob(given).sum(-1))
        torch.testing.assert_close(entropy, normal.entropy().sum(-1))
        torch.testing.assert_close(value, agent.critic(x).squeeze(-1))
    assert log_prob.shape == entropy.shape == value.shape == (4,)

    sampled, sampled_log_prob, _, _ = act(agent, x)
    assert sampled.shape == (4, 3)
    with torch.no_grad():
        torch.testing.assert_close(sampled_log_prob, normal.log_prob(sampled).sum(-1))


# ---------------------------------------------------------------------------------------------------------------
# 4-6, 8. End-to-end runs (launched together once for the module)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Three tiny Hopper runs started concurrently: two identical seeded runs with --save-model, one with --track."""
    root = tmp_path_factory.mktemp("tiny_runs")
    wandb_env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(root / "tracked"),
        "WANDB_CONFIG_DIR": str(root / "wandb_home"),
        "WANDB_CACHE_DIR": str(root / "wandb_home"),
        "WANDB_DATA_DIR": str(root / "wandb_home"),
    }
    commands = {
        "first": [*TINY_RUN, "--save-model"],
        "twin": [*TINY_RUN, "--save-model"],
        "tracked": [*TINY_RUN, "--track"],
    }
    return run_scripts(root, commands, envs={"tracked": wandb_env})


def test_training_run_logs_cleanrl_metrics(tiny_runs):
    """A tiny run writes every CleanRL scalar, once per iteration, with the annealed learning rate."""
    scalars = read_scalars(tiny_runs["first"].run_dir())
    missing = [tag for tag in CLEANRL_TAGS if tag not in scalars]
    assert not missing, f"missing tags {missing}; got {sorted(scalars)}"
    for tag in CLEANRL_TAGS:
        if tag.startswith("losses/") or tag in ("charts/learning_rate", "charts/SPS"):
            assert [step for step, _ in scalars[tag]] == [256, 512], tag  # once per iteration
            assert all(math.isfinite(v) for _, v in scalars[tag]), tag
    lrs = [v for _, v in scalars["charts/learning_rate"]]
    assert lrs == pytest.approx([3e-4, 1.5e-4])  # frac = 1 - (iteration - 1) / 2, logged after the update
    returns, lengths = scalars["charts/episodic_return"], scalars["charts/episodic_length"]
    assert len(returns) == len(lengths) >= 2
    assert all(0 < step <= 512 and math.isfinite(v) for step, v in returns)
    assert all(1 <= v <= 512 and v == int(v) for _, v in lengths)
    assert sum(v for _, v in lengths) <= 512


def test_track_offline_creates_wandb_run(tiny_runs):
    """--track with WANDB_MODE=offline exits 0 without network and writes an offline run under wandb/."""
    tiny_runs["tracked"].run_dir()
    cwd = tiny_runs["tracked"].cwd
    offline_runs = list((cwd / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, list((cwd / "wandb").iterdir()) if (cwd / "wandb").exists() else "no wandb/"
    assert list(offline_runs[0].glob("run-*.wandb")), "offline run has no .wandb log"


def test_same_seed_gives_identical_scalars_and_weights(tiny_runs):
    """Two runs with the same seed log the same numbers (all but SPS) and save the same weights."""
    first, twin = tiny_runs["first"].run_dir(), tiny_runs["twin"].run_dir()
    first_scalars, twin_scalars = read_scalars(first), read_scalars(twin)
    assert sorted(first_scalars) == sorted(twin_scalars)
    assert first_scalars["losses/value_loss"] == twin_scalars["losses/value_loss"]
    assert first_scalars["charts/episodic_return"] == twin_scalars["charts/episodic_return"]
    for tag in first_scalars:
        if tag != "charts/SPS":
            np.testing.assert_array_equal(first_scalars[tag], twin_scalars[tag], err_msg=tag)
    first_ckpt = torch.load(first / "ppo_continuous.pt", weights_only=False)
    twin_ckpt = torch.load(twin / "ppo_continuous.pt", weights_only=False)
    for key, tensor in first_ckpt["agent"].items():
        assert torch.equal(tensor, twin_ckpt["agent"][key]), key


@pytest.fixture(scope="module")
def saved_model(tiny_runs):
    """(path, checkpoint, scalars) of the first tiny run's saved model."""
    run_dir = tiny_runs["first"].run_dir()
    path = run_dir / "ppo_continuous.pt"
    assert path.is_file(), f"--save-model wrote no {path.name}; run dir holds {[p.name for p in run_dir.iterdir()]}"
    return path, torch.load(path, weights_only=False), read_scalars(run_dir)


def test_saved_model_holds_weights_and_obs_statistics(saved_model):
    """The checkpoint has actor, critic and log-std weights plus the training env's observation statistics."""
    _, checkpoint, scalars = saved_model
    weights = checkpoint["agent"]
    assert weights["actor_logstd"].shape == (1, 3)
    assert weights["actor_mean.0.weight"].shape == (64, 11) and weights["actor_mean.4.weight"].shape == (3, 64)
    assert weights["critic.0.weight"].shape == (64, 11) and weights["critic.4.weight"].shape == (1, 64)
    stats = checkpoint["obs_rms"]
    assert stats["mean"].shape == stats["var"].shape == (11,)
    assert np.all(stats["var"] > 0) and np.isfinite(stats["mean"]).all()
    # Every observation the training env emitted updated the statistics: the first reset, 512 steps,
    # and one reset per finished episode (RunningMeanStd starts from a count of 1e-4).
    num_episodes = len(scalars["charts/episodic_return"])
    assert stats["count"] == pytest.approx(1 + 512 + num_episodes + 1e-4)


def test_evaluate_returns_finite_returns(saved_model):
    """evaluate on the saved model runs 2 Hopper episodes and returns 2 finite returns, logged as eval/."""
    path, _, scalars = saved_model
    returns = ppo_continuous.evaluate(path, "Hopper-v4", eval_episodes=2, seed=1)
    assert len(returns) == 2 and all(isinstance(r, float) and math.isfinite(r) for r in returns)
    assert len(scalars["eval/episodic_return"]) == 10  # the script's own evaluation after --save-model


def test_save_model_run_prints_its_evaluation(tiny_runs, saved_model):
    """The evaluation after --save-model prints its mean return, the mean of the eval/ returns it logs."""
    _, _, scalars = saved_model
    lines = [line for line in tiny_runs["first"].result.stdout.splitlines() if line.startswith("evaluation:")]
    mean = np.mean([value for _, value in scalars["eval/episodic_return"]])
    assert lines == [f"evaluation: mean return {mean:.2f} over 10 episodes"]


def test_evaluate_rejects_what_it_cannot_run(saved_model, tmp_path):
    """evaluate raises ValueError naming the problem, never SystemExit: an unknown env id, a checkpoint of another
    env's sizes, a checkpoint without observation statistics (blpo_discrete's), a file that is no checkpoint."""
    path, checkpoint, _ = saved_model
    with pytest.raises(ValueError, match="cannot make 'NoSuchEnv-v0'"):
        ppo_continuous.evaluate(path, "NoSuchEnv-v0")
    with pytest.raises(ValueError, match=r"does not fit ppo_continuous.py's agent on HalfCheetah-v4 .*resized"):
        ppo_continuous.evaluate(path, "HalfCheetah-v4", eval_episodes=1)
    torch.save({"agent": checkpoint["agent"]}, tmp_path / "no_stats.pt")
    with pytest.raises(ValueError, match="has no observation statistics"):
        ppo_continuous.evaluate(tmp_path / "no_stats.pt", "Hopper-v4", eval_episodes=1)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a checkpoint of --save-model"):
        ppo_continuous.evaluate(tmp_path / "list.pt", "Hopper-v4", eval_episodes=1)


@pytest.fixture
def recorded_evaluation(saved_model, monkeypatch):
    """Run evaluate on the saved model while recording the Agent and vector env it builds."""
    agents = record_calls(monkeypatch, ppo_continuous, "Agent")
    vector_envs = record_calls(monkeypatch, ppo_continuous, "make_envs")
    path, checkpoint, _ = saved_model
    ppo_continuous.evaluate(path, "Hopper-v4", eval_episodes=2, seed=1)
    assert len(agents) == len(vector_envs) == 1
    return checkpoint, agents[0], vector_envs[0]


def test_evaluate_loads_exact_weights(recorded_evaluation):
    """The evaluated agent carries exactly the saved weights."""
    checkpoint, agent, _ = recorded_evaluation
    loaded = agent.state_dict()
    assert loaded.keys() == checkpoint["agent"].keys()
    for key, tensor in checkpoint["agent"].items():
        assert torch.equal(loaded[key], tensor), key


def test_evaluate_uses_frozen_saved_obs_statistics(recorded_evaluation):
    """The evaluation env normalizes with exactly the saved observation statistics, left frozen while it runs."""
    checkpoint, _, envs = recorded_evaluation
    normalizer = find_wrapper(envs.envs[0], gym.wrappers.NormalizeObservation)
    assert not normalizer.update_running_mean, "observation statistics kept updating during evaluation"
    np.testing.assert_array_equal(normalizer.obs_rms.mean, checkpoint["obs_rms"]["mean"])
    np.testing.assert_array_equal(normalizer.obs_rms.var, checkpoint["obs_rms"]["var"])
    assert normalizer.obs_rms.count == checkpoint["obs_rms"]["count"]


# ---------------------------------------------------------------------------------------------------------------
# 7. Bad inputs
# ---------------------------------------------------------------------------------------------------------------

NO_DISPLAY = {"MUJOCO_GL": "glfw", "DISPLAY": "", "WAYLAND_DISPLAY": ""}
# The last cases are tiny runs, so that a check that goes missing shows up as a quick run that exits 0.
BAD_INPUTS = {
    "discrete-action-env": (["--env-id", "CartPole-v1"], "Discrete"),
    "unknown-env-id": (["--env-id", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
    "minibatches-do-not-divide": (["--num-steps", "100", "--num-minibatches", "32"], "not divisible"),
    "total-below-one-batch": (["--num-steps", "256", "--total-timesteps", "100"], "smaller than one batch"),
    "exp-name-with-slash": ([*TINY_RUN[1:], "--exp-name", "a/b", "--save-model"], "--exp-name 'a/b' contains '/'"),
    "runs-not-creatable": (TINY_RUN[1:], "cannot create the run directory runs/Hopper-v4__ppo_continuous__7__"),
    "mujoco-gl-unloadable": (TINY_RUN[1:], "MuJoCo cannot load its OpenGL backend MUJOCO_GL=osmesa"),
    "video-without-display": ([*TINY_RUN[1:], "--capture-video"], "cannot render 'Hopper-v4' for --capture-video"),
}
# PyOpenGL follows PYOPENGL_PLATFORM, which an in-process MuJoCo import of the test session may have set to egl
BAD_INPUT_ENVS = {
    "mujoco-gl-unloadable": {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"},
    "video-without-display": NO_DISPLAY,
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """All bad-input invocations, started concurrently once for the module; `runs-not-creatable` runs where a file
    named `runs` is in the way."""
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "runs-not-creatable").mkdir()
    (root / "runs-not-creatable" / "runs").write_text("")
    commands = {case: ["ppo_continuous.py", *args] for case, (args, _) in BAD_INPUTS.items()}
    return run_scripts(root, commands, BAD_INPUT_ENVS)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_with_one_error_line(bad_input_runs, case):
    """One `error:` line on stderr naming the problem, non-zero exit, no traceback."""
    if case == "mujoco-gl-unloadable" and ctypes.util.find_library("OSMesa"):
        pytest.skip("OSMesa is installed here, so MUJOCO_GL=osmesa loads")
    assert_fails_with_one_error_line(bad_input_runs[case].result, BAD_INPUTS[case][1])


# ---------------------------------------------------------------------------------------------------------------
# 9. Ctrl-C
# ---------------------------------------------------------------------------------------------------------------


def test_ctrl_c_saves_the_model_and_closes_the_events(tmp_path):
    """SIGINT after the first iteration of a long --save-model run: one line about it and no traceback, exit 130, the
    weights as they are saved, the TensorBoard events readable (the evaluation is skipped)."""
    proc = start_script([*TINY_RUN, "--total-timesteps", "10000000", "--save-model"], tmp_path, {}, interruptible=True)
    try:
        wait_for_text(tmp_path / "stderr.log", "SPS=", proc)  # the bar after the first iteration
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.send_signal(signal.SIGINT)
    result = finish_script(proc, tmp_path, timeout=120).result
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    notes = [line for line in (result.stdout + result.stderr).splitlines() if "interrupt" in line]
    assert len(notes) == 1 and notes[0].startswith("interrupted at step "), notes
    run_dir = only_run_dir(tmp_path)
    assert f"model saved to runs/{run_dir.name}/ppo_continuous.pt" in result.stdout
    checkpoint = torch.load(run_dir / "ppo_continuous.pt", weights_only=False)
    assert checkpoint.keys() == {"agent", "obs_rms"} and checkpoint["agent"]["actor_logstd"].shape == (1, 3)
    scalars = read_scalars(run_dir)
    assert len(scalars["charts/SPS"]) >= 1 and "eval/episodic_return" not in scalars


# ---------------------------------------------------------------------------------------------------------------
# 10. Shared by the three scripts: versions, importing
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_too_old_gymnasium_or_torch_is_named(script, monkeypatch):
    """check_versions names the package that is too old; gymnasium 1.0 has no AutoresetMode."""
    module = importlib.import_module(script)
    module.check_versions()
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.3.1"))
    with pytest.raises(RuntimeError, match=r"torch 2.3.1 is too old: this script needs torch >= 2.4"):
        module.check_versions()
    monkeypatch.delattr(gym.vector, "AutoresetMode")
    monkeypatch.setattr(gym, "__version__", "1.0.0")
    with pytest.raises(RuntimeError, match=r"gymnasium 1.0.0 is too old: this script needs gymnasium >= 1.1"):
        module.check_versions()


def test_too_old_gymnasium_stops_the_script_with_one_line(monkeypatch, tmp_path):
    """The script's main block turns it into an `error:` exit before anything runs."""
    monkeypatch.delattr(gym.vector, "AutoresetMode")
    monkeypatch.setattr(gym, "__version__", "1.0.0")
    with pytest.raises(SystemExit) as stop:
        run_main(load_script("ppo_continuous"), TINY_RUN[1:], tmp_path)
    assert str(stop.value.code).startswith("error: gymnasium 1.0.0 is too old"), stop.value.code
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_importing_a_script_leaves_the_environment_alone(script, monkeypatch):
    """MUJOCO_GL (and pygame's SDL_VIDEODRIVER) are the running script's defaults, not the importing program's."""
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    load_script(script)
    assert "MUJOCO_GL" not in os.environ and "SDL_VIDEODRIVER" not in os.environ
