"""The continuous scripts' own pieces: the MuJoCo env pipeline (normalization, clipping, raw episode statistics),
GAE (in all three scripts), and the Gaussian policy. What the scripts do alike is tested in test_scripts.py."""

import importlib
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import CONTINUOUS_SCRIPTS, SCRIPTS

import ppo_continuous

pytestmark = pytest.mark.usefixtures("run_in_tmp_cwd")


@pytest.fixture(params=CONTINUOUS_SCRIPTS)
def continuous_script(request):
    """ppo_continuous or blpo_continuous, which share the Gaussian policy and the env pipeline."""
    return importlib.import_module(request.param)


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


@pytest.mark.parametrize("script", SCRIPTS)
def test_compute_gae_hand_worked_example(script):
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

    compute_gae = importlib.import_module(script).compute_gae
    advantages, returns = compute_gae(rewards, values, dones, next_value, next_done, 0.5, 0.5)
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
