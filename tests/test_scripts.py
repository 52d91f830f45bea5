"""What the three scripts do alike, tested once for all of them: the CleanRL metrics of a tiny run, --track, the same
numbers from the same seed, saving and evaluating the model, CleanRL's flag names, one `error:` line for every input
that cannot run, Ctrl-C, the version check, and importing a script."""

import ctypes.util
import importlib
import math
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
import tyro
from conftest import BLPO_SCRIPTS, CLEANRL_TAGS, CONTINUOUS_SCRIPTS, SCRIPTS, TINY
from gymnasium.wrappers.utils import RunningMeanStd
from scripts import (
    ScriptRuns,
    assert_fails_with_one_error_line,
    finish_script,
    only_run_dir,
    read_scalars,
    record_calls,
    start_script,
    wait_for_text,
)

from benchmark.in_process import load_script, run_main

pytestmark = pytest.mark.usefixtures("run_in_tmp_cwd")

# CleanRL's flags (ppo_continuous_action.py's and ppo.py's Args): every script takes them
CLEANRL_FLAGS = """exp_name seed torch_deterministic cuda track wandb_project_name wandb_entity capture_video save_model
env_id total_timesteps learning_rate num_envs num_steps anneal_lr gamma gae_lambda num_minibatches update_epochs
norm_adv clip_coef clip_vloss ent_coef vf_coef max_grad_norm target_kl""".split()
OTHER_FAMILY = {"ppo_continuous": "CartPole-v1", "blpo_continuous": "CartPole-v1", "blpo_discrete": "Hopper-v4"}
SAME_FAMILY = {"ppo_continuous": "HalfCheetah-v4", "blpo_continuous": "HalfCheetah-v4", "blpo_discrete": "Acrobot-v1"}
NO_DISPLAY = {"MUJOCO_GL": "glfw", "DISPLAY": "", "WAYLAND_DISPLAY": ""}  # MuJoCo's GLFW without a display


def bad_inputs(script: str) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """case -> (flags appended to the tiny run's, environment variables, text of the expected error line). Appended to
    a tiny run, a check that goes missing shows up as a quick run that exits 0."""
    env_id = TINY[script].env_id
    other_actions = "Discrete actions, not Box" if script in CONTINUOUS_SCRIPTS else "Box actions, not Discrete"
    cases = {
        "other-action-space": (["--env-id", OTHER_FAMILY[script]], {}, other_actions),
        "unknown-env-id": (["--env-id", "NoSuchEnv-v0"], {}, "cannot make 'NoSuchEnv-v0'"),
        "no-epochs": (["--update-epochs", "0"], {}, "--update-epochs 0 is less than 1"),
        "minibatches-do-not-divide": (["--num-minibatches", "3"], {}, "--num-minibatches does not divide"),
        "total-below-one-batch": (["--total-timesteps", "100"], {}, "--total-timesteps is less than one batch"),
        "exp-name-with-slash": (["--exp-name", "a/b", "--save-model"], {}, "--exp-name 'a/b' contains '/'"),
        "runs-not-creatable": ([], {}, f"cannot create runs/{env_id}__{script}__7__"),
        "no-renderer-for-video": (
            ["--capture-video"],
            NO_DISPLAY if script in CONTINUOUS_SCRIPTS else {"SDL_VIDEODRIVER": "nosuchdriver"},
            f"cannot render {env_id!r} for --capture-video",
        ),
    }
    if script in CONTINUOUS_SCRIPTS:  # PyOpenGL follows PYOPENGL_PLATFORM, which the test session may have set
        gl = {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}
        cases["mujoco-gl-unloadable"] = ([], gl, "MuJoCo cannot load with MUJOCO_GL=osmesa")
    if script in BLPO_SCRIPTS:
        cases["rank-above-critic-size"] = (["--ihvp-rank", "100000"], {}, "--ihvp-rank 100000 exceeds the critic's")
        cases["non-positive-rho"] = (["--ihvp-rho", "0"], {}, "--ihvp-rho must be positive")
    return cases


