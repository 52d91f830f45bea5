"""blpo_discrete.py and blpo_continuous.py end to end, in subprocesses: the metrics and hypergradient diagnostics of
tiny runs (also with --no-hypergrad, each IHVP solver, and the rollout's advantage statistics), saving and evaluating a
model, same seed same numbers, clear errors on bad input, and a short CartPole run that has to learn. What one update
computes, and how the main loop calls it, is tested in-process in test_blpo_update.py.

The math helpers are tested in test_blpo_math.py; blpo_continuous.py's Gaussian policy and action clipping next to
ppo_continuous.py's in test_ppo_continuous.py.
"""

import importlib
import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
from scripts import CLEANRL_TAGS, ScriptRuns, assert_fails_with_one_error_line, read_scalars, record_calls

SCRIPTS = ["blpo_discrete", "blpo_continuous"]
HYPERGRAD_TAGS = [
    "hypergrad/direct_grad_norm",
    "hypergrad/correction_norm",
    "hypergrad/correction_ratio",
    "hypergrad/cos_correction_direct",
    "hypergrad/bound_active_frac",
    "hypergrad/nonfinite_fallbacks",
]
CHECK_TAGS = ["hypergrad/ihvp_error", "hypergrad/ihvp_cos"]
# Full BLPO at its CartPole defaults for 50k steps: the mean of the last 20 returns was 447.9 (seed 1) and 385.9
# (seed 2); a random policy scores about 20, CleanRL's PPO about 200-300 at this budget.
LEARNING_STEPS = 50_000
LEARNING_THRESHOLD = 250.0


class Tiny(NamedTuple):
    """Two iterations of `batch` steps on `env_id`: episodes end, every per-iteration scalar is logged twice."""

    env_id: str
    batch: int
    flags: str

    def command(self, script: str, *extra: str) -> list[str]:
        """This tiny run's command line with `extra` flags appended; of a repeated flag, the last wins."""
        total = str(2 * self.batch)
        return [f"{script}.py", "--env-id", self.env_id, "--total-timesteps", total, *self.flags.split(), *extra]


TINY = {
    "blpo_discrete": Tiny(
        "CartPole-v1", 512, "--num-envs 4 --num-steps 128 --num-minibatches 2 --update-epochs 1 --nested-updates 2"
    ),
    "blpo_continuous": Tiny("Hopper-v4", 256, "--num-envs 2 --num-steps 128 --num-minibatches 2 --update-epochs 1"),
}
TINY_VARIANTS = {
    "full": ["--save-model", "--ihvp-check-every", "2"],
    "nystrom": ["--ihvp", "nystrom"],
    "nystrom-paper": ["--ihvp", "nystrom-paper"],
    "rollout-norm": ["--norm-adv-stats", "rollout"],
    "no-hypergrad": ["--no-hypergrad"],
}
WRONG_ACTION_SPACE = {
    "blpo_discrete": (["--env-id", "Hopper-v4"], "needs a Discrete one"),
    "blpo_continuous": (["--env-id", "CartPole-v1"], "needs a continuous (Box) one"),
}
# --capture-video where the renderer cannot start: pygame without a video driver, MuJoCo's GLFW without a display
NO_RENDERER = {
    "blpo_discrete": {"SDL_VIDEODRIVER": "nosuchdriver"},
    "blpo_continuous": {"MUJOCO_GL": "glfw", "DISPLAY": "", "WAYLAND_DISPLAY": ""},
}
# Appended to the tiny runs' flags, so a check that goes missing shows up as a quick run that exits 0.
BAD_INPUTS = {
    (script, case): bad
    for script in SCRIPTS
    for case, bad in {
        "wrong-action-space": WRONG_ACTION_SPACE[script],
        "unknown-env-id": (["--env-id", "NoSuchEnv-v0"], "unknown env id 'NoSuchEnv-v0'"),
        "rank-above-critic-size": (["--ihvp-rank", "100000"], "exceeds the critic's"),
        "non-positive-rho": (["--ihvp-rho", "0"], "--ihvp-rho must be positive"),
        "minibatches-do-not-divide": (["--num-envs", "4", "--num-minibatches", "3"], "not divisible"),
        "total-below-one-batch": (["--total-timesteps", "100"], "smaller than one batch"),
        "exp-name-with-slash": (["--exp-name", "a/b", "--save-model"], "--exp-name 'a/b' contains '/'"),
        "runs-not-creatable": ([], "cannot create the run directory runs/"),
        "no-renderer-for-video": (["--capture-video"], f"cannot render {TINY[script].env_id!r} for --capture-video"),
    }.items()
}

