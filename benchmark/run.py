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

import csv
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_CSV = ROOT.parent / "shared" / "reference" / "cleanrl_ppo_episodes.csv"
"""CleanRL PPO episodes (script, env_id, seed, global_step, episodic_return); optional"""
REFERENCE_NAME = "CleanRL PPO (reference)"
LAST_FRACTION_START = 0.9
"""the last-10% return averages the episodes that ended after this fraction of the total steps"""
WINDOW = 20
"""episodes in the running mean behind steps-to-threshold and the learning curves"""
GRID_POINTS = 100
"""points of the common grid the seeds' learning curves are interpolated onto"""
ENTROPY = "losses/entropy"
"""the policy entropy, reported by its last value: whether the policy collapsed by the end"""
COUNTERS = ("hypergrad/nonfinite_fallbacks", "hypergrad/gauss_newton_fallbacks", "hypergrad/nonfinite_corrections")
"""counts over the run so far: reported by their final value, summed over seeds, instead of their mean"""
FINALS = ("hypergrad/logstd_push_ratio", "hypergrad/logstd_push_cos")
"""statistics of the run so far: reported by their final value, averaged over seeds"""
EPISODES_CSV = "episodes.csv"
"""a run's episodes in its compact record: global_step, return, length, seconds (since the run's first event)"""
EXTREMES = {"hypergrad/correction_ratio": max, "hypergrad/ihvp_error": max, "hypergrad/ihvp_cos": min}
"""diagnostics whose extreme logged value, over the run and over seeds, is reported beside their mean"""
PUSH = "hypergrad/push/"
"""cumulative diagnostics `hypergrad/push/{actor tensor}/{statistic}`: reported by their final value, per seed"""
BASELINES = ("ppo", "ppo-nested")
"""the variants every other variant is compared with by the probability of improvement, unless `--baselines` says"""
BOOTSTRAP_REPS = 500
"""bootstrap resamples behind every confidence interval (rliable's default is 50,000). With few seeds P takes few
values, and the interval's ends move by one of its steps between generator seeds at 5,000 resamples as at 500"""
MIN_SEEDS = 5
"""the fewest seeds of each variant on each task for a verdict that one variant beats another"""
BOOTSTRAP_SEED = 0
"""NumPy's global generator is seeded with this for every bootstrap, unless `--bootstrap-seeds` adds others: rliable
1.2.0 draws its resamples with np.random.choice and ignores its `random_state` argument"""


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