BAD_INPUTS = [(script, case) for script in SCRIPTS for case in bad_inputs(script)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every subprocess run of the module, started once: `{script}/{case}` for the bad inputs (quick, so first;
    runs-not-creatable where a file named `runs` is in the way), then per script two tiny --save-model runs with the
    same seed (`saved`, `twin`) and a tiny --track run with W&B offline (`tracked`)."""
    root = tmp_path_factory.mktemp("runs")
    commands, envs = {}, {}
    for script, case in BAD_INPUTS:
        flags, env, _ = bad_inputs(script)[case]
        commands[f"{script}/{case}"], envs[f"{script}/{case}"] = TINY[script].command(script, *flags), env
        if case == "runs-not-creatable":
            (root / script / case).mkdir(parents=True)
            (root / script / case / "runs").write_text("")
    wandb_home = {f"WANDB_{name}_DIR": str(root / "wandb_home") for name in ("CONFIG", "CACHE", "DATA")}
    for script in SCRIPTS:
        commands[f"{script}/saved"] = commands[f"{script}/twin"] = TINY[script].command(script, "--save-model")
        commands[f"{script}/tracked"] = TINY[script].command(script, "--track")
        envs[f"{script}/tracked"] = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", **wandb_home}
    with ScriptRuns(root, commands, envs) as started:
        yield started


# ---------------------------------------------------------------------------------------------------------------
# Tiny runs: metrics, --track, determinism, the saved model and its evaluation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_tiny_run_logs_cleanrl_metrics(runs, script):
    """Every CleanRL scalar, once per iteration and finite, the total rounded down to whole iterations; the learning
    rate annealed (logged after each update); the finished episodes' returns and lengths; no deprecation warning."""
    tiny, scalars = TINY[script], read_scalars(runs[f"{script}/saved"].run_dir())
    assert "is out of date" not in runs[f"{script}/saved"].result.stderr  # Gymnasium's warning about -v4 ids
    assert not [tag for tag in CLEANRL_TAGS if tag not in scalars], sorted(scalars)
    for tag in CLEANRL_TAGS:
        if "episodic" not in tag:
            assert [step for step, _ in scalars[tag]] == [tiny.batch, 2 * tiny.batch], tag
            assert all(math.isfinite(value) for _, value in scalars[tag]), tag
    lr = importlib.import_module(script).Args.learning_rate
    assert [value for _, value in scalars["charts/learning_rate"]] == pytest.approx([lr, lr / 2])
    returns, lengths = scalars["charts/episodic_return"], scalars["charts/episodic_length"]
    assert len(returns) == len(lengths) >= 2
    assert all(0 < step <= 2 * tiny.batch and math.isfinite(value) for step, value in returns)
    assert all(1 <= value <= 2 * tiny.batch and value == int(value) for _, value in lengths)
    assert sum(value for _, value in lengths) <= 2 * tiny.batch


@pytest.mark.parametrize("script", SCRIPTS)
def test_track_offline_creates_wandb_run(runs, script):
    """--track with WANDB_MODE=offline exits 0 without network and writes an offline run under wandb/."""
    run = runs[f"{script}/tracked"]
    run.run_dir()
    offline_runs = list((run.cwd / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, list(run.cwd.rglob("*"))
    assert list(offline_runs[0].glob("run-*.wandb")), "offline run has no .wandb log"


@pytest.mark.parametrize("script", SCRIPTS)
def test_same_seed_gives_identical_scalars_and_weights(runs, script):
    """Two runs with the same seed log the same numbers (all but SPS) and save the same weights."""
    first, twin = runs[f"{script}/saved"].run_dir(), runs[f"{script}/twin"].run_dir()
    first_scalars, twin_scalars = read_scalars(first), read_scalars(twin)
    assert sorted(first_scalars) == sorted(twin_scalars)
    for tag in first_scalars:
        if tag != "charts/SPS":
            np.testing.assert_array_equal(first_scalars[tag], twin_scalars[tag], err_msg=tag)
    first_weights = torch.load(first / f"{script}.pt", weights_only=False)["agent"]
    twin_weights = torch.load(twin / f"{script}.pt", weights_only=False)["agent"]
    assert all(torch.equal(tensor, twin_weights[key]) for key, tensor in first_weights.items())


@pytest.mark.parametrize("script", SCRIPTS)
def test_saved_model_evaluates_with_its_exact_weights(runs, script, monkeypatch):
    """--save-model writes runs/{run_name}/{exp_name}.pt, which the run evaluates (10 eval/ returns, their mean
    printed); evaluate runs 2 more episodes with exactly its weights and returns 2 finite returns."""
    run, module = runs[f"{script}/saved"], importlib.import_module(script)
    path = run.run_dir() / f"{script}.pt"
    returns = [value for _, value in read_scalars(run.run_dir())["eval/episodic_return"]]
    assert len(returns) == 10
    printed = [line for line in run.result.stdout.splitlines() if line.startswith("evaluation:")]
    assert printed == [f"evaluation: mean return {np.mean(returns):.2f} over 10 episodes"]
    agents = record_calls(monkeypatch, module, "Agent")
    returns = module.evaluate(path, TINY[script].env_id, eval_episodes=2, seed=1)
    assert len(returns) == 2 and all(isinstance(r, float) and math.isfinite(r) for r in returns), returns
    saved, loaded = torch.load(path, weights_only=False)["agent"], agents[0].state_dict()
    assert len(agents) == 1 and loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[key], tensor) for key, tensor in saved.items())


@pytest.mark.parametrize("script", CONTINUOUS_SCRIPTS)
def test_saved_model_holds_the_observation_statistics(runs, script):
    """A MuJoCo checkpoint holds the observation statistics that every env's every observation updated: each env's
    first reset, each step, and the reset after each finished episode (from a count of 1e-4)."""
    run_dir, tiny = runs[f"{script}/saved"].run_dir(), TINY[script]
    stats = torch.load(run_dir / f"{script}.pt", weights_only=False)["obs_rms"]
    assert stats["mean"].shape == stats["var"].shape == (11,) and np.all(stats["var"] > 0)
    episodes = len(read_scalars(run_dir)["charts/episodic_return"])  # of all envs
    assert tiny.num_envs > 1 and episodes > 0
    assert stats["count"] == pytest.approx(tiny.num_envs * (1 + tiny.ITERATIONS * tiny.num_steps) + episodes + 1e-4)


@pytest.mark.parametrize("script", CONTINUOUS_SCRIPTS)
def test_envs_share_one_set_of_normalization_statistics(script):
    """Every env updates one set of statistics: they equal, bit for bit, those of one stream fed the raw observations
    and the discounted returns of every env in step order (env by env; a finished episode's last observation, then
    its reset's). Each env keeps its own discounted return, cut at terminations only, as NormalizeReward does."""
    module, num_envs, gamma, rng = importlib.import_module(script), 3, 0.9, np.random.default_rng(0)
    envs = module.make_envs("Hopper-v4", num_envs, False, "x", gamma)
    raw = gym.vector.SyncVectorEnv(
        [lambda: gym.make("Hopper-v4")] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    obs_stream = RunningMeanStd(shape=envs.single_observation_space.shape, dtype=np.float32)  # as NormalizeObservation
    return_stream, discounted = RunningMeanStd(shape=()), np.zeros(num_envs)
    envs.reset(seed=5)
    for o in raw.reset(seed=5)[0]:
        obs_stream.update(o[None])
    finished = 0
    for _ in range(200):
        action = rng.uniform(-1, 1, size=(num_envs, 3)).astype(np.float32)  # in the box: ClipAction keeps it
        envs.step(action)
        obs, reward, terminated, truncated, infos = raw.step(action)
        for i in range(num_envs):
            done = terminated[i] or truncated[i]
            obs_stream.update((infos["final_obs"][i] if done else obs[i])[None])
            discounted[i] = discounted[i] * gamma * (1 - terminated[i]) + float(reward[i])
            return_stream.update(np.array([discounted[i]]))
            if done:
                obs_stream.update(obs[i][None])
                finished += 1
    assert finished > num_envs  # the resets after finished episodes are in the stream
    for name, stream in (("obs_rms", obs_stream), ("return_rms", return_stream)):
        for env in envs.envs:
            shared = env.get_wrapper_attr(name)
            assert shared.count == stream.count, name
            np.testing.assert_array_equal(shared.mean, stream.mean, err_msg=name)
            np.testing.assert_array_equal(shared.var, stream.var, err_msg=name)
    envs.close()
    raw.close()


@pytest.fixture(scope="module")
def fresh_checkpoints(tmp_path_factory):
    """script -> a checkpoint of an untrained agent as the script's save_model writes it, with the observation
    statistics of 50 random steps for the MuJoCo scripts."""
    root, paths = tmp_path_factory.mktemp("checkpoints"), {}
    for script in SCRIPTS:
        module, paths[script] = importlib.import_module(script), root / f"{script}.pt"
        if script in CONTINUOUS_SCRIPTS:
            envs = module.make_envs("Hopper-v4", 1, False, "x", 0.99)
            envs.reset(seed=0)
            for _ in range(50):
                envs.step(envs.action_space.sample())
            module.save_model(paths[script], module.Agent(11, 3), envs)
            envs.close()
        else:
            module.save_model(paths[script], module.Agent(4, 2))
    return paths


@pytest.mark.parametrize("script", SCRIPTS)
def test_evaluate_rejects_what_it_cannot_run(fresh_checkpoints, script, tmp_path):
    """A ValueError saying what is wrong, never SystemExit: an env id that cannot be made, an env whose sizes do not
    fit the checkpoint, a checkpoint of another script, a file that is no checkpoint."""
    module, path, name = importlib.import_module(script), fresh_checkpoints[script], f"{script}.py"
    with pytest.raises(ValueError, match="cannot make 'NoSuchEnv-v0'"):
        module.evaluate(path, "NoSuchEnv-v0")
    with pytest.raises(ValueError, match=rf"does not fit {name}'s agent on {SAME_FAMILY[script]}: .*size mismatch"):
        module.evaluate(path, SAME_FAMILY[script], eval_episodes=1)
    other = fresh_checkpoints["blpo_discrete" if script in CONTINUOUS_SCRIPTS else "blpo_continuous"]
    other_error = "is not a checkpoint of" if script in CONTINUOUS_SCRIPTS else "does not fit .*: Missing key"
    with pytest.raises(ValueError, match=other_error):
        module.evaluate(other, TINY[script].env_id, eval_episodes=1)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=f"is not a checkpoint of {name}'s --save-model"):
        module.evaluate(tmp_path / "list.pt", TINY[script].env_id, eval_episodes=1)


@pytest.mark.parametrize("script", CONTINUOUS_SCRIPTS)
def test_evaluate_uses_frozen_saved_obs_statistics(fresh_checkpoints, script, monkeypatch):
    """The evaluation env normalizes with exactly the saved observation statistics, left frozen while it runs."""
    module = importlib.import_module(script)
    vector_envs = record_calls(monkeypatch, module, "make_envs")
    module.evaluate(fresh_checkpoints[script], "Hopper-v4", eval_episodes=2, seed=1)
    saved, normalizer = torch.load(fresh_checkpoints[script], weights_only=False)["obs_rms"], vector_envs[0].envs[0]
    while not isinstance(normalizer, gym.wrappers.NormalizeObservation):
        normalizer = normalizer.env
    assert not normalizer.update_running_mean, "observation statistics kept updating during evaluation"
    np.testing.assert_array_equal(normalizer.obs_rms.mean, saved["mean"])
    np.testing.assert_array_equal(normalizer.obs_rms.var, saved["var"])
    assert normalizer.obs_rms.count == saved["count"] > 50


def recording_envs(monkeypatch, module) -> dict[str, list]:
    """Record what evaluate's vector env hands the policy and gets back: "obs", every observation it returns (the
    normalized ones for the MuJoCo scripts), and "actions", every action it is stepped with."""
    seen, make_envs = {"obs": [], "actions": []}, module.make_envs

    def make_recording_envs(*args, **kwargs):
        envs = make_envs(*args, **kwargs)
        reset, step = envs.reset, envs.step

        def recording_reset(**kw):
            obs, infos = reset(**kw)
            seen["obs"].append(obs.copy())
            return obs, infos

        def recording_step(actions):
            seen["actions"].append(np.array(actions))
            out = step(actions)
            seen["obs"].append(out[0].copy())
            return out

        envs.reset, envs.step = recording_reset, recording_step
        return envs

    monkeypatch.setattr(module, "make_envs", make_recording_envs)
    return seen


def constant_policy_checkpoint(module, script, path, obs_rms=None):
    """A checkpoint whose policy ignores the observation: the Gaussian's mean is 0.3 in every dimension with std 1,
    or the categorical's logits are [0, 0.5] (action 1 most likely, action 0 drawn 38% of the time)."""
    if script in CONTINUOUS_SCRIPTS:
        agent = module.Agent(11, 3)
        head = agent.actor_mean[-1]
        bias = 0.3
    else:
        agent = module.Agent(4, 2)
        head = agent.actor[-1]
        bias = torch.tensor([0.0, 0.5])
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.as_tensor(bias))
    checkpoint = {"agent": agent.state_dict()}
    if script in CONTINUOUS_SCRIPTS:
        checkpoint["obs_rms"] = obs_rms or {"mean": np.zeros(11), "var": np.ones(11), "count": 1.0}
    torch.save(checkpoint, path)


