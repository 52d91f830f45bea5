"""A refactor changes no number: fixed-seed runs of each script log exactly the scalars recorded in tests/golden/.

Every scalar but charts/SPS, at every step, bit for bit (float32 as TensorBoard stores it). After a change that is
meant to change the numbers, rewrite the records with `UPDATE_GOLDEN=1 python -m pytest tests/test_same_numbers.py`
and say in the commit why they changed. The records were made on this project's CI machine (x86-64, one torch thread);
another CPU may round differently.
"""

import json
import os
from pathlib import Path

import pytest
from scripts import read_scalars

from benchmark.in_process import load_script, run_main

GOLDEN = Path(__file__).parent / "golden"
SMALL_MUJOCO = ["--env-id", "Hopper-v4", "--total-timesteps", "4096", "--num-steps", "1024", "--num-minibatches", "8"]
RUNS = {
    "ppo_continuous": SMALL_MUJOCO + ["--update-epochs", "2"],
    "blpo_continuous": SMALL_MUJOCO + ["--update-epochs", "2"],
    "blpo_continuous-fixed-flipped": SMALL_MUJOCO
    + ["--update-epochs", "1", "--correction", "fixed", "--flip-mixed-sign"],
    "blpo_continuous-random": SMALL_MUJOCO
    + ["--update-epochs", "1", "--correction", "random", "--hypergrad-bound", "1"],
    "blpo_discrete": ["--env-id", "CartPole-v1", "--total-timesteps", "2048"],
}


def logged_numbers(name, cwd):
    """tag -> [[step, value], ...] of a fixed-seed run of the script that `name` starts with, SPS left out."""
    script = name.split("-")[0]
    scalars = read_scalars(run_main(load_script(script), ["--seed", "7", *RUNS[name]], cwd))
    return {tag: [[step, value] for step, value in events] for tag, events in scalars.items() if tag != "charts/SPS"}


@pytest.mark.parametrize("name", RUNS)
def test_fixed_seed_run_logs_the_recorded_numbers(name, tmp_path):
    numbers = logged_numbers(name, tmp_path)
    path = GOLDEN / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(numbers, indent=0, sort_keys=True) + "\n")
    recorded = json.loads(path.read_text())
    assert sorted(numbers) == sorted(recorded)
    for tag, events in recorded.items():
        assert numbers[tag] == events, tag