def fail(message: str) -> None:
    """Stop with one line on stderr and a non-zero exit, no traceback."""
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
            proc = subprocess.Popen(command, **popen_kwargs)
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
    with open(directory / "run.log", "w") as log:
        returncode = (workers or Workers()).run(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
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
    if returncode == 0:
        (directory / "record.json").write_text(json.dumps(record, indent=1) + "\n")
        compact_record(directory)
    else:
        lines = (directory / "run.log").read_text(errors="replace").strip().splitlines()
        errors = [line for line in lines if line.startswith("error:") or "Error" in line]
        record["error"] = (errors or lines or ["(no output)"])[-1][-300:]
        (directory / "failed.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def git_commit(root: Path = ROOT) -> str:
    """The commit of the checkout at `root` (with `+dirty` if tracked files differ from it), or "unknown"."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root, capture_output=True).returncode != 0
    return head.stdout.strip() + ("+dirty" if dirty else "")


def finished(directory: Path) -> bool:
    return (directory / "record.json").is_file()


def tracking_flags(args: Args) -> tuple[str, ...]:
    """Flags that make every script log to Weights & Biases, when asked for."""
    return ("--track", "--wandb-project-name", args.wandb_project_name) if args.track else ()


class Progress:
    """The grid's progress line after each finished run: done, running, failed, left, and an estimated finish from
    the mean duration of the runs finished so far."""

    def __init__(self, total: int, slots: int):
        self.total, self.slots, self.durations, self.failed = total, max(1, slots), [], 0
        self.lock = threading.Lock()

    def finished(self, name: str, record: dict, where: Path) -> None:
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
    return jobs, [job for job in jobs if not finished(job[3])]


def interrupted(todo: list) -> None:
    unfinished = [f"{v.name} {env_id} seed {seed}" for v, env_id, seed, directory in todo if not finished(directory)]
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
        progress.finished(f"{variant.name} {env_id} seed {seed}", record, directory)
        return record

    pool = ThreadPoolExecutor(max_workers=max(1, args.workers))
    try:
        records = list(pool.map(work, todo))
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        workers.stop()
        pool.shutdown(wait=True)
        interrupted(todo)
    pool.shutdown()
    return sum(r["returncode"] != 0 for r in records)


# The Ray backend: each run a task of one CPU; no shared filesystem, the records come back to the driver


def ray_run(variant: Variant, env_id: str, seed: int, total: int, flags: tuple, commit: str, events: bool) -> dict:
    """On a Ray worker: one training run in a fresh folder, with the scripts of the task's working directory (the
    repository, shipped by Ray); returns its files (the compact record or failed.json, and the events if asked) by
    path relative to the run's folder."""
    import tempfile

    root = Path.cwd() if (Path.cwd() / variant.script).is_file() else ROOT
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "run"
        record = execute_run(variant, env_id, seed, total, directory, flags, root=root, commit=commit)
        keep = ["record.json", EPISODES_CSV, "failed.json", "run.log"]
        paths = [directory / name for name in keep] + (list(directory.glob("runs/**/*")) if events else [])
        files = {str(p.relative_to(directory)): p.read_bytes() for p in paths if p.is_file()}
    return {"record": record, "files": files}


RAY_TOKEN = Path.home() / ".ray" / "auth_token"  # where `ray start --head` keeps the cluster's token


def check_reachable(address: str) -> None:
    """Stop with one line unless a TCP connection to HOST:PORT opens within 5 s (Ray itself would wait)."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        fail(f"cannot reach a Ray cluster at --ray-address {address!r} ({e}); give the head node's HOST:PORT")


def run_grid_ray(args: Args, variants: list[Variant]) -> int:
    """Submit the grid's unfinished runs as Ray tasks of one CPU each, write what each returns into `args.out`, and
    return how many failed."""
    if not args.ray_address:  # a local Ray on loopback (its node address 127.0.0.1, as Ray does on macOS and Windows)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_worker_niceness", "0")  # not Ray's 15: beside other work, nice 15 runs 10x slower
    elif any([os.environ.get("RAY_AUTH_TOKEN"), os.environ.get("RAY_AUTH_TOKEN_PATH"), RAY_TOKEN.exists()]):
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # `ray start --head` wants the token; ray.init sends it only so
    import ray

    if args.ray_address:
        check_reachable(args.ray_address)
    runtime_env = {"working_dir": str(ROOT), "excludes": [".git", "benchmark/results", "benchmark/archive", "runs"]}
    options = dict(runtime_env=runtime_env, log_to_driver=False, logging_level="ERROR")
    if args.ray_address:
        stderr, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)  # Ray's client prints each failed retry to fd 2 for 20 s; one line below says why instead
        try:
            ray.init(address=args.ray_address, **options)
            reason = None
        except (ConnectionError, RuntimeError) as e:  # a missing token, say: Ray's innermost error, its first sentence
            reason = str(e.__cause__ or e).strip().splitlines()[-1].split(". ")[0]
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
            os.close(null)
        if reason:
            hint = "; copy the head's ~/.ray/auth_token here or set RAY_AUTH_TOKEN" if "Auth" in reason else ""
            fail(f"cannot join the Ray cluster at {args.ray_address} ({reason}){hint}")
    else:  # a new local cluster on loopback only, even beside a running one
        ray.init("local", num_cpus=args.workers, include_dashboard=False, _node_ip_address="127.0.0.1", **options)
    try:
        cpus, nodes = int(ray.cluster_resources().get("CPU", 0)), len(ray.nodes())
        print(f"ray: cluster at {ray.get_runtime_context().gcs_address}, {cpus} CPUs, {nodes} node(s)")
        jobs, todo = grid_jobs(args, variants)
        print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already finished, {len(todo)} to run as Ray tasks")
        task, progress, commit = ray.remote(num_cpus=1)(ray_run), Progress(len(todo), cpus), git_commit()
        pending = {
            task.remote(v, env_id, seed, args.total_timesteps, tracking_flags(args), commit, args.ray_events): job
            for job in todo
            for v, env_id, seed, _ in [job]
        }
        failed = 0
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                variant, env_id, seed, directory = pending.pop(ref)
                result = ray.get(ref)
                if directory.exists():
                    shutil.rmtree(directory)
                for name, data in result["files"].items():
                    (directory / name).parent.mkdir(parents=True, exist_ok=True)
                    (directory / name).write_bytes(data)
                failed += result["record"]["returncode"] != 0
                progress.finished(f"{variant.name} {env_id} seed {seed}", result["record"], directory)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            interrupted(todo)
        return failed
    finally:
        ray.shutdown()


# Aggregation


@dataclass
class Episodes:
    """The finished episodes of one seed, ordered by the global step they ended at."""

    seed: int
    steps: np.ndarray
    returns: np.ndarray
    seconds: np.ndarray | None = None
    """wall-clock seconds since the run's first event; None for the reference, which has no times"""


@dataclass
class Run:
    """A finished run: its record.json, its episodes, its last policy entropy, the whole-run value of each
    `hypergrad/*` scalar and the extreme logged value of each scalar in EXTREMES."""

    record: dict
    episodes: Episodes
    final_entropy: float
    diagnostics: dict[str, float]
    extremes: dict[str, float] = field(default_factory=dict)
    push: dict[str, float] = field(default_factory=dict)
    """the final value of each PUSH scalar, by `{tensor}/{statistic}`"""


@dataclass
class Interval:
    """A point estimate and the bounds of its 95% stratified-bootstrap confidence interval (NaN when unknown)."""

    value: float = math.nan
    low: float = math.nan
    high: float = math.nan


@dataclass
class Row:
    """One variant (or the reference) on one environment, over its seeds."""

    env_id: str
    variant: str
    total_timesteps: int
    seeds: list[int]
    returns: list[float]
    """last-10% mean return per seed (NaN when no episode ended in the last 10%)"""
    threshold_steps: list[float]
    """per seed, the step where the running mean first reached the threshold (NaN if never, or no threshold)"""
    iqm: Interval = field(default_factory=Interval)
    """interquartile mean of the finite `returns`, with its 95% CI"""
    wall_clock_s: float = math.nan
    sps: float = math.nan
    final_entropies: list[float] = field(default_factory=list)
    """per seed, the last logged policy entropy (empty for the reference)"""
    diagnostics: dict[str, float] = field(default_factory=dict)
    extremes: dict[str, float] = field(default_factory=dict)
    """per EXTREMES tag, its extreme logged value over every seed"""
    push: dict[str, list[float]] = field(default_factory=dict)
    """per `{tensor}/{statistic}` of PUSH, its final value in each seed that logged it"""


def load_scalars(directory: Path) -> tuple[dict[str, list], float]:
    """Every scalar event of the run in `directory`, by tag, and the wall time of the run's first event."""
    from tensorboard.backend.event_processing import event_accumulator

    files = sorted(directory.glob("runs/**/events.out.tfevents.*"))
    if not files:
        fail(f"{directory} has a record.json but no TensorBoard events under runs/; delete it to rerun that run")
    scalars, start = defaultdict(list), math.inf
    for path in files:
        accumulator = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.SCALARS: 0})
        accumulator.Reload()
        start = min(start, accumulator.FirstEventTimestamp())
        for tag in accumulator.Tags()["scalars"]:
            scalars[tag] += accumulator.Scalars(tag)
    return {tag: sorted(events, key=lambda e: e.step) for tag, events in scalars.items()}, start


