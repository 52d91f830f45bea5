"""A refactor changes no number: fixed-seed runs of each script log exactly the scalars recorded in tests/golden/.

Every scalar but charts/SPS, at every step, bit for bit (float32 as TensorBoard stores it). After a change that is
meant to change the numbers, rewrite the records with `UPDATE_GOLDEN=1 python -m pytest tests/test_same_numbers.py`
and say in the commit why they changed.

Float32 results depend on the CPU's kernels: ATen's vectorized code (AVX-512, AVX2 or none), MKL's code path and
oneDNN's ISA each round differently, and on another processor the first iteration's numbers differ by up to 8e-5
relative, more than a deliberate change such as --vf-coef 0.5001 moves them (1e-5). A tolerance cannot tell the two
apart, so the runs are not compared loosely: they run in one subprocess with the kernels pinned (PINNED_KERNELS:
ATen's scalar code, MKL's compatible path, one thread), which gives the same bits whatever the CPU offers, and are
compared bit for bit on every x86-64 machine. Running `python tests/test_same_numbers.py OUT_DIR` under PINNED_KERNELS
writes the records there. The pin does not reach MKL's vector sqrt, which refines the processor's estimate of 1/sqrt
and so rounds differently on Intel, AMD and QEMU: the scripts' Adams are fused, whose sqrt is exact. RECORDS_LAUNCHER
(e.g. "qemu-x86_64 -cpu Haswell") runs the records on an emulated processor, as CI does for the records that
RECORDS_ONLY names (a shell pattern; the others are skipped).
"""

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

GOLDEN = Path(__file__).parent / "golden"
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}
SMALL_MUJOCO = ["--env-id", "Hopper-v4", "--total-timesteps", "4096", "--num-steps", "1024", "--num-minibatches", "8"]
AUTHORS_SMALL = ["--num-envs", "4", "--num-steps", "128", "--num-minibatches", "4", "--update-epochs", "2"]
AUTHORS_SMALL += ["--total-timesteps", "1024"]
RUNS = {
    "ppo_continuous": SMALL_MUJOCO + ["--update-epochs", "2"],
    "blpo_continuous": SMALL_MUJOCO + ["--update-epochs", "2"],
    "blpo_discrete": ["--env-id", "CartPole-v1", "--total-timesteps", "2048"],
    **{f"blpo_continuous_authors-{algo}": AUTHORS_SMALL + ["--algo", algo] for algo in ("blpo", "nested", "ppo")},
}

pytestmark = pytest.mark.cpu_numbers


def selected() -> list[str]:
    """The names of RUNS that RECORDS_ONLY matches (all without it)."""
    return [name for name in RUNS if fnmatch.fnmatch(name, os.environ.get("RECORDS_ONLY", "*"))]


def record_runs(out: Path) -> None:
    """Run the selected fixed-seed runs of RUNS in this process and write `{out}/{name}.json`: tag -> [[step, value],
    ...], SPS left out."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from scripts import read_scalars

    from benchmark.in_process import load_script, run_main

    torch.set_num_threads(1)
    for name in selected():
        flags = RUNS[name]
        run_dir = run_main(load_script(name.split("-")[0]), ["--seed", "7", *flags], out / "cwd" / name)
        numbers = {
            tag: [[s, v] for s, v in events] for tag, events in read_scalars(run_dir).items() if tag != "charts/SPS"
        }
        (out / f"{name}.json").write_text(json.dumps(numbers, indent=0, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def pinned_numbers(tmp_path_factory):
    """name -> the numbers of its fixed-seed run, made in one subprocess under PINNED_KERNELS."""
    out = tmp_path_factory.mktemp("same_numbers")
    env = {**os.environ, **PINNED_KERNELS, "MUJOCO_GL": "egl"}
    launcher = shlex.split(os.environ.get("RECORDS_LAUNCHER", ""))
    if launcher and not shutil.which(launcher[0]):
        pytest.skip(f"RECORDS_LAUNCHER: {launcher[0]} is not installed (apt-get install qemu-user, as root)")
    result = subprocess.run([*launcher, sys.executable, __file__, str(out)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: json.loads((out / f"{name}.json").read_text()) for name in selected()}


@pytest.mark.parametrize("name", RUNS)
def test_fixed_seed_run_logs_the_recorded_numbers(name, pinned_numbers):
    if name not in pinned_numbers:
        pytest.skip(f"RECORDS_ONLY leaves {name} out")
    numbers, path = pinned_numbers[name], GOLDEN / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(numbers, indent=0, sort_keys=True) + "\n")
    recorded = json.loads(path.read_text())
    assert sorted(numbers) == sorted(recorded)
    for tag, events in recorded.items():
        assert numbers[tag] == events, tag


if __name__ == "__main__":
    record_runs(Path(sys.argv[1]))