pytestmark = pytest.mark.usefixtures("run_in_tmp_cwd")


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory):
    """Every run of the module, started concurrently once: the bad inputs `{script}/{case}` (quick, so first),
    `{script}/{variant}`, `blpo_discrete/twin` (a repeat of `blpo_discrete/full`) and the CartPole `learning` run.
    `{script}/runs-not-creatable` runs where a file named `runs` is in the way."""
    root = tmp_path_factory.mktemp("blpo_runs")
    commands = {
        f"{script}/{case}": TINY[script].command(script, *flags) for (script, case), (flags, _) in BAD_INPUTS.items()
    }
    envs = {f"{script}/no-renderer-for-video": env for script, env in NO_RENDERER.items()}
    for script in SCRIPTS:
        (root / script / "runs-not-creatable").mkdir(parents=True)
        (root / script / "runs-not-creatable" / "runs").write_text("")
    commands |= {
        f"{script}/{variant}": TINY[script].command(script, *extra)
        for script in SCRIPTS
        for variant, extra in TINY_VARIANTS.items()
    }
    commands["blpo_discrete/twin"] = commands["blpo_discrete/full"]
    commands["learning"] = ["blpo_discrete.py", "--total-timesteps", str(LEARNING_STEPS), "--seed", "1"]
    with ScriptRuns(root, commands, envs) as runs:
        yield runs


# ---------------------------------------------------------------------------------------------------------------
# Tiny runs: metrics, hypergradient diagnostics, saved model, determinism
# ---------------------------------------------------------------------------------------------------------------


def per_iteration_values(scalars, tag: str, tiny: Tiny) -> list[float]:
    """The values of a scalar logged once per iteration, after checking it was, and that they are finite."""
    assert tag in scalars, f"missing {tag}; got {sorted(scalars)}"
    assert [step for step, _ in scalars[tag]] == [tiny.batch, 2 * tiny.batch], tag
    values = [value for _, value in scalars[tag]]
    assert all(math.isfinite(value) for value in values), (tag, values)
    return values