def summarize_events(directory: Path) -> tuple[list[tuple], dict]:
    """From a run's TensorBoard events: its episodes as (global step, return, length, seconds since the run's first
    event), and the summary the tables use: the last policy entropy, the whole-run value of each `hypergrad/*` scalar
    (the final value for COUNTERS and FINALS, else the mean), the extreme of each EXTREMES scalar, the final PUSH
    values."""
    scalars, start = load_scalars(directory)
    returns, lengths = scalars.get("charts/episodic_return", []), scalars.get("charts/episodic_length", [])
    lengths = [e.value for e in lengths] if len(lengths) == len(returns) else [math.nan] * len(returns)
    episodes = [(e.step, e.value, length, e.wall_time - start) for e, length in zip(returns, lengths)]
    summary = {
        "final_entropy": scalars[ENTROPY][-1].value if ENTROPY in scalars else math.nan,
        "diagnostics": {
            tag: events[-1].value if tag in COUNTERS + FINALS else float(np.mean([e.value for e in events]))
            for tag, events in scalars.items()
            if tag.startswith("hypergrad/") and not tag.startswith(PUSH)
        },
        "extremes": {tag: pick(e.value for e in scalars[tag]) for tag, pick in EXTREMES.items() if tag in scalars},
        "push": {tag.removeprefix(PUSH): events[-1].value for tag, events in scalars.items() if tag.startswith(PUSH)},
    }
    return episodes, summary


def compact_record(directory: Path) -> None:
    """Write the compact record of the finished run in `directory` from its events: episodes.csv, and the summary
    into record.json."""
    episodes, summary = summarize_events(directory)
    with (directory / EPISODES_CSV).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["global_step", "return", "length", "seconds"])
        rows = [(step, str(np.float32(r)), f"{length:g}", f"{sec:.1f}") for step, r, length, sec in episodes]
        writer.writerows(rows)  # a float32's shortest repr: read back as float32, it is TensorBoard's value exactly
    record = json.loads((directory / "record.json").read_text())
    (directory / "record.json").write_text(json.dumps(record | {"summary": summary}, indent=1) + "\n")


def load_run(record_path: Path) -> Run:
    """The run whose record is `record_path`, from its compact record; a run with events only (made before compact
    records) is converted first."""
    directory = record_path.parent
    record = json.loads(record_path.read_text())
    if "summary" not in record or not (directory / EPISODES_CSV).is_file():
        compact_record(directory)
        record = json.loads(record_path.read_text())
    path = directory / EPISODES_CSV
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2).reshape(-1, 4)
    returns = np.loadtxt(path, delimiter=",", skiprows=1, usecols=1, dtype=np.float32, ndmin=1).astype(float)
    episodes = Episodes(record["seed"], table[:, 0], returns, table[:, 3])
    summary = record["summary"]
    return Run(record, episodes, summary["final_entropy"], summary["diagnostics"], summary["extremes"], summary["push"])


def load_reference(path: Path) -> dict[str, list[Episodes]]:
    """The reference episodes by env id (one Episodes per seed); empty when the file is absent."""
    if not path.is_file():
        return {}
    by_seed = defaultdict(list)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            by_seed[row["env_id"], int(row["seed"])].append((float(row["global_step"]), float(row["episodic_return"])))
    reference = defaultdict(list)
    for (env_id, seed), episodes in sorted(by_seed.items()):
        steps, returns = np.array(sorted(episodes, key=lambda e: e[0])).T
        reference[env_id].append(Episodes(seed, steps, returns))
    return reference


