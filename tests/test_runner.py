"""benchmark/run.py: a tiny grid end to end, resuming, clear errors, Ctrl-C, the W&B sweep's command lines and the
Ray backend."""

import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tyro
import yaml
from conftest import ROOT
from grids import SEEDS, SIZES, TOTAL, VARIANTS, grid_flags, read_csv, runner, start_runner
from scripts import restore_ctrl_c, wait_for_text

from benchmark import ray_grid, records, run, stats


def test_tiny_grid_end_to_end(tiny_grid):
    out, result = tiny_grid
    assert result.returncode == 0, result.stderr
    assert "4 runs, 0 already finished, 4 to run on 2 workers" in result.stdout
    for name, seed in itertools.product(VARIANTS, SEEDS):
        directory = out / name / "Hopper-v4" / f"seed{seed}"
        record = json.loads((directory / "record.json").read_text())
        assert (record["variant"], record["env_id"], record["seed"]) == (name, "Hopper-v4", seed)
        assert record["returncode"] == 0 and record["total_timesteps"] == TOTAL
        assert record["sps"] == pytest.approx(TOTAL / record["wall_clock_s"])
        episodes = records.load_run(directory / "record.json").episodes
        assert len(episodes.steps) > 10 and episodes.steps.max() <= TOTAL
        assert 0 <= episodes.seconds.min() and episodes.seconds.max() <= record["wall_clock_s"]

    summary = (out / "summary.md").read_text().splitlines()
    assert summary[0] == "```sh" and summary[1].startswith("python ") and "benchmark/run.py --variants" in summary[1]
    assert any(line.startswith("| Hopper-v4 | lr1e-3 | 1,024 | 1, 2 | ") for line in summary)
    lines = read_csv(out / "summary.csv")
    assert set(VARIANTS) <= set(lines)
    assert (stats.REFERENCE_NAME in lines) == records.REFERENCE_CSV.is_file()
    for name in VARIANTS:
        per_seed = [float(lines[name][f"return_seed{seed}"]) for seed in SEEDS]
        assert float(lines[name]["return_mean"]) == pytest.approx(np.mean(per_seed))
        assert float(lines[name]["return_std"]) == pytest.approx(np.std(per_seed))
    png = (out / "Hopper-v4.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_resume_skips_finished_runs(tiny_grid):
    out, first = tiny_grid
    assert first.returncode == 0, first.stderr
    records = sorted(out.glob("*/*/seed*/record.json"))
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in records}
    result = runner(*grid_flags(out))
    assert result.returncode == 0, result.stderr
    assert "4 runs, 4 already finished, 0 to run on 2 workers" in result.stdout
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in records} == before


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--variants", "ppo=nope.py --seed 3"], "error: variant 'ppo=nope.py --seed 3': no script 'nope.py'"),
        (["--env-ids", "Hopper-v4", "NoSuchEnv-v0"], "error: unknown env id 'NoSuchEnv-v0'"),
        (["--aggregate-only"], "error: no finished run (record.json) under "),
        (["--variants", "a=ppo_continuous.py --no-such-flag 3"], "error: variant 'a': ppo_continuous.py has no flag "),
        (["--variants", "a=ppo_continuous.py", "a=ppo_continuous.py --seed 2"], "error: two variants are named 'a'"),
        (["--backend", "ray", "--ray-address", "127.0.0.1:9"], "error: cannot reach a Ray cluster at --ray-address"),
    ],
)
def test_bad_input_stops_with_one_line(tmp_path, flags, message):
    out = tmp_path / "out"
    result = runner(*flags, "--out", str(out))
    assert result.returncode != 0
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not out.exists()


