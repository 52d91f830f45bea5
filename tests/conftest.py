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


@pytest.fixture(params=BLPO_SCRIPTS)
def blpo(request):
    """A BLPO script's module, with float64 as the default dtype so that comparisons with references can be tight."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield importlib.import_module(request.param)
    torch.set_default_dtype(previous)