def running_mean(values: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """At every index, the mean of the last `window` values (of all of them before the window fills)."""
    sums = np.convolve(values, np.ones(window))[: len(values)]
    return sums / np.minimum(np.arange(1, len(values) + 1), window)


def last_fraction_mean(episodes: Episodes, total_timesteps: int) -> float:
    """Mean return of the episodes that ended in [LAST_FRACTION_START * total_timesteps, total_timesteps]
    (NaN if none did)."""
    late = (episodes.steps >= LAST_FRACTION_START * total_timesteps) & (episodes.steps <= total_timesteps)
    return float(episodes.returns[late].mean()) if late.any() else math.nan


def steps_to_threshold(episodes: Episodes, threshold: float | None) -> float:
    """First step where the mean of the last WINDOW returns reaches `threshold` (NaN if never or no threshold)."""
    if threshold is None:
        return math.nan
    reached = np.flatnonzero(running_mean(episodes.returns) >= threshold)
    return float(episodes.steps[reached[0]]) if reached.size else math.nan


def finite(values: list[float]) -> np.ndarray:
    """The finite ones of `values`, as an array."""
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def stratified_resamples(arrays: list[np.ndarray], reps: int) -> list[np.ndarray]:
    """rliable's stratified bootstrap resamples of (runs x tasks) arrays, drawn as rliable draws them from NumPy's
    global generator (per resample, per array, np.random.choice(runs, shape)), stacked: one (reps, runs, tasks) array
    per input array."""
    draws = [[np.random.choice(a.shape[0], a.shape, replace=True) for a in arrays] for _ in range(reps)]
    columns = [np.arange(a.shape[1]) for a in arrays]
    return [a[np.stack([d[i] for d in draws]), columns[i]] for i, a in enumerate(arrays)]


def bootstrap(scores: list[np.ndarray], statistic, seed: int = BOOTSTRAP_SEED) -> list[Interval]:
    """Each value `statistic` takes on `scores` (a list of (runs x tasks) arrays, resampled independently), with its
    95% percentile CI over BOOTSTRAP_REPS stratified resamples: rliable's get_interval_estimates, with the statistic
    computed by NumPy over all resamples at once. `statistic(*arrays)` takes arrays with a leading resample axis and
    returns (resamples, values). NumPy's global generator is seeded with `seed` for the call, so that the same scores
    give the same intervals every time, and restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        resamples = stratified_resamples(scores, BOOTSTRAP_REPS)
    finally:
        np.random.set_state(state)
    point = statistic(*[a[None] for a in scores])[0]
    alpha = 1 - 0.95  # arch's percentile interval, as rliable calls it
    lows, highs = np.percentile(statistic(*resamples), [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return [Interval(float(v), float(low), float(high)) for v, low, high in zip(point, lows, highs)]


def trimmed_mean(scores: np.ndarray) -> np.ndarray:
    """rliable's aggregate_iqm (scipy's trim_mean, 25% off each end over runs and tasks) of each resample:
    (reps, runs, tasks) -> (reps, 1)."""
    flat = np.sort(scores.reshape(len(scores), -1), axis=1)
    cut = int(0.25 * flat.shape[1])
    return flat[:, cut : flat.shape[1] - cut].mean(axis=1, keepdims=True)


def iqm(returns: list[float]) -> Interval:
    """Interquartile mean (25% trimmed off each end) of the seeds' finite returns, with its 95% CI; below 4 seeds
    nothing is trimmed and it is their mean. With one seed the interval is that seed's return."""
    scores = finite(returns)
    return bootstrap([scores[:, None]], trimmed_mean)[0] if scores.size else Interval()


def seed_stats(episodes: list[Episodes], totals: list[int], threshold: float | None) -> dict:
    """Row fields computed from the seeds' episodes alone, each seed over its own total steps."""
    returns = [last_fraction_mean(e, total) for e, total in zip(episodes, totals)]
    return {
        "seeds": [e.seed for e in episodes],
        "returns": returns,
        "threshold_steps": [steps_to_threshold(e, threshold) for e in episodes],
        "iqm": iqm(returns),
    }


def variant_row(env_id: str, variant: str, runs: list[Run], threshold: float | None) -> Row:
    """The summary row of one variant's runs on one environment."""
    totals = [r.record["total_timesteps"] for r in runs]
    tags = sorted({tag for r in runs for tag in r.diagnostics})
    return Row(
        env_id,
        variant,
        max(totals),
        **seed_stats([r.episodes for r in runs], totals, threshold),
        wall_clock_s=float(np.mean([r.record["wall_clock_s"] for r in runs])),
        sps=float(np.mean([r.record["sps"] for r in runs])),
        final_entropies=[r.final_entropy for r in runs],
        diagnostics={
            tag: (np.sum if tag in COUNTERS else np.mean)([r.diagnostics.get(tag, math.nan) for r in runs])
            for tag in tags
        },
        extremes={
            tag: pick(r.extremes[tag] for r in runs if tag in r.extremes)
            for tag, pick in EXTREMES.items()
            if any(tag in r.extremes for r in runs)
        },
        push={
            key: [r.push[key] for r in runs if key in r.push] for key in dict.fromkeys(k for r in runs for k in r.push)
        },
    )


def first_steps(episodes: Episodes, total_timesteps: int) -> Episodes:
    """The reference episodes that ended within `total_timesteps`, so that it runs as long as our runs."""
    kept = episodes.steps <= total_timesteps
    return Episodes(episodes.seed, episodes.steps[kept], episodes.returns[kept])


def reference_row(env_id: str, episodes: list[Episodes], total_timesteps: int, threshold: float | None) -> Row:
    """The reference's summary row, computed over the same total steps as our runs."""
    return Row(
        env_id, REFERENCE_NAME, total_timesteps, **seed_stats(episodes, [total_timesteps] * len(episodes), threshold)
    )