@pytest.mark.parametrize("script", SCRIPTS)
def test_evaluate_takes_the_most_likely_action_unless_told_to_sample(script, monkeypatch, tmp_path):
    """deterministic=True (the default) steps with the policy's most likely action, the Gaussian's mean or the
    categorical's argmax, at every step; deterministic=False draws from the policy."""
    module, env_id = importlib.import_module(script), TINY[script].env_id
    constant_policy_checkpoint(module, script, tmp_path / "agent.pt")
    most_likely = np.full(3, 0.3, dtype=np.float32) if script in CONTINUOUS_SCRIPTS else np.array(1)
    seen = recording_envs(monkeypatch, module)
    module.evaluate(tmp_path / "agent.pt", env_id, eval_episodes=2, seed=1)
    assert len(seen["actions"]) > 10
    assert all(np.array_equal(actions[0], most_likely) for actions in seen["actions"])
    seen = recording_envs(monkeypatch, module)
    torch.manual_seed(0)
    module.evaluate(tmp_path / "agent.pt", env_id, eval_episodes=2, seed=1, deterministic=False)
    drawn = np.stack([actions[0] for actions in seen["actions"]]).astype(np.float64)
    if script in CONTINUOUS_SCRIPTS:  # N(0.3, 1) in each dimension
        assert abs(drawn.mean() - 0.3) < 0.3 and 0.7 < drawn.std() < 1.3, (drawn.mean(), drawn.std())
    else:  # P(action 0) = 1 / (1 + e^0.5) = 0.38
        assert 0.2 < (drawn == 0).mean() < 0.55, (drawn == 0).mean()