def test_a_cluster_that_refuses_the_driver_stops_with_one_line(tmp_path, monkeypatch, capfd):
    """`ray start --head` turns Ray's token auth on, and ray.init(address) sends the token only in token mode: with a
    token at hand the driver asks for that mode. A cluster that still refuses it stops the grid with one line giving
    Ray's reason and the fix, and the retries Ray's client prints to fd 2 meanwhile do not show."""
    import ray

    token = tmp_path / "auth_token"
    token.write_text("a token")
    monkeypatch.setattr(ray_grid, "RAY_TOKEN", token)
    monkeypatch.setenv("RAY_AUTH_MODE", "unset")  # recorded, so the mode the runner sets is removed afterwards;
    monkeypatch.delenv("RAY_AUTH_MODE")  # delenv alone records nothing when the variable is absent
    monkeypatch.setattr(ray_grid, "check_reachable", lambda address: None)
    modes = []

    def refuse(address, **options):  # what Ray 2.60 does without the cluster's token
        modes.append(os.environ.get("RAY_AUTH_MODE"))
        os.write(2, b"gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated\n")
        last = "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: token is missing. Note: see the docs"
        try:
            raise RuntimeError(f"Failed to connect to GCS. Last connection error: Traceback\n  ...\n{last}")
        except RuntimeError as e:
            raise ConnectionError(f"Failed to connect to Ray cluster at {address}") from e

    monkeypatch.setattr(ray, "init", refuse)
    args = tyro.cli(run.Args, args=["--backend", "ray", "--ray-address", "10.0.0.7:6379", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        ray_grid.run_grid_ray(args, [])
    assert modes == ["token"]
    assert stop.value.code == (
        "error: cannot join the Ray cluster at 10.0.0.7:6379 (ray.exceptions.AuthenticationError: RPC error: "
        "InvalidAuthToken: token is missing); copy the head's ~/.ray/auth_token here or set RAY_AUTH_TOKEN"
    )
    assert capfd.readouterr().err == ""


def child_pids(pid: int) -> list[int]:
    """The processes that any thread of process `pid` started."""
    return [int(child) for path in Path(f"/proc/{pid}/task").glob("*/children") for child in path.read_text().split()]


def is_training(pid: int) -> bool:
    """Whether process `pid` exists and runs a training script (`python .../*_continuous.py ...`)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return len(argv) > 1 and argv[1].endswith(b"_continuous.py")


def test_ctrl_c_stops_the_workers_and_names_the_unfinished_runs(tmp_path):
    """SIGINT while the first of two long runs trains on one worker: the worker is killed, both runs are named as
    unfinished in one line, exit 130 without a traceback, no record and no aggregation."""
    out = tmp_path / "out"
    flags = ["--variants", f"ppo=ppo_continuous.py {SIZES}", "--env-ids", "Hopper-v4", "--seeds", "1", "2"]
    flags += ["--total-timesteps", "10000000", "--workers", "1", "--out", str(out)]
    proc = start_runner(*flags, preexec_fn=restore_ctrl_c)
    try:
        wait_for_text(out / "ppo" / "Hopper-v4" / "seed1" / "run.log", "SPS=", proc, timeout=300)
        workers = child_pids(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # the test failed: leave no 10M-step run behind
            for pid in child_pids(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stderr.splitlines() == [
        "interrupted: 2 run(s) did not finish: ppo Hopper-v4 seed 1, ppo Hopper-v4 seed 2; "
        "the same command resumes them"
    ]
    assert len(workers) == 1 and not is_training(workers[0])
    assert not list(out.glob("*/*/seed*/record.json")) and not (out / "summary.md").exists()


def test_command_line_names_no_machine_path(tmp_path, monkeypatch):
    out = ROOT / "benchmark" / "results" / "grid"
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmark" / "run.py"), "--out", str(out), "--seeds", "1"])
    assert run.command_line() == "python benchmark/run.py --out benchmark/results/grid --seeds 1"
    # a path outside any checkout stays as given: it is not the repository's to shorten
    assert run.repository_relative(str(tmp_path / "grid")) == str(tmp_path / "grid")


def test_sweep_commands_parse():
    """Each command `wandb agent` builds from benchmark/sweep.yaml runs one (variant, env, seed) with --track."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    sweep = yaml.safe_load((ROOT / "benchmark" / "sweep.yaml").read_text())
    assert sweep["method"] == "grid" and sweep["program"] == "benchmark/run.py"
    names = list(sweep["parameters"])
    grid = [
        dict(zip(names, values)) for values in itertools.product(*(sweep["parameters"][n]["values"] for n in names))
    ]
    assert len(grid) == 12
    for config in grid:
        sweep_vars = create_sweep_command_args({"args": {name: {"value": value} for name, value in config.items()}})
        sweep_vars |= {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": [sweep["program"]]}
        command = [
            word
            for c in create_sweep_command(sweep["command"])
            for word in (sweep_vars[c[2:-1]] if c.startswith("${") and c.endswith("}") else [c])
        ]
        assert command[:3] == ["/usr/bin/env", "python", "benchmark/run.py"]
        args = tyro.cli(run.Args, args=command[3:])
        assert (args.variants, args.env_ids, args.seeds) == (
            [config["variants"]],
            [config["env_ids"]],
            [config["seeds"]],
        )
        assert args.track and run.tracking_flags(args) == ("--track", "--wandb-project-name", "blpo")
        run.parse_variant(args.variants[0])
        run.check_env_ids(args.env_ids)


def test_ray_grid_gives_the_local_records_and_records_a_failure(tmp_path):
    """A tiny grid (Pendulum-v1, seeds 1 and 2, 2,048 steps) on a local Ray: the same episodes, bit for bit, as the
    local backend; a variant whose runs fail is recorded as failed, named in the summary, and the grid finishes."""
    grid = ["--env-ids", "Pendulum-v1", "--seeds", "1", "2", "--total-timesteps", "2048", "--workers", "2"]
    local = runner("--variants", f"ppo=ppo_continuous.py {SIZES}", *grid, "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    variants = ["--variants", f"ppo=ppo_continuous.py {SIZES}", "bad=ppo_continuous.py --num-minibatches 7"]
    ray_grid = runner(*variants, *grid, "--backend", "ray", "--out", str(tmp_path / "ray"))
    assert ray_grid.returncode != 0 and "2 run(s) failed" in ray_grid.stderr, ray_grid.stderr
    assert "ray: cluster at 127.0.0.1:" in ray_grid.stdout and "4 to run as Ray tasks" in ray_grid.stdout
    for seed in (1, 2):
        here, there = (tmp_path / name / "ppo" / "Pendulum-v1" / f"seed{seed}" for name in ("local", "ray"))
        columns = [np.loadtxt(d / records.EPISODES_CSV, delimiter=",", skiprows=1)[:, :3] for d in (here, there)]
        assert np.array_equal(*columns) and len(columns[0]) == 10
        failed = json.loads((tmp_path / "ray" / "bad" / "Pendulum-v1" / f"seed{seed}" / "failed.json").read_text())
        assert failed["returncode"] != 0 and "--num-minibatches does not divide" in failed["error"]
    summary = (tmp_path / "ray" / "summary.md").read_text()
    assert "Failed runs, left out above:" in summary and "- bad Pendulum-v1 seed 2: exit 1," in summary


def test_a_run_names_the_commit_of_its_checkout_or_unknown(tmp_path, tmp_path_factory):
    """In a git checkout, its short commit (with +dirty when tracked files changed); in a copy without .git (a source
    archive, a vendored folder), "unknown"."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    (tmp_path / "a.py").write_text("1\n")
    for command in (["init", "-q"], ["add", "a.py"], ["commit", "-q", "-m", "a"]):
        subprocess.run([*git, *command], cwd=tmp_path, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True)
    assert run.git_commit(tmp_path) == head.stdout.strip() != ""
    (tmp_path / "a.py").write_text("2\n")
    assert run.git_commit(tmp_path) == head.stdout.strip() + "+dirty"
    assert run.git_commit(tmp_path_factory.mktemp("no-git")) == "unknown"


def test_a_cut_record_is_left_out_then_set_aside_and_its_run_redone(tiny_grid, tmp_path):
    """A record.json cut to 100 bytes: --aggregate-only names it in one line and aggregates the rest; the grid's
    command names it, moves its run folder to set-aside/ (nothing deleted) and runs it again."""
    out, result = tiny_grid
    assert result.returncode == 0, result.stderr
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    cut = copy / "ppo" / "Hopper-v4" / "seed1" / "record.json"
    cut.write_bytes(cut.read_bytes()[:100])
    aggregated = runner("--aggregate-only", "--out", str(copy))
    assert aggregated.returncode == 0, aggregated.stderr
    [line] = [line for line in aggregated.stdout.splitlines() if line.startswith(str(cut))]
    assert "not a JSON record" in line and "left out" in line
    assert "| Hopper-v4 | ppo | 1,024 | 2 |" in (copy / "summary.md").read_text()
    rerun = runner(*grid_flags(copy))
    assert rerun.returncode == 0, rerun.stderr
    [line] = [line for line in rerun.stdout.splitlines() if line.startswith(str(cut))]
    assert "set aside as" in line and "its run is redone" in line
    assert "4 runs, 3 already finished, 1 to run" in rerun.stdout
    [aside] = (copy / "set-aside" / "ppo" / "Hopper-v4").glob("seed1-*")
    assert len((aside / "record.json").read_bytes()) == 100 and records.record_fault(cut.parent) is None


def test_a_disk_that_fills_during_a_run_is_one_line(tmp_path, monkeypatch):
    """The runner's own write meeting ENOSPC (a simulated full disk): DiskFull, whose line names the grid's folder,
    the space free and the space a run needs."""
    out = tmp_path / "out"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run, "compact_record", full)
    variant = run.parse_variant(f"ppo=ppo_continuous.py {SIZES}")
    with pytest.raises(run.DiskFull) as raised:
        run.execute_run(variant, "Hopper-v4", 1, 512, run.run_dir(out, variant, "Hopper-v4", 1))
    assert str(raised.value).startswith(f"no space left for the runs in {out} (")
    assert "a run needs about 32 MiB" in str(raised.value)
    assert not (out / "ppo" / "Hopper-v4" / "seed1" / "record.json").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, where the machine lets this process mount one; else the test is skipped (the test above
    simulates a full disk)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_stops_the_grid_with_one_line_and_the_grid_resumes(tiny_grid, small_disk):
    """On a tmpfs with one finished run and 16 KiB free: the next run's events fill it, the grid stops with one
    `error:` line and the finished record stays as it was; with space freed, the same command finishes the grid."""
    out, result = tiny_grid
    assert result.returncode == 0, result.stderr
    grid = small_disk / "out"
    finished = grid / "lr1e-3" / "Hopper-v4" / "seed1"
    shutil.copytree(out / "lr1e-3" / "Hopper-v4" / "seed1", finished, ignore=shutil.ignore_patterns("runs"))
    kept = (finished / "record.json").read_bytes()
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 16 * 1024))
    flags = grid_flags(grid)
    flags[flags.index("--seeds") + 1 : flags.index("--seeds") + 3] = ["1"]
    stopped = runner(*flags)
    assert stopped.returncode == 1
    assert stopped.stderr.startswith(f"error: no space left for the runs in {grid} (")
    assert stopped.stderr.count("\n") == 1, stopped.stderr
    assert (finished / "record.json").read_bytes() == kept
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = runner(*flags)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 runs, 1 already finished, 1 to run" in resumed.stdout
    assert records.record_fault(grid / "ppo" / "Hopper-v4" / "seed1") is None


def training_processes() -> dict[int, int]:
    """pid -> parent pid of every process running a training script."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        pid = int(stat.parent.name)
        if is_training(pid):
            try:
                found[pid] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return found


def is_ray_worker(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False


def test_a_ray_worker_killed_mid_run_is_retried_and_leaves_no_run_behind(tmp_path):
    """SIGKILL to the Ray worker running a task, once its training run has started: its training process dies with
    it, Ray runs the task again, and the grid ends with the run's whole record and no traceback."""
    out = tmp_path / "out"
    flags = ["--variants", f"ppo=ppo_continuous.py {SIZES}", "--env-ids", "Pendulum-v1", "--seeds", "1"]
    flags += ["--total-timesteps", "6144", "--workers", "1", "--backend", "ray", "--out", str(out)]
    proc = start_runner(*flags)
    try:
        deadline = time.monotonic() + 300
        while not (started := {p: parent for p, parent in training_processes().items() if is_ray_worker(parent)}):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(3)  # mid-run
        [(run_pid, worker_pid)] = started.items()
        os.kill(worker_pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(1)
    assert not is_training(run_pid)  # it died with its worker
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "ppo Pendulum-v1 seed 1: ok" in stdout
    assert records.record_fault(out / "ppo" / "Pendulum-v1" / "seed1") is None


def test_a_grid_killed_mid_run_takes_its_run_along_and_resumes(tmp_path):
    """SIGKILL to the runner alone (not its process group) while its run trains: the run dies with it, no record is
    left, and the same command then finishes the grid."""
    out = tmp_path / "out"
    flags = ["--variants", f"ppo=ppo_continuous.py {SIZES}", "--env-ids", "Hopper-v4", "--seeds", "1"]
    flags += ["--total-timesteps", "16384", "--workers", "1", "--out", str(out)]  # it trains for a while
    proc = start_runner(*flags, stdout=subprocess.DEVNULL)
    try:
        wait_for_text(out / "ppo" / "Hopper-v4" / "seed1" / "run.log", "SPS=", proc, timeout=300)
        [worker] = child_pids(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 2  # well before the run could finish on its own
    while is_training(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_training(worker)
    assert not (out / "ppo" / "Hopper-v4" / "seed1" / "record.json").exists()
    resumed = runner(*flags)
    assert resumed.returncode == 0, resumed.stderr
    assert records.record_fault(out / "ppo" / "Hopper-v4" / "seed1") is None
