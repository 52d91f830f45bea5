"""Run a grid of (variant, env, seed) training runs in parallel, then aggregate them.

    python benchmark/run.py --variants ppo=ppo_continuous.py "blpo=blpo_continuous.py --nested-updates 3" \
        --env-ids HalfCheetah-v4 Hopper-v4 --seeds 1 2 3 --total-timesteps 1000000

A variant is `SCRIPT [FLAGS...]`, optionally named `NAME=SCRIPT [FLAGS...]`. Each run lives in
`{out}/{variant}/{env_id}/seed{seed}/`: the script runs there (its TensorBoard events land in `runs/`, which git
ignores), its output goes to `run.log`, and once it has finished its compact record: `episodes.csv` (every episode's
global step, return, length and seconds) and `record.json` (the command, the commit, wall-clock, SPS and a summary of
the scalars the tables use). A run with a record is skipped, so an interrupted grid resumes where it stopped; a run
that fails leaves `failed.json` with its last error line, and the grid goes on. Ctrl-C stops the running runs and
names the runs that did not finish. `--backend ray` runs each (variant, env, seed) as a Ray task of one CPU, on a
local Ray or on the cluster at `--ray-address`; the records come back to `{out}`, so no shared filesystem is needed.

After the grid, or alone with `--aggregate-only`, every finished run under `{out}` is aggregated from
its compact record (a run that has only events is converted first) into `summary.md` (Markdown tables headed by the
command line), `summary.csv`
(one row per env and variant, per-seed values included) and `{env_id}.png` (return against steps,
mean ± std over seeds). CleanRL's PPO episodes, when `REFERENCE_CSV`
exists, add a reference row and a reference curve.

Interval estimates come from rliable's stratified bootstrap: each row's interquartile mean (IQM) of the seeds'
last-10% returns with its 95% CI (in the results table and summary.csv), and the probability of improvement
P(X > Y) of every variant X over each `--baselines` variant Y, per env and averaged over envs, with its 95% CI and
a verdict (a table in summary.md, `probability_of_improvement.csv` and `probability_of_improvement.png`).
"""