@pytest.mark.parametrize("script", CONTINUOUS_SCRIPTS)
def test_evaluate_normalizes_with_the_saved_statistics_from_the_first_observation(script, monkeypatch, tmp_path):
    """The saved statistics are in place, frozen, before the first observation is normalized: with the saved mean
    half a standard deviation above the raw first observation, the policy's first input is -0.5 everywhere, and the
    statistics are unchanged after the episodes."""
    module = importlib.import_module(script)
    with gym.make("Hopper-v4") as raw:
        first_raw = raw.reset(seed=1)[0]
    saved = {"mean": first_raw + 1.0, "var": np.full(11, 4.0), "count": 123.0}
    constant_policy_checkpoint(module, script, tmp_path / "agent.pt", {k: np.copy(v) for k, v in saved.items()})
    seen = recording_envs(monkeypatch, module)
    vector_envs = record_calls(monkeypatch, module, "make_envs")
    module.evaluate(tmp_path / "agent.pt", "Hopper-v4", eval_episodes=1, seed=1)
    np.testing.assert_allclose(seen["obs"][0][0], -0.5, rtol=1e-6)
    normalizer = vector_envs[0].envs[0]
    while not isinstance(normalizer, gym.wrappers.NormalizeObservation):
        normalizer = normalizer.env
    np.testing.assert_array_equal(normalizer.obs_rms.mean, saved["mean"])
    np.testing.assert_array_equal(normalizer.obs_rms.var, saved["var"])
    assert normalizer.obs_rms.count == saved["count"]