@dataclass
class Improvement:
    """The probability of improvement of variant `x` over baseline `y` on one task, or averaged over `tasks`."""

    x: str
    y: str
    tasks: list[str]
    p: Interval
    fewest_seeds: int
    """the fewest seeds either variant has on any of the tasks"""
    over_tasks: bool = False
    draws: list[Interval] = field(default_factory=list)
    """P(X > Y) under every bootstrap seed, `p` first; `[p]` if not given"""

    def __post_init__(self):
        self.draws = self.draws or [self.p]


def mann_whitney_fraction(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """rliable's probability_of_improvement on one task for each resample: the Mann-Whitney U of X over Y divided by
    the number of pairs, the fraction of pairs X wins with ties counting half: (reps, nx, 1), (reps, ny, 1) ->
    (reps,)."""
    x, y = x[:, :, None, 0], y[:, None, :, 0]
    return ((x > y).sum(axis=(1, 2)) + 0.5 * (x == y).sum(axis=(1, 2))) / (x.shape[1] * y.shape[2])


def probability_of_improvement(
    pairs: list[tuple[np.ndarray, np.ndarray]], seed: int = BOOTSTRAP_SEED
) -> list[Interval]:
    """P(X > Y), the chance that a seed of X beats a seed of Y on the same task (ties count half), on each task
    given as an (X returns, Y returns) pair, then averaged over the tasks, each with its 95% CI. Each array is
    resampled on its own, so X and Y may have different numbers of seeds on any task, as rliable's
    probability_of_improvement allows (it divides the Mann-Whitney U by the product of the two counts)."""

    def per_task_and_average(*scores: np.ndarray) -> np.ndarray:
        # one bootstrap for the tasks and their average, which rliable would only average over equal seed counts
        per_task = np.stack([mann_whitney_fraction(x, y) for x, y in zip(scores[::2], scores[1::2])], axis=1)
        return np.concatenate([per_task, per_task.mean(axis=1, keepdims=True)], axis=1)

    return bootstrap([scores[:, None] for pair in pairs for scores in pair], per_task_and_average, seed)


def improvements(
    rows: list[Row], baselines: Sequence[str], seeds: Sequence[int] = (BOOTSTRAP_SEED,)
) -> list[Improvement]:
    """The probability of improvement of every variant X over each baseline Y among the variants (X != Y), on each
    task both have finite returns on, then averaged over those tasks, drawn under each bootstrap seed in `seeds`
    (the first gives `p`). The reference is no variant: left out."""
    scores = {(row.variant, row.env_id): finite(row.returns) for row in rows if row.variant != REFERENCE_NAME}
    scores = {key: values for key, values in scores.items() if values.size}
    variants = sorted({variant for variant, _ in scores})
    env_ids = sorted({env_id for _, env_id in scores})
    found = []
    for y in dict.fromkeys(b for b in baselines if b in variants):
        for x in (v for v in variants if v != y):
            pairs = {e: (scores[x, e], scores[y, e]) for e in env_ids if (x, e) in scores and (y, e) in scores}
            if not pairs:
                continue
            fewest = {e: min(len(xs), len(ys)) for e, (xs, ys) in pairs.items()}
            # per task, then the average over tasks: each as its intervals under every seed, seeds[0]'s first
            *per_task, average = zip(*(probability_of_improvement(list(pairs.values()), seed) for seed in seeds))
            found += [Improvement(x, y, [e], p[0], fewest[e], draws=list(p)) for e, p in zip(pairs, per_task)]
            found.append(Improvement(x, y, list(pairs), average[0], min(fewest.values()), True, draws=list(average)))
    return found


def task_label(improvement: Improvement) -> str:
    return f"all tasks ({len(improvement.tasks)})" if improvement.over_tasks else improvement.tasks[0]


def verdict(improvement: Improvement) -> str:
    """Which variant is better when the 95% CI of P(X > Y) excludes 0.5 under every bootstrap draw, with MIN_SEEDS
    seeds or more of each on every task: with fewer, two or three seeds that happen to separate give an interval of
    [1, 1]."""
    x, y = improvement.x, improvement.y
    if improvement.fewest_seeds < MIN_SEEDS:
        return f"not separated (< {MIN_SEEDS} seeds)"
    verdicts = {f"{x} > {y}" if p.low > 0.5 else f"{y} > {x}" if p.high < 0.5 else "" for p in improvement.draws}
    if len(verdicts) > 1:
        return "not separated (separated under some bootstrap draws only)"
    return verdicts.pop() or "not separated"


def number(x: float, spec: str = ".2f") -> str:
    """`x` formatted with `spec`, or "n/a" when it is not finite."""
    return format(x, spec) if math.isfinite(x) else "n/a"


def kilo_steps(steps: float) -> str:
    """A step count as the summary shows it: thousands as "212k", small counts in full."""
    return f"{steps / 1000:.0f}k" if steps >= 10_000 else f"{steps:.0f}"


def return_cell(row: Row) -> str:
    """mean ± population std over seeds, then the per-seed values in parentheses."""
    values = np.array(row.returns)
    per_seed = ", ".join(number(v) for v in values)
    return f"{number(values.mean())} ± {number(values.std())} ({per_seed})"


def interval_cell(interval: Interval) -> str:
    """e.g. "2220.39 [2108.25, 2288.54]"."""
    return f"{number(interval.value)} [{number(interval.low)}, {number(interval.high)}]"


def entropy_cell(row: Row) -> str:
    """The final policy entropy, mean ± population std over seeds; "n/a" without one."""
    values = np.array(row.final_entropies or [math.nan])
    return f"{number(values.mean())} ± {number(values.std())}" if np.isfinite(values).all() else "n/a"


def threshold_cell(row: Row) -> str:
    """Mean steps over the seeds that reached the threshold, and how many did, e.g. "212k (3/3)"."""
    reached = [s for s in row.threshold_steps if math.isfinite(s)]
    mean = kilo_steps(float(np.mean(reached))) if reached else "never"
    return f"{mean} ({len(reached)}/{len(row.seeds)})"


def markdown_table(header: list[str], lines: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *lines])


