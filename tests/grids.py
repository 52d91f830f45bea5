"""Helpers for the benchmark tests: a tiny grid of benchmark/run.py in a subprocess, and runs written by hand."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TINY
from torch.utils.tensorboard import SummaryWriter

SIZES = " ".join(TINY["ppo_continuous"].sizes())
VARIANTS = {"ppo": f"ppo_continuous.py {SIZES}", "lr1e-3": f"ppo_continuous.py {SIZES} --learning-rate 1e-3"}
SEEDS = [1, 2]
TOTAL = 1024


def runner(*flags: str) -> subprocess.CompletedProcess:
    """benchmark/run.py FLAGS in a subprocess, from the repository root."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmark" / "run.py"), *flags],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )


def start_runner(*flags: str, **popen_kwargs) -> subprocess.Popen:
    """benchmark/run.py FLAGS started in a subprocess from the repository root, its output piped as text."""
    command = [sys.executable, str(ROOT / "benchmark" / "run.py"), *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.Popen(command, cwd=ROOT, env=env, **pipes | popen_kwargs)


def grid_flags(out: Path) -> list[str]:
    return [
        "--variants",
        *(f"{name}={entry}" for name, entry in VARIANTS.items()),
        "--env-ids",
        "Hopper-v4",
        "--seeds",
        *map(str, SEEDS),
        "--total-timesteps",
        str(TOTAL),
        "--workers",
        "2",
        "--threshold",
        "10",
        "--out",
        str(out),
    ]


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    """summary.csv lines by variant (a single environment)."""
    with path.open(newline="") as f:
        return {line["variant"]: line for line in csv.DictReader(f)}


def write_run(out: Path, variant: str, seed: int, episodes: list[tuple[int, float]], **extra) -> None:
    """A finished run as the runner leaves it: record.json and TensorBoard events of (step, return)
    episodes, plus scalars given as `tag=[(step, value), ...]` (`/` written as `__`)."""
    directory = out / variant / "CartPole-v1" / f"seed{seed}"
    writer = SummaryWriter(str(directory / "runs" / f"CartPole-v1__{variant}__{seed}"))
    for step, value in episodes:
        writer.add_scalar("charts/episodic_return", value, step)
    for tag, events in extra.items():
        for step, value in events:
            writer.add_scalar(tag.replace("__", "/"), value, step)
    writer.close()
    record = {"variant": variant, "env_id": "CartPole-v1", "seed": seed, "total_timesteps": 1000, "returncode": 0}
    record |= {"wall_clock_s": 100.0 * seed, "sps": 10.0 / seed}
    (directory / "record.json").write_text(json.dumps(record))
