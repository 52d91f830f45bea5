"""The BLPO scripts end to end, in subprocesses: the hypergradient diagnostics of tiny runs with each IHVP solver,
--no-hypergrad, and a short CartPole run that has to learn. What the three
scripts do alike is tested in test_scripts.py; what one update computes, and how the main loop calls it, in-process
in test_blpo_update.py; the math helpers in test_blpo_math.py."""

import math

import numpy as np
import pytest
from conftest import BLPO_SCRIPTS, CLEANRL_TAGS, TINY
from scripts import ScriptRuns, read_scalars, run_scripts

HYPERGRAD_TAGS = [
    "hypergrad/direct_grad_norm",
    "hypergrad/correction_norm",
    "hypergrad/correction_ratio",
    "hypergrad/cos_correction_direct",
    "hypergrad/bound_active_frac",
    "hypergrad/nonfinite_fallbacks",
    "hypergrad/gauss_newton_fallbacks",
]
CHECK_TAGS = ["hypergrad/ihvp_error", "hypergrad/ihvp_cos"]
LEARNING_STEPS = 50_000
LEARNING_THRESHOLD = 150.0
VARIANTS = {
    "checked": ["--ihvp-check-every", "2"],
    "nystrom": ["--ihvp", "nystrom"],
    "no-hypergrad": ["--no-hypergrad"],
}

pytestmark = pytest.mark.usefixtures("run_in_tmp_cwd")


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory):
    """The tiny runs `{script}/{variant}`, started once for the module."""
    commands = {
        f"{script}/{variant}": TINY[script].command(script, *flags)
        for script in BLPO_SCRIPTS
        for variant, flags in VARIANTS.items()
    }
    with ScriptRuns(tmp_path_factory.mktemp("blpo_runs"), commands) as runs:
        yield runs


def per_iteration_values(scalars, tag: str, script: str) -> list[float]:
    """The values of a scalar logged once per iteration, after checking it was, and that they are finite."""
    assert tag in scalars, f"missing {tag}; got {sorted(scalars)}"
    assert [step for step, _ in scalars[tag]] == [TINY[script].batch, 2 * TINY[script].batch], tag
    values = [value for _, value in scalars[tag]]
    assert all(math.isfinite(value) for value in values), (tag, values)
    return values


@pytest.mark.parametrize("variant", [variant for variant in VARIANTS if variant != "no-hypergrad"])
@pytest.mark.parametrize("script", BLPO_SCRIPTS)
def test_tiny_run_logs_sane_hypergrad_diagnostics(script_runs, script, variant):
    """Every solver's run logs the CleanRL scalars and every hypergrad/ scalar once per iteration, finite and within
    its range; with --ihvp-check-every the default solver's
    error against the exact IHVP is small (CG, 5 steps, rho = 50)."""
    scalars = read_scalars(script_runs[f"{script}/{variant}"].run_dir())
    assert not [tag for tag in CLEANRL_TAGS if tag not in scalars], sorted(scalars)
    expected = HYPERGRAD_TAGS + (CHECK_TAGS if variant == "checked" else [])
    assert sorted(tag for tag in scalars if tag.startswith("hypergrad/")) == sorted(expected)
    values = {tag.removeprefix("hypergrad/"): per_iteration_values(scalars, tag, script) for tag in expected}
    assert values["nonfinite_fallbacks"] == [0, 0]
    assert all(0 <= v <= 1 for v in values["bound_active_frac"])
    assert all(abs(v) <= 1 + 1e-6 for v in values["cos_correction_direct"])
    assert all(v > 0 for v in values["direct_grad_norm"] + values["correction_norm"] + values["correction_ratio"])
    if variant == "checked":
        assert all(0 <= v < 1e-3 for v in values["ihvp_error"]), values["ihvp_error"]
        assert all(v > 0.999 for v in values["ihvp_cos"]), values["ihvp_cos"]


@pytest.mark.parametrize("script", BLPO_SCRIPTS)
def test_no_hypergrad_logs_no_hypergrad_scalars(script_runs, script):
    """--no-hypergrad follows the direct gradient and writes no hypergrad/ scalars."""
    scalars = read_scalars(script_runs[f"{script}/no-hypergrad"].run_dir())
    assert not [tag for tag in CLEANRL_TAGS if tag not in scalars], sorted(scalars)
    assert [tag for tag in scalars if tag.startswith("hypergrad/")] == []


@pytest.mark.cpu_numbers
def test_blpo_discrete_learns_cartpole(tmp_path):
    """Full BLPO at its defaults, with the budget cut to LEARNING_STEPS (the learning rate anneals to 0 over it),
    balances the pole: the last 20 episodes average at least LEARNING_THRESHOLD. A random policy scores about 20.
    Measured for seeds 1-5 (this test runs seed 1), on the machine's own kernels (AVX-512, MKL): 376.6, 203.2, 264.6,
    319.6, 339.6; with ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE: 395.6, 264.8, 338.3, 299.8, 392.2.
    The worst of the ten, 203.2, clears the threshold by 53 (35%)."""
    run = run_scripts(tmp_path, {"learning": ["blpo_discrete.py", "--total-timesteps", str(LEARNING_STEPS)]})
    scalars = read_scalars(run["learning"].run_dir())
    returns = [value for _, value in scalars["charts/episodic_return"]]
    assert len(returns) >= 20
    last_mean = np.mean(returns[-20:])
    assert last_mean >= LEARNING_THRESHOLD, f"mean of the last 20 returns {last_mean:.1f}; all: {returns}"