import ctypes
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmark/run.py` imports its rooms too
from benchmark.records import ROOT, compact_record, fail, is_disk_full, record_fault, write_whole  # noqa: E402
from benchmark.report import BASELINES, aggregate  # noqa: E402
from benchmark.stats import BOOTSTRAP_SEED  # noqa: E402


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
    """runs at once on this machine (`--backend local`, or the CPUs of a local Ray), each with one torch thread"""
    backend: Literal["local", "ray"] = "local"
    """where the runs execute: processes on this machine, or Ray tasks of one CPU each"""
    ray_address: str | None = None
    """with --backend ray, the HOST:PORT of a running Ray cluster to join; without it a local Ray is started"""
    ray_events: bool = False
    """with --backend ray, also bring each run's TensorBoard events back to `out` (the compact record always comes)"""
    out: Path = ROOT / "benchmark" / "out"
    """folder of the run directories and of the aggregated table, CSV and plots (the default is git-ignored; the
    committed results live in benchmark/results/)"""
    threshold: float | None = None
    """return whose first crossing (mean of the last 20 episodes) is reported as steps-to-threshold"""
    aggregate_only: bool = False
    """skip running; only aggregate the finished runs in `out` (whatever their variant, env and seed)"""
    track: bool = False
    """pass `--track` to every script, so that each run logs to Weights & Biases"""
    wandb_project_name: str = "blpo"
    """Weights & Biases project the scripts log to with `--track`"""
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    """variants every other variant is compared with by the probability of improvement; absent ones are skipped"""
    bootstrap_seeds: list[int] = field(default_factory=lambda: [BOOTSTRAP_SEED])
    """bootstrap generator seeds: the first gives the reported intervals; with more, every P(X > Y) is drawn again
    under each, the tables give the range of its interval's ends, and a verdict must hold under every draw"""


@dataclass(frozen=True)
class Variant:
    name: str
    script: str
    flags: tuple[str, ...]


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


def check_variants(variants: list[Variant]) -> None:
    """Stop before any run if two variants share a name or a variant passes a flag its script does not take (read
    from the script's --help)."""
    names = [v.name for v in variants]
    if len(set(names)) < len(names):
        fail(f"two variants are named {next(n for n in names if names.count(n) > 1)!r}; give each its own NAME=")
    helps = {}
    for variant in variants:
        if variant.script not in helps:
            result = subprocess.run(
                [sys.executable, str(ROOT / variant.script), "--help"], capture_output=True, text=True, timeout=120
            )
            helps[variant.script] = result.stdout
        for flag in (f.partition("=")[0] for f in variant.flags if f.startswith("--")):
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[variant.script]):
                fail(f"variant {variant.name!r}: {variant.script} has no flag {flag} (see its --help)")


def check_env_ids(env_ids: list[str]) -> None:
    import gymnasium as gym

    for env_id in env_ids:
        try:
            gym.spec(env_id)
        except gym.error.Error as e:
            fail(f"unknown env id {env_id!r} ({e}); pass registered Gymnasium ids")


class Workers:
    """The training processes the grid is running, so that Ctrl-C can stop every one of them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen] = set()
        self.stopped = False

    def run(self, command: list[str], **popen_kwargs) -> int | None:
        """Run `command` to its end and return its exit code; None, without starting it, once stop() was called."""
        with self.lock:
            if self.stopped:
                return None
            proc = subprocess.Popen(command, preexec_fn=die_with_parent, **popen_kwargs)
            self.running.add(proc)
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.running.discard(proc)

    def stop(self) -> None:
        """Kill the running processes and start no more; returns once they have exited."""
        with self.lock:
            self.stopped = True
            running = list(self.running)
        for proc in running:
            proc.kill()
        for proc in running:
            proc.wait()


RUN_SPACE = 32 * 2**20
"""the disk space a run may take (its events, log and record): below it, a run that failed is taken to have met a
full disk"""


PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None  # looked up before any fork


def die_with_parent() -> None:
    """In a run's process before it starts (Linux): SIGKILL it when the thread that started it dies, so that a killed
    runner or Ray worker leaves no training behind (the thread waits on the run, so it lives as long)."""
    if PRCTL is not None:
        PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_dir(out: Path, variant: Variant, env_id: str, seed: int) -> Path:
    return out / variant.name / env_id / f"seed{seed}"


def execute_run(
    variant: Variant,
    env_id: str,
    seed: int,
    total_timesteps: int,
    directory: Path,
    extra_flags: tuple[str, ...] = (),
    workers: Workers | None = None,
    root: Path = ROOT,
    commit: str | None = None,
) -> dict | None:
    """Run one training run to completion in `directory` (as one of `workers`, if given) with the scripts of `root`;
    write its compact record (record.json and episodes.csv), or failed.json if it failed, and return the record, or
    None when the workers were stopped before it started.

    `extra_flags` go to the script after the variant's own flags (e.g. `--track`); `commit` is the repository's,
    looked up in `root` if not given."""
    if directory.exists():
        shutil.rmtree(directory)  # leftovers of an interrupted run
    directory.mkdir(parents=True)
    command = [
        sys.executable,
        str(root / variant.script),
        *variant.flags,
        *extra_flags,
        "--env-id",
        env_id,
        "--seed",
        str(seed),
        "--total-timesteps",
        str(total_timesteps),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MUJOCO_GL="egl")
    commit = commit or git_commit(root)
    start = time.time()
    try:
        with open(directory / "run.log", "w") as log:
            returncode = (workers or Workers()).run(command, cwd=directory, env=env, stdout=log, stderr=log)
    except OSError as e:
        raise DiskFull(directory) if is_disk_full(e) else e
    if returncode is None:
        return None
    wall_clock = time.time() - start
    record = {
        "variant": variant.name,
        "script": variant.script,
        "flags": list(variant.flags),
        "env_id": env_id,
        "seed": seed,
        "total_timesteps": total_timesteps,
        "command": shlex.join(["python", variant.script, *command[2:]]),
        "commit": commit,
        "returncode": returncode,
        "wall_clock_s": wall_clock,
        "sps": total_timesteps / wall_clock,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
    }
    try:
        if returncode == 0:
            compact_record(directory, record)
            return record
        if shutil.disk_usage(directory).free < RUN_SPACE:  # the run failed for want of space, most likely
            raise DiskFull(directory)
        lines = (directory / "run.log").read_text(errors="replace").strip().splitlines()
        errors = [line for line in lines if line.startswith("error:") or "Error" in line]
        record["error"] = (errors or lines or ["(no output)"])[-1][-300:]
        write_whole(directory / "failed.json", json.dumps(record, indent=1) + "\n")
    except OSError as e:
        raise DiskFull(directory) if is_disk_full(e) else e
    return record


def git_commit(root: Path = ROOT) -> str:
    """The commit of the checkout at `root` (with `+dirty` if tracked files differ from it), or "unknown"."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root, capture_output=True).returncode != 0
    return head.stdout.strip() + ("+dirty" if dirty else "")


def has_record(directory: Path) -> bool:
    """Whether the run in `directory` finished: a whole record (records.record_fault)."""
    return (directory / "record.json").is_file() and record_fault(directory) is None


class DiskFull(Exception):
    """A run, or the runner's writes for it, met a full disk; its argument is the run's directory."""

    def __str__(self) -> str:
        free = shutil.disk_usage(self.args[0]).free
        return (
            f"no space left for the runs in {self.args[0].parent.parent.parent} ({free / 2**20:.1f} MiB free; a run "
            f"needs about {RUN_SPACE / 2**20:.0f} MiB): free space, then run the same command; it resumes the runs "
            "that did not finish"
        )


def fault_line(path: Path, fault: str, what: str) -> str:
    """The one line that names a record that is not whole, why, and what happens to it."""
    return f"{path}: {fault}; {what}"


def set_aside(out: Path, directory: Path, fault: str) -> None:
    """Move the run folder whose record is not whole to `{out}/set-aside/`, out of the grid's way, and say so."""
    target = (
        out / "set-aside" / directory.relative_to(out).parent / f"{directory.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    directory.rename(target)
    print(fault_line(directory / "record.json", fault, f"set aside as {target}, its run is redone"), flush=True)


def tracking_flags(args: Args) -> tuple[str, ...]:
    """Flags that make every script log to Weights & Biases, when asked for."""
    return ("--track", "--wandb-project-name", args.wandb_project_name) if args.track else ()


class Progress:
    """The grid's progress line after each finished run: done, running, failed, left, and an estimated finish from
    the mean duration of the runs finished so far."""

    def __init__(self, total: int, slots: int):
        self.total, self.slots, self.durations, self.failed = total, max(1, slots), [], 0
        self.lock = threading.Lock()

    def report(self, name: str, record: dict, where: Path) -> None:
        with self.lock:
            self.durations.append(record["wall_clock_s"])
            ok = record["returncode"] == 0
            self.failed += not ok
            done = len(self.durations)
            running = min(self.slots, self.total - done)
            left = self.total - done - running
            eta = time.time() + np.mean(self.durations) * math.ceil((running + left) / self.slots)
            status = (
                "ok" if ok else f"FAILED ({record['returncode']}: {record.get('error', '')}), see {where / 'run.log'}"
            )
            where = record.get("host", "?")
            print(
                f"{name}: {status}, {record['wall_clock_s']:.0f} s on {where}; {done - self.failed} done, "
                f"{running} running, {self.failed} failed, {left} left"
                + (f", finish about {time.strftime('%H:%M', time.localtime(eta))}" if running + left else ""),
                flush=True,
            )


def grid_jobs(args: Args, variants: list[Variant]) -> tuple[list, list]:
    """Every (variant, env, seed, directory) of the grid, and those without a record yet."""
    jobs = [
        (v, env_id, seed, run_dir(args.out, v, env_id, seed))
        for env_id in args.env_ids
        for seed in args.seeds
        for v in variants
    ]
    for *_, directory in jobs:
        if (directory / "record.json").exists() and (fault := record_fault(directory)):
            set_aside(args.out, directory, fault)
    return jobs, [job for job in jobs if not has_record(job[3])]


def interrupted(todo: list) -> None:
    unfinished = [f"{v.name} {env_id} seed {seed}" for v, env_id, seed, directory in todo if not has_record(directory)]
    print(
        f"interrupted: {len(unfinished)} run(s) did not finish: {', '.join(unfinished)}; the same command resumes them",
        file=sys.stderr,
    )
    sys.exit(130)


def run_grid(args: Args, variants: list[Variant]) -> int:
    """Launch the grid's unfinished runs on `args.workers` local workers; return how many failed."""
    jobs, todo = grid_jobs(args, variants)
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already finished, {len(todo)} to run on {args.workers} workers")
    workers, progress, commit = Workers(), Progress(len(todo), args.workers), git_commit()

    def work(job):
        variant, env_id, seed, directory = job
        flags = tracking_flags(args)
        record = execute_run(variant, env_id, seed, args.total_timesteps, directory, flags, workers, commit=commit)
        if record is None or workers.stopped:
            return record  # Ctrl-C: the main thread reports
        progress.report(f"{variant.name} {env_id} seed {seed}", record, directory)
        return record

    pool = ThreadPoolExecutor(max_workers=max(1, args.workers))
    try:
        records = list(pool.map(work, todo))
    except (KeyboardInterrupt, DiskFull) as e:
        pool.shutdown(wait=False, cancel_futures=True)
        workers.stop()
        pool.shutdown(wait=True)
        if isinstance(e, DiskFull):
            fail(str(e))
        interrupted(todo)
    pool.shutdown()
    return sum(r["returncode"] != 0 for r in records)


def command_line() -> str:
    """The command that started this process, each absolute path inside a checkout of this repository (a folder
    with benchmark/run.py) written relative to it: a summary names no path of the machine that made it."""
    return shlex.join(["python", *map(repository_relative, sys.argv)])


def repository_relative(arg: str) -> str:
    path = Path(arg)
    if not path.is_absolute():
        return arg
    checkouts = [parent for parent in path.parents if (parent / "benchmark" / "run.py").is_file()]
    return str(path.relative_to(checkouts[0])) if checkouts else arg


def main(args: Args) -> None:
    failed = 0
    if not args.aggregate_only:
        variants = [parse_variant(entry) for entry in args.variants]
        check_variants(variants)
        check_env_ids(args.env_ids)
        if args.backend == "ray":
            from benchmark.ray_grid import check_reachable, run_grid_ray

            if args.ray_address:
                check_reachable(args.ray_address)
        failed = (run_grid_ray if args.backend == "ray" else run_grid)(args, variants)
    records = []
    for path in sorted(args.out.glob("*/*/seed*/record.json")):
        if fault := record_fault(path.parent):
            print(fault_line(path, fault, "left out; the grid's command sets it aside and redoes its run"))
        else:
            records.append(path)
    try:
        if records:
            aggregate(records, args.out, args.threshold, command_line(), args.baselines, args.bootstrap_seeds)
    except OSError as e:
        if not is_disk_full(e):
            raise
        fail(
            f"cannot write the summary into {args.out}: {e.strerror}; every record is kept, and each file written "
            "is whole: free space, then run with --aggregate-only"
        )
    if failed:
        fail(f"{failed} run(s) failed; their failed.json and run.log say why; run the grid again to retry them")
    if not records:
        fail(f"no finished run (record.json) under {args.out}; run the grid first")


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except KeyboardInterrupt:  # while aggregating; the grid handles its own
        sys.exit("interrupted")