def table_legend(threshold: float | None) -> str:
    """The paragraph under the command line that says how the results table is computed."""
    legend = [
        "Last-10% return: mean return of the episodes that ended in the last 10% of the steps, per seed;",
        "mean ± std (population) over seeds, per-seed values in parentheses.",
        "IQM: their interquartile mean (the mean below 4 seeds) with its 95% stratified-bootstrap CI.",
    ]
    if threshold is not None:
        legend += [
            f"Steps to {threshold:g}: first step where the mean of the last {WINDOW} episodes reached it,",
            "mean over the seeds that did (how many did).",
        ]
    legend += ["Final entropy: the policy entropy logged last, mean ± std over seeds."]
    return " ".join(legend + ["Wall-clock and SPS: whole run, mean over seeds."])


def results_table(rows: list[Row], threshold: float | None) -> str:
    """The Markdown table of returns, steps to threshold (when given), wall-clock and SPS."""
    header = ["env", "variant", "steps", "seeds", "last-10% return", "IQM [95% CI]"]
    header += [f"steps to {threshold:g}"] if threshold is not None else []
    header += ["final entropy", "wall-clock (s)", "SPS"]
    lines = []
    for row in rows:
        cells = [row.env_id, row.variant, f"{row.total_timesteps:,}", ", ".join(map(str, row.seeds))]
        cells += [return_cell(row), interval_cell(row.iqm)]
        cells += [threshold_cell(row)] if threshold is not None else []
        lines.append(cells + [entropy_cell(row), number(row.wall_clock_s, ".0f"), number(row.sps, ".0f")])
    return markdown_table(header, lines)


def diagnostics_table(rows: list[Row]) -> str:
    """The Markdown table of the `hypergrad/*` scalars of the rows that have them, one column per scalar,
    then one column per EXTREMES scalar with its extreme value."""
    tags = sorted({tag for row in rows for tag in row.diagnostics})
    extreme_tags = [tag for tag in EXTREMES if any(tag in row.extremes for row in rows)]
    header = ["env", "variant"] + [tag.removeprefix("hypergrad/") for tag in tags]
    header += [f"{EXTREMES[tag].__name__} {tag.removeprefix('hypergrad/')}" for tag in extreme_tags]
    lines = [
        [row.env_id, row.variant]
        + [number(row.diagnostics.get(tag, math.nan), ".0f" if tag in COUNTERS else ".4g") for tag in tags]
        + [number(row.extremes.get(tag, math.nan), ".4g") for tag in extreme_tags]
        for row in rows
    ]
    return markdown_table(header, lines)


def push_table(rows: list[Row]) -> str:
    """The Markdown table of the applied correction's push on each actor tensor at the end of the runs, one line
    per tensor: each statistic's mean ± std over seeds."""
    header = ["env", "variant", "tensor", "seeds", "‖Σd‖ / ‖Σg‖", "cos(Σd, Σg)", "‖Σd‖ / √(Σ‖d‖²)"]
    lines = []
    for row in rows:
        for tensor in dict.fromkeys(key.rpartition("/")[0] for key in row.push):
            cells = []
            for statistic in ("ratio", "cos_direct", "coherence"):
                values = np.array(row.push.get(f"{tensor}/{statistic}", [math.nan]))
                cells.append(f"{number(values.mean(), '.3g')} ± {number(values.std(), '.2g')}")
            lines.append([row.env_id, row.variant, tensor, str(len(row.push[f"{tensor}/ratio"])), *cells])
    return markdown_table(header, lines)


def ends_over_draws(improvement: Improvement) -> dict[str, float]:
    """The range of the CI's low and high ends over the bootstrap draws."""
    lows, highs = [p.low for p in improvement.draws], [p.high for p in improvement.draws]
    return dict(p_low_min=min(lows), p_low_max=max(lows), p_high_min=min(highs), p_high_max=max(highs))


def improvement_table(found: list[Improvement]) -> str:
    """The Markdown table of the probabilities of improvement, with their intervals and verdicts, and with several
    bootstrap draws the range of the interval's ends over them."""
    draws = max(len(i.draws) for i in found)
    header = ["X", "Y", "task", "P(X > Y)", "95% CI", *[f"CI ends over {draws} draws"] * (draws > 1), "verdict"]
    lines = [
        [i.x, i.y, task_label(i), number(i.p.value), f"[{number(i.p.low)}, {number(i.p.high)}]"]
        + ["{}-{}, {}-{}".format(*map(number, ends_over_draws(i).values()))] * (draws > 1)
        + [verdict(i)]
        for i in found
    ]
    return markdown_table(header, lines)


