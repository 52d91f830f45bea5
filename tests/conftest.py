"""The tests' shared constants and fixtures; the helpers that run scripts in subprocesses are in scripts.py."""

import importlib
import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)  # in-process script runs use one thread, as the subprocess ones do

SCRIPTS = ["ppo_continuous", "blpo_continuous", "blpo_discrete"]
BLPO_SCRIPTS = ["blpo_continuous", "blpo_discrete"]
CONTINUOUS_SCRIPTS = ["ppo_continuous", "blpo_continuous"]
CLEANRL_TAGS = [
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/learning_rate",
    "charts/SPS",
    "losses/value_loss",
    "losses/policy_loss",
    "losses/entropy",
    "losses/old_approx_kl",
    "losses/approx_kl",
    "losses/clipfrac",
    "losses/explained_variance",
]


class Tiny(NamedTuple):
    """A tiny run: ITERATIONS iterations of `num_envs` x `num_steps` on `env_id`, MINIBATCHES minibatches, EPOCHS
    epochs, seed 7, and `flags`; episodes end, and the whole run takes seconds. Its total is not a whole number of
    iterations."""

    env_id: str
    num_envs: int
    num_steps: int
    flags: tuple[str, ...] = ()
    ITERATIONS = 2
    EPOCHS = 2
    MINIBATCHES = 4

    @property
    def batch(self) -> int:
        return self.num_envs * self.num_steps

    def sizes(self) -> list[str]:
        """The batch's flags alone, for benchmark/run.py's variants (the runner sets env, seed and length)."""
        flags = f"--num-envs {self.num_envs} --num-steps {self.num_steps}"
        return [*f"{flags} --num-minibatches {self.MINIBATCHES} --update-epochs {self.EPOCHS}".split(), *self.flags]

    def argv(self, *extra: str) -> list[str]:
        """The run's flags with `extra` appended (of a repeated flag, the last wins)."""
        total = self.ITERATIONS * self.batch + self.batch // 2  # rounded down to ITERATIONS iterations
        flags = f"--env-id {self.env_id} --seed 7 --total-timesteps {total}"
        return [*flags.split(), *self.sizes(), *extra]

    def command(self, script: str, *extra: str) -> list[str]:
        return [f"{script}.py", *self.argv(*extra)]


TINY = {
    "ppo_continuous": Tiny("Hopper-v4", 2, 128),
    "blpo_continuous": Tiny("Hopper-v4", 2, 128),
    "blpo_discrete": Tiny("CartPole-v1", 4, 128, ("--nested-updates", "2")),  # K = 10 by default
    "blpo_continuous_authors": Tiny("Hopper-v4", 3, 40),
}


@pytest.fixture
def run_in_tmp_cwd(tmp_path, monkeypatch):
    """Keep files written to the working directory (e.g. MuJoCo's MUJOCO_LOG.TXT) out of the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def float64():
    """float64 as the default dtype, so that comparisons with references can be tight."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(params=BLPO_SCRIPTS)
def blpo(request, float64):
    """A BLPO script's module, with float64 as the default dtype."""
    return importlib.import_module(request.param)


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory):
    """Two PPO variants on Hopper-v4, seeds 1 and 2, 1024 steps each: the output folder and the run's result."""
    from grids import grid_flags, runner

    out = tmp_path_factory.mktemp("grid") / "out"
    return out, runner(*grid_flags(out))


@pytest.fixture
def hand_written_runs(tmp_path):
    """Two variants on CartPole-v1 with 1000 steps; expected values are worked out in the test."""
    from grids import write_run

    # ppo seed 1: 20 episodes at 50, 100, ..., 1000 returning 5, 10, ..., 100
    write_run(tmp_path, "ppo", 1, [(50 * i, 5.0 * i) for i in range(1, 21)])
    write_run(tmp_path, "ppo", 2, list(zip([300, 600, 900, 950, 990], [10.0, 20.0, 30.0, 40.0, 60.0])))
    # blpo seed 1: 20 episodes returning 0 then 10 returning 100, at steps 130, 160, ..., 1000
    blpo_returns = [0.0] * 20 + [100.0] * 10
    write_run(
        tmp_path,
        "blpo",
        1,
        [(100 + 30 * i, r) for i, r in enumerate(blpo_returns, start=1)],
        hypergrad__correction_ratio=[(100, 1.0), (200, 2.0), (300, 3.0)],
        hypergrad__nonfinite_fallbacks=[(100, 0.0), (200, 1.0), (300, 2.0)],
        hypergrad__ihvp_error=[(100, 0.5), (300, 7.0)],
        hypergrad__ihvp_cos=[(100, 0.25), (300, -0.5)],
        losses__entropy=[(100, 1.5), (300, 0.5), (200, 9.0)],
        hypergrad__push__actor_logstd__ratio=[(100, 9.0), (300, 0.5)],  # cumulative: the final value counts
        hypergrad__push__actor_logstd__cos_direct=[(300, -1.0)],
        hypergrad__push__actor_logstd__coherence=[(300, 2.0)],
    )
    write_run(
        tmp_path,
        "blpo",
        2,
        [(500, 0.0), (1000, 40.0)],
        hypergrad__correction_ratio=[(100, 4.0), (200, 6.0)],
        hypergrad__nonfinite_fallbacks=[(100, 0.0), (200, 3.0)],
        hypergrad__ihvp_error=[(100, 1.5)],
        hypergrad__ihvp_cos=[(100, 1.0)],
        losses__entropy=[(100, 2.0), (200, -1.5)],
        hypergrad__push__actor_logstd__ratio=[(200, 1.5)],
        hypergrad__push__actor_logstd__cos_direct=[(200, 0.0)],
        hypergrad__push__actor_logstd__coherence=[(200, 4.0)],
    )
    return tmp_path