@pytest.mark.parametrize("variant", TINY_VARIANTS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_tiny_run_logs_cleanrl_metrics(script_runs, script, variant):
    """Every CleanRL scalar: finite, once per iteration, the annealed learning rate, and the finished episodes."""
    tiny, blpo = TINY[script], importlib.import_module(script)
    scalars = read_scalars(script_runs[f"{script}/{variant}"].run_dir())
    values = {tag: per_iteration_values(scalars, tag, tiny) for tag in CLEANRL_TAGS if "episodic" not in tag}
    lr = blpo.Args.actor_lr
    assert values["charts/learning_rate"] == pytest.approx([lr, lr / 2])  # logged after each annealed update
    returns, lengths = scalars.get("charts/episodic_return", []), scalars.get("charts/episodic_length", [])
    assert len(returns) == len(lengths) >= 2, sorted(scalars)
    assert all(0 < step <= 2 * tiny.batch and math.isfinite(value) for step, value in returns)
    assert all(1 <= value <= 2 * tiny.batch and value == int(value) for _, value in lengths)


@pytest.mark.parametrize("variant", ["full", "nystrom", "nystrom-paper", "rollout-norm"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_tiny_run_logs_sane_hypergrad_diagnostics(script_runs, script, variant):
    """Every solver's run logs every hypergrad/ scalar once per iteration, finite and within its range; with
    --ihvp-check-every the default solver's error against the exact IHVP is small (CG, 5 steps, rho = 50)."""
    scalars = read_scalars(script_runs[f"{script}/{variant}"].run_dir())
    expected = HYPERGRAD_TAGS + (CHECK_TAGS if variant == "full" else [])
    assert sorted(tag for tag in scalars if tag.startswith("hypergrad/")) == sorted(expected)
    values = {tag.removeprefix("hypergrad/"): per_iteration_values(scalars, tag, TINY[script]) for tag in expected}
    assert values["nonfinite_fallbacks"] == [0, 0]
    assert all(0 <= v <= 1 for v in values["bound_active_frac"])
    assert all(-1 <= v <= 1 for v in values["cos_correction_direct"])
    assert all(v > 0 for v in values["direct_grad_norm"] + values["correction_norm"] + values["correction_ratio"])
    if variant == "full":
        assert all(0 <= v < 1e-3 for v in values["ihvp_error"]), values["ihvp_error"]
        assert all(v > 0.999 for v in values["ihvp_cos"]), values["ihvp_cos"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_minibatch_normalization_removes_most_of_the_correction(script_runs, script):
    """Subtracting each minibatch's own mean advantage blinds l to a shared shift of the critic's values, the shift
    the correction mostly acts on: with the rollout's statistics the correction is many times larger."""
    ratio = {
        variant: per_iteration_values(
            read_scalars(script_runs[f"{script}/{variant}"].run_dir()), "hypergrad/correction_ratio", TINY[script]
        )
        for variant in ("full", "rollout-norm")
    }
    assert all(r >= 10 * m for r, m in zip(ratio["rollout-norm"], ratio["full"])), ratio


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_hypergrad_logs_no_hypergrad_scalars(script_runs, script):
    """--no-hypergrad follows the direct gradient and writes no hypergrad/ scalars."""
    scalars = read_scalars(script_runs[f"{script}/no-hypergrad"].run_dir())
    assert "losses/policy_loss" in scalars
    assert [tag for tag in scalars if tag.startswith("hypergrad/")] == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_saved_model_evaluates_with_its_exact_weights(script_runs, script, monkeypatch):
    """--save-model writes a checkpoint; evaluate runs 2 episodes with exactly its weights, 2 finite returns."""
    blpo, run_dir = importlib.import_module(script), script_runs[f"{script}/full"].run_dir()
    path = run_dir / f"{script}.pt"
    assert path.is_file(), f"--save-model wrote no {path.name}; run dir holds {[p.name for p in run_dir.iterdir()]}"
    assert len(read_scalars(run_dir)["eval/episodic_return"]) == 10  # the script's own evaluation
    agents = record_calls(monkeypatch, blpo, "Agent")
    returns = blpo.evaluate(path, TINY[script].env_id, eval_episodes=2, seed=1)
    assert len(returns) == 2 and all(isinstance(r, float) and math.isfinite(r) for r in returns), returns
    assert len(agents) == 1
    saved, loaded = torch.load(path, weights_only=False)["agent"], agents[0].state_dict()
    assert loaded.keys() == saved.keys()
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("script", SCRIPTS)
def test_save_model_run_prints_its_evaluation(script_runs, script):
    """The evaluation after --save-model prints its mean return, the mean of the eval/ returns it logs."""
    run = script_runs[f"{script}/full"]
    returns = [value for _, value in read_scalars(run.run_dir())["eval/episodic_return"]]
    lines = [line for line in run.result.stdout.splitlines() if line.startswith("evaluation:")]
    assert lines == [f"evaluation: mean return {np.mean(returns):.2f} over 10 episodes"]


@pytest.fixture(scope="module")
def fresh_checkpoints(tmp_path_factory):
    """Checkpoints of untrained agents as each script's save_model writes them: script -> path."""
    root = tmp_path_factory.mktemp("checkpoints")
    discrete, continuous = importlib.import_module("blpo_discrete"), importlib.import_module("blpo_continuous")
    discrete.save_model(root / "blpo_discrete.pt", discrete.Agent(4, 2))
    envs = continuous.make_envs("Hopper-v4", 1, False, "x", 0.99)
    continuous.save_model(root / "blpo_continuous.pt", continuous.Agent(11, 3), envs)
    envs.close()
    return {"blpo_discrete": root / "blpo_discrete.pt", "blpo_continuous": root / "blpo_continuous.pt"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_evaluate_rejects_the_other_scripts_checkpoint(fresh_checkpoints, script):
    """A ValueError that says what is wrong, not a KeyError or load_state_dict's list of every key."""
    other, message = {
        "blpo_continuous": ("blpo_discrete", r"has no observation statistics \('obs_rms'\), so it is not a checkpoint"),
        "blpo_discrete": ("blpo_continuous", r"does not fit blpo_discrete.py's agent on CartPole-v1 \(.*\): missing"),
    }[script]
    with pytest.raises(ValueError, match=message):
        importlib.import_module(script).evaluate(fresh_checkpoints[other], TINY[script].env_id, eval_episodes=1)


@pytest.mark.parametrize("script", SCRIPTS)
def test_evaluate_raises_value_error_for_an_unknown_env_id(fresh_checkpoints, script):
    """Not SystemExit, which would end the program that imported evaluate."""
    with pytest.raises(ValueError, match="cannot make 'NoSuchEnv-v0'"):
        importlib.import_module(script).evaluate(fresh_checkpoints[script], "NoSuchEnv-v0")


def test_same_seed_gives_identical_scalars_and_weights(script_runs):
    """Two blpo_discrete runs with the same seed log the same numbers (all but SPS) and save the same weights;
    the IHVP's sketches come from a seeded generator."""
    first, twin = script_runs["blpo_discrete/full"].run_dir(), script_runs["blpo_discrete/twin"].run_dir()
    first_scalars, twin_scalars = read_scalars(first), read_scalars(twin)
    assert sorted(first_scalars) == sorted(twin_scalars)
    assert "hypergrad/ihvp_error" in first_scalars
    for tag in first_scalars:
        if tag != "charts/SPS":
            np.testing.assert_array_equal(first_scalars[tag], twin_scalars[tag], err_msg=tag)
    first_weights = torch.load(first / "blpo_discrete.pt", weights_only=False)["agent"]
    twin_weights = torch.load(twin / "blpo_discrete.pt", weights_only=False)["agent"]
    for key, tensor in first_weights.items():
        assert torch.equal(tensor, twin_weights[key]), key


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script, case", BAD_INPUTS)
def test_bad_input_fails_with_one_error_line(script_runs, script, case):
    """One `error:` line on stderr naming the problem, non-zero exit, no traceback."""
    assert_fails_with_one_error_line(script_runs[f"{script}/{case}"].result, BAD_INPUTS[script, case][1])


# ---------------------------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------------------------


def test_blpo_discrete_learns_cartpole(script_runs):
    """Full BLPO at its defaults, with the budget cut to LEARNING_STEPS (the learning rate anneals to 0 over it),
    balances the pole: the last 20 episodes average at least LEARNING_THRESHOLD."""
    scalars = read_scalars(script_runs["learning"].run_dir())
    returns = [value for _, value in scalars["charts/episodic_return"]]
    assert len(returns) >= 20
    last_mean = np.mean(returns[-20:])
    assert last_mean >= LEARNING_THRESHOLD, f"mean of the last 20 returns {last_mean:.1f}; all: {returns}"