def summary_markdown(
    rows: list[Row],
    threshold: float | None,
    command: str,
    found: list[Improvement],
    bootstrap_seeds: Sequence[int] = (BOOTSTRAP_SEED,),
) -> str:
    """summary.md: the command line, the results table, the probabilities of improvement if any variant had a
    baseline to compare with and, if any variant logged them, the diagnostics table."""
    text = [f"```sh\n{command}\n```", table_legend(threshold), results_table(rows, threshold)]
    if found:
        baselines = ", ".join(dict.fromkeys(i.y for i in found))
        text += [
            "Probability of improvement P(X > Y): the probability that a seed of X ends with a higher last-10% return "
            f"than a seed of Y on the same task (ties count half), for every variant X and baseline Y ({baselines}); "
            "per task, then averaged over the tasks both ran (those listed above the pair's all-tasks row). "
            f"95% stratified-bootstrap CI ({BOOTSTRAP_REPS:,} resamples); the verdict names the better variant when "
            f"the CI excludes 0.5 and each has at least {MIN_SEEDS} seeds on every task"
            + (
                f"; it is drawn again under bootstrap generator seeds {', '.join(map(str, bootstrap_seeds))}, and a "
                "verdict must hold under every draw (beside the CI, the range of its low and high ends over them)."
                if len(bootstrap_seeds) > 1
                else "."
            ),
            improvement_table(found),
        ]
    diagnosed = [row for row in rows if row.diagnostics]
    if diagnosed:
        text += [
            "Hypergradient diagnostics: mean over the whole run and over seeds; "
            "nonfinite_fallbacks is the final count, summed over seeds; "
            + (
                "so are the other counts, and the log std push is its final value, averaged over seeds; "
                if any(tag in row.diagnostics for row in diagnosed for tag in COUNTERS[2:] + FINALS)
                else ""
            )
            + "the max and min columns are the extreme value logged in any run.",
            diagnostics_table(diagnosed),
        ]
    pushed = [row for row in rows if row.push]
    if pushed:
        text += [
            "Push of the applied correction d = g − h on each actor tensor over the whole run (final values of "
            "`hypergrad/push/*`, mean ± std over seeds): its cumulative move against g's, the cosine between the two "
            "sums, and its coherence, about 1 when d is noise (a random walk) and √(updates) when it pushes one way.",
            push_table(pushed),
        ]
    return "\n\n".join(text) + "\n"


def csv_record(row: Row, threshold: float | None) -> dict:
    """One summary.csv line; NaN becomes an empty cell."""
    values = np.array(row.returns)
    reached = [s for s in row.threshold_steps if math.isfinite(s)]
    fields = {
        "env_id": row.env_id,
        "variant": row.variant,
        "total_timesteps": row.total_timesteps,
        "seeds": " ".join(map(str, row.seeds)),
        "return_mean": values.mean(),
        "return_std": values.std(),
        "iqm": row.iqm.value,
        "iqm_low": row.iqm.low,
        "iqm_high": row.iqm.high,
        **{f"return_seed{s}": v for s, v in zip(row.seeds, row.returns)},
        "threshold": math.nan if threshold is None else threshold,
        "threshold_reached": len(reached) if threshold is not None else math.nan,
        "steps_to_threshold_mean": np.mean(reached) if reached else math.nan,
        **{f"steps_to_threshold_seed{s}": v for s, v in zip(row.seeds, row.threshold_steps)},
        "final_entropy_mean": np.mean(row.final_entropies) if row.final_entropies else math.nan,
        "final_entropy_std": np.std(row.final_entropies) if row.final_entropies else math.nan,
        **{f"final_entropy_seed{s}": v for s, v in zip(row.seeds, row.final_entropies)},
        "wall_clock_s": row.wall_clock_s,
        "sps": row.sps,
        **row.diagnostics,
        **{f"{tag}_{EXTREMES[tag].__name__}": value for tag, value in row.extremes.items()},
    }
    return {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in fields.items()}


def improvement_record(improvement: Improvement) -> dict:
    """One probability_of_improvement.csv line."""
    p = improvement.p
    return {
        "x": improvement.x,
        "y": improvement.y,
        "task": task_label(improvement),
        "tasks": " ".join(improvement.tasks),
        "p": p.value,
        "p_low": p.low,
        "p_high": p.high,
        **({"draws": len(improvement.draws)} | ends_over_draws(improvement) if len(improvement.draws) > 1 else {}),
        "verdict": verdict(improvement),
    }


def write_csv(records: list[dict], path: Path) -> None:
    """A CSV of `records`, one line each; columns are the union over the lines."""
    columns = list(dict.fromkeys(k for record in records for k in record))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)


def mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Smooth each seed's (x, returns) with a running mean of WINDOW episodes, interpolate it onto a grid
    over the x range every seed covers, and return (grid, mean, std) over seeds; None without episodes."""
    curves = [(x, running_mean(y)) for x, y in curves if len(x)]
    if not curves:
        return None
    grid = np.linspace(max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves), GRID_POINTS)
    values = np.array([np.interp(grid, x, y) for x, y in curves])
    return grid, values.mean(axis=0), values.std(axis=0)


def draw(axes, curves: list[tuple[np.ndarray, np.ndarray]], label: str, color: str, **style) -> None:
    """Plot the mean over seeds with a ± std band."""
    band = mean_band(curves)
    if band is None:
        return
    grid, mean, std = band
    axes.plot(grid, mean, color=color, label=label, **style)
    axes.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def plot_env(env_id: str, runs: dict[str, list[Run]], reference: list[Episodes], colors: dict, path: Path) -> None:
    """{env_id}.png: return against environment steps, one color per variant. No wall-clock panel: the runs of a
    grid share the machine with whatever else runs, so their times compare only when measured side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for variant, variant_runs in runs.items():
        draw(axes, [(r.episodes.steps, r.episodes.returns) for r in variant_runs], variant, colors[variant])
    draw(axes, [(e.steps, e.returns) for e in reference], REFERENCE_NAME, "black", linestyle="--")
    axes.set_xlabel("environment steps")
    axes.set_ylabel(f"episodic return (mean of last {WINDOW})")
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(f"{env_id}: mean ± std over seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_improvements(found: list[Improvement], path: Path) -> None:
    """probability_of_improvement.png: P(X > Y) over tasks of every pair, a dot on its 95% CI, one color per
    baseline Y, against the line at 0.5 where neither variant is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = [i for i in found if i.over_tasks]
    baselines = list(dict.fromkeys(i.y for i in overall))
    figure, axes = plt.subplots(figsize=(7, 1.5 + 0.35 * len(overall)))
    for k, i in enumerate(overall):
        color = f"C{baselines.index(i.y)}"
        axes.hlines(k, i.p.low, i.p.high, color=color, linewidth=6, alpha=0.4)
        axes.plot(i.p.value, k, "o", color=color)
    axes.axvline(0.5, color="gray", linestyle="--", linewidth=1)
    axes.set_yticks(range(len(overall)), [f"{i.x} vs {i.y} ({len(i.tasks)} tasks)" for i in overall])
    axes.set_ylim(len(overall) - 0.5, -0.5)
    axes.set_xlim(0, 1)
    axes.set_xlabel("P(X > Y) over tasks, 95% CI")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def aggregate(
    records: list[Path],
    out: Path,
    threshold: float | None,
    command: str,
    baselines: Sequence[str] = BASELINES,
    bootstrap_seeds: Sequence[int] = (BOOTSTRAP_SEED,),
) -> list[Row]:
    """Write summary.md, summary.csv and one plot per environment into `out` from the finished runs, and the
    probabilities of improvement over `baselines` (a CSV and a plot), under each of `bootstrap_seeds`, when a
    baseline has runs."""
    groups = defaultdict(lambda: defaultdict(list))
    for run in sorted((load_run(path) for path in records), key=lambda r: r.record["seed"]):
        groups[run.record["env_id"]][run.record["variant"]].append(run)
    variants = sorted({variant for by_variant in groups.values() for variant in by_variant})
    colors = {variant: f"C{i}" for i, variant in enumerate(variants)}
    reference = load_reference(REFERENCE_CSV)
    rows = []
    for env_id in sorted(groups):
        runs = dict(sorted(groups[env_id].items()))
        rows += [variant_row(env_id, variant, variant_runs, threshold) for variant, variant_runs in runs.items()]
        total = max(r.record["total_timesteps"] for variant_runs in runs.values() for r in variant_runs)
        env_reference = [first_steps(episodes, total) for episodes in reference.get(env_id, [])]
        env_reference = [e for e in env_reference if e.steps.size and e.steps[-1] >= LAST_FRACTION_START * total]
        if env_reference:
            rows.append(reference_row(env_id, env_reference, total, threshold))
        plot_env(env_id, runs, env_reference, colors, out / f"{env_id}.png")
    found = improvements(rows, baselines, bootstrap_seeds)
    markdown = summary_markdown(rows, threshold, command, found, bootstrap_seeds)
    failures = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/seed*/failed.json"))]
    if failures:
        lines = [
            f"- {f['variant']} {f['env_id']} seed {f['seed']}: exit {f['returncode']}, {f['error']}" for f in failures
        ]
        markdown += "\nFailed runs, left out above:\n\n" + "\n".join(lines) + "\n"
    (out / "summary.md").write_text(markdown)
    write_csv([csv_record(row, threshold) for row in rows], out / "summary.csv")
    written = f"summary.md, summary.csv and {len(groups)} plot(s)"
    if found:
        write_csv([improvement_record(i) for i in found], out / "probability_of_improvement.csv")
        plot_improvements(found, out / "probability_of_improvement.png")
        written = f"summary.md, summary.csv, probability_of_improvement.csv and {len(groups) + 1} plot(s)"
    print(f"\n{markdown}\nwrote {written} to {out}")
    return rows


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
        if args.backend == "ray" and args.ray_address:
            check_reachable(args.ray_address)
        failed = (run_grid_ray if args.backend == "ray" else run_grid)(args, variants)
    records = sorted(args.out.glob("*/*/seed*/record.json"))
    if records:
        aggregate(records, args.out, args.threshold, command_line(), args.baselines, args.bootstrap_seeds)
    if failed:
        fail(f"{failed} run(s) failed; their failed.json and run.log say why; run the grid again to retry them")
    if not records:
        fail(f"no finished run (record.json) under {args.out}; run the grid first")


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except KeyboardInterrupt:  # while aggregating; the grid handles its own
        sys.exit("interrupted")