# ---------------------------------------------------------------------------------------------------------------
# Flags and bad inputs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_cleanrl_flags_work(script):
    """Every CleanRL flag name parses; --learning-rate is the actor's rate, which the BLPO scripts also call
    --actor-lr (test_blpo_update.py checks which parameter group it sets)."""
    args = importlib.import_module(script).Args
    assert not [name for name in CLEANRL_FLAGS if name not in args.__dataclass_fields__]
    assert tyro.cli(args, args=["--learning-rate", "0.001"]).learning_rate == 0.001
    if script in BLPO_SCRIPTS:
        assert tyro.cli(args, args=["--actor-lr", "0.002"]).learning_rate == 0.002


@pytest.mark.parametrize("script, case", BAD_INPUTS)
def test_bad_input_fails_with_one_error_line(runs, script, case):
    """One `error:` line on stderr naming the problem, non-zero exit, no traceback."""
    if case == "mujoco-gl-unloadable" and ctypes.util.find_library("OSMesa"):
        pytest.skip("OSMesa is installed here, so MUJOCO_GL=osmesa loads")
    assert_fails_with_one_error_line(runs[f"{script}/{case}"].result, bad_inputs(script)[case][2])


@pytest.mark.parametrize("script", SCRIPTS)
def test_too_old_gymnasium_or_torch_is_named(script, monkeypatch):
    """The check names the package that is too old; gymnasium 1.0 has no AutoresetMode."""
    module = importlib.import_module(script)
    module.check_args(module.Args())
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.3.1"))
    with pytest.raises(ValueError, match=r"torch 2.3.1 is too old \(< 2.4\)"):
        module.check_args(module.Args())
    monkeypatch.setattr(gym, "__version__", "1.0.0")
    with pytest.raises(ValueError, match=r"gymnasium 1.0.0 is too old \(< 1.1\)"):
        module.check_args(module.Args())


