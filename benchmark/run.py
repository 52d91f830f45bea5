"""Run a grid of (variant, env, seed) training runs in parallel, then aggregate them.

    python benchmark/run.py --variants ppo=ppo_continuous.py "blpo=blpo_continuous.py --nested-updates 3" \
        --env-ids HalfCheetah-v4 Hopper-v4 --seeds 1 2 3 --total-timesteps 1000000

A variant is `SCRIPT [FLAGS...]`, optionally named `NAME=SCRIPT [FLAGS...]`. Each run lives in
`{out}/{variant}/{env_id}/seed{seed}/`: the script runs there (its TensorBoard events land in `runs/`),
its output goes to `run.log`, and `record.json` is written once it has finished. A run with a record
is skipped, so an interrupted grid resumes where it stopped.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Args:
    variants: list[str] = field(default_factory=lambda: ["ppo=ppo_continuous.py"])
    """entries `[NAME=]SCRIPT [FLAGS...]`; SCRIPT is relative to the repository root"""
    env_ids: list[str] = field(default_factory=lambda: ["HalfCheetah-v4"])
    """environment ids to run every variant on"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds to run every (variant, env) pair with"""
    total_timesteps: int = 1000000
    """environment steps per run"""
    workers: int = os.cpu_count() or 1
    """runs at once, each with one torch thread"""
    out: Path = ROOT / "benchmark" / "results"
    """folder of the run directories and of the aggregated table, CSV and plots"""
    threshold: float | None = None
    """return whose first crossing (mean of the last 20 episodes) is reported as steps-to-threshold"""
    aggregate_only: bool = False
    """skip running; only aggregate what is in `out`"""


@dataclass(frozen=True)
class Variant:
    name: str
    script: str
    flags: tuple[str, ...]


def fail(message: str) -> None:
    sys.exit(f"error: {message}")


def parse_variant(entry: str) -> Variant:
    """`[NAME=]SCRIPT [FLAGS...]` -> Variant; the default name is the script's stem plus its flags."""
    name, _, rest = entry.partition("=") if re.match(r"^[\w.-]+=", entry) else ("", "", entry)
    words = shlex.split(rest)
    if not words:
        fail(f"variant {entry!r} names no script; write it as [NAME=]SCRIPT [FLAGS...]")
    script, flags = words[0], tuple(words[1:])
    if not (ROOT / script).is_file():
        fail(f"variant {entry!r}: no script {script!r} in the repository; use e.g. ppo_continuous.py")
    if not name:
        name = "_".join([Path(script).stem] + [re.sub(r"^-+", "", f) for f in flags])
    return Variant(re.sub(r"[^\w.-]+", "-", name), script, flags)


def check_env_ids(env_ids: list[str]) -> None:
    import gymnasium as gym

    for env_id in env_ids:
        try:
            gym.spec(env_id)
        except gym.error.Error as e:
            fail(f"unknown env id {env_id!r} ({e}); pass registered Gymnasium ids")


def run_dir(out: Path, variant: Variant, env_id: str, seed: int) -> Path:
    return out / variant.name / env_id / f"seed{seed}"


def launch(variant: Variant, env_id: str, seed: int, total_timesteps: int, directory: Path) -> dict:
    """Run one training run to completion in `directory`; write and return its record."""
    if directory.exists():
        shutil.rmtree(directory)  # leftovers of an interrupted run
    directory.mkdir(parents=True)
    command = [
        sys.executable,
        str(ROOT / variant.script),
        *variant.flags,
        "--env-id",
        env_id,
        "--seed",
        str(seed),
        "--total-timesteps",
        str(total_timesteps),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MUJOCO_GL="egl")
    start = time.time()
    with open(directory / "run.log", "w") as log:
        returncode = subprocess.run(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall_clock = time.time() - start
    record = {
        "variant": variant.name,
        "script": variant.script,
        "flags": list(variant.flags),
        "env_id": env_id,
        "seed": seed,
        "total_timesteps": total_timesteps,
        "command": shlex.join(["python", variant.script, *command[2:]]),
        "returncode": returncode,
        "wall_clock_s": wall_clock,
        "sps": total_timesteps / wall_clock,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if returncode == 0:
        (directory / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def finished(directory: Path) -> bool:
    return (directory / "record.json").is_file()


def run_grid(args: Args, variants: list[Variant]) -> None:
    jobs = [
        (v, env_id, seed, run_dir(args.out, v, env_id, seed))
        for env_id in args.env_ids
        for seed in args.seeds
        for v in variants
    ]
    todo = [job for job in jobs if not finished(job[3])]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already finished, {len(todo)} to run on {args.workers} workers")

    def work(job):
        variant, env_id, seed, directory = job
        record = launch(variant, env_id, seed, args.total_timesteps, directory)
        status = "ok" if record["returncode"] == 0 else f"FAILED ({record['returncode']}), see {directory / 'run.log'}"
        print(f"{variant.name} {env_id} seed {seed}: {status}, {record['wall_clock_s']:.0f} s", flush=True)
        return record

    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        records = list(pool.map(work, todo))
    if any(r["returncode"] != 0 for r in records):
        fail("some runs failed; their run.log says why")


def main(args: Args) -> None:
    variants = [parse_variant(entry) for entry in args.variants]
    check_env_ids(args.env_ids)
    if not args.aggregate_only:
        run_grid(args, variants)


if __name__ == "__main__":
    main(tyro.cli(Args))
