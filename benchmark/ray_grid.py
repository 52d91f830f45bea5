"""The Ray backend of benchmark/run.py: each (variant, env, seed) a task of one CPU on a local Ray or a cluster; no
shared filesystem, the records come back to the driver."""

import os
import shutil
import socket
from pathlib import Path

from benchmark.records import EPISODES_CSV, ROOT, fail, is_disk_full, write_whole
from benchmark.run import (
    Args,
    DiskFull,
    Progress,
    Variant,
    execute_run,
    git_commit,
    grid_jobs,
    interrupted,
    tracking_flags,
)


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
                for name, data in sorted(result["files"].items(), key=lambda item: item[0] == "record.json"):
                    (directory / name).parent.mkdir(parents=True, exist_ok=True)
                    write_whole(directory / name, data)  # each whole, record.json last
                failed += result["record"]["returncode"] != 0
                progress.report(f"{variant.name} {env_id} seed {seed}", result["record"], directory)
        except (KeyboardInterrupt, OSError) as e:
            for ref in pending:
                ray.cancel(ref, force=True)
            if is_disk_full(e):
                fail(str(DiskFull(directory)))
            if isinstance(e, OSError):
                raise
            interrupted(todo)
        return failed
    finally:
        ray.shutdown()