@pytest.mark.parametrize("script", SCRIPTS)
def test_too_old_gymnasium_stops_the_script_with_one_line(script, monkeypatch, tmp_path):
    """The main block turns it into an `error:` exit before anything runs."""
    monkeypatch.delattr(gym.vector, "AutoresetMode")
    monkeypatch.setattr(gym, "__version__", "1.0.0")
    with pytest.raises(SystemExit) as stop:
        run_main(load_script(script), TINY[script].argv(), tmp_path)
    assert str(stop.value.code).startswith("error: gymnasium 1.0.0 is too old"), stop.value.code
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C, importing
# ---------------------------------------------------------------------------------------------------------------


CTRL_C = {script: TINY[script].command(script, "--total-timesteps", "10000000", "--save-model") for script in SCRIPTS}
CTRL_C["blpo_continuous_authors"] = ["blpo_continuous_authors.py", "--num-envs", "2", "--num-steps", "128"]
CTRL_C["blpo_continuous_authors"] += ["--num-minibatches", "2", "--total-timesteps", "10000000", "--save-model"]


@pytest.mark.parametrize("script", CTRL_C)
def test_ctrl_c_saves_the_model_and_closes_the_events(script, tmp_path):
    """SIGINT after the first iteration of a long --save-model run: one line about it and no traceback, exit 130, the
    weights as they are saved, the TensorBoard events readable, the evaluation skipped."""
    proc = start_script(CTRL_C[script], tmp_path, {}, interruptible=True)
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
    assert f"model saved to runs/{run_dir.name}/{script}.pt" in result.stdout
    checkpoint = torch.load(run_dir / f"{script}.pt", weights_only=False)
    assert checkpoint.keys() == ({"agent"} if script == "blpo_discrete" else {"agent", "obs_rms"})
    scalars = read_scalars(run_dir)
    assert len(scalars["charts/SPS"]) >= 1 and "eval/episodic_return" not in scalars


@pytest.mark.parametrize("script", SCRIPTS)
def test_importing_a_script_leaves_the_environment_alone(script, monkeypatch):
    """MUJOCO_GL (and pygame's SDL_VIDEODRIVER) are the running script's defaults, not the importing program's."""
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    load_script(script)
    assert "MUJOCO_GL" not in os.environ and "SDL_VIDEODRIVER" not in os.environ
