"""Helpers for the script-level tests: run repository scripts in subprocesses and read what they logged."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SCRIPT_TIMEOUT = 600  # seconds; a hung run (e.g. wandb waiting on a network) fails instead of blocking


def only_run_dir(cwd: Path) -> Path:
    """The single `runs/{run_name}` directory a script run wrote in `cwd`."""
    run_dirs = list((cwd / "runs").iterdir())
    assert len(run_dirs) == 1, run_dirs
    return run_dirs[0]


class ScriptRun(NamedTuple):
    """A finished script run: its exit code and output, and the working directory it ran in."""

    result: subprocess.CompletedProcess
    cwd: Path

    def run_dir(self) -> Path:
        """The single run directory the run wrote, after checking it exited 0."""
        assert self.result.returncode == 0, self.result.stderr[-3000:]
        return only_run_dir(self.cwd)


def restore_ctrl_c() -> None:
    """In a child process before it runs: SIGINT back to its default action, which Python turns into
    KeyboardInterrupt (a shell starts background jobs with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_script(command: list[str], cwd: Path, env: dict[str, str], interruptible: bool = False) -> subprocess.Popen:
    """Start `python ROOT/script *flags` for `command = [script, *flags]` in `cwd` with one OpenMP thread;
    stdout/stderr go to files in `cwd`. `interruptible`: SIGINT acts as Ctrl-C in it, whatever this process
    inherited (not for use from threads)."""
    script, *flags = command
    cwd.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl", **env}
    with open(cwd / "stdout.log", "w") as out, open(cwd / "stderr.log", "w") as err:
        argv = [sys.executable, str(ROOT / script), *flags]
        preexec_fn = restore_ctrl_c if interruptible else None
        return subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=out, stderr=err, preexec_fn=preexec_fn)


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = SCRIPT_TIMEOUT) -> None:
    """Wait until the file `path` holds `text`; fail if `proc` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text(errors="replace")):
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode} before {path.name} showed {text!r}"
        assert time.monotonic() < deadline, f"{path.name} did not show {text!r} within {timeout} s"
        time.sleep(0.2)


def finish_script(proc: subprocess.Popen, cwd: Path, timeout: float = SCRIPT_TIMEOUT) -> ScriptRun:
    """Wait for a `start_script` process; kill it and report it as failed if it outlives `timeout`."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{proc.args} did not finish within {timeout} s") from None
    stdout, stderr = (cwd / "stdout.log").read_text(), (cwd / "stderr.log").read_text()
    return ScriptRun(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), cwd)


class ScriptRuns:
    """Script runs, each `[script, *flags]` command in its own `root / name` with extra environment variables
    `envs.get(name)`, at most MAX_CONCURRENT at a time (in the given order). `runs[name]` waits for one of them;
    leaving the context cancels the runs not started and kills the rest."""

    MAX_CONCURRENT = 2

    def __init__(self, root: Path, commands: dict[str, list[str]], envs: dict[str, dict[str, str]] | None = None):
        envs = envs or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.pool = ThreadPoolExecutor(max_workers=self.MAX_CONCURRENT)
        self.futures = {
            name: self.pool.submit(self._run, name, command, root / name, envs.get(name, {}))
            for name, command in commands.items()
        }

    def _run(self, name: str, command: list[str], cwd: Path, env: dict[str, str]) -> ScriptRun:
        self.procs[name] = start_script(command, cwd, env)
        return finish_script(self.procs[name], cwd)

    def __getitem__(self, name: str) -> ScriptRun:
        return self.futures[name].result()

    def __enter__(self) -> "ScriptRuns":
        return self

    def __exit__(self, *exc_info) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_scripts(
    root: Path, commands: dict[str, list[str]], envs: dict[str, dict[str, str]] | None = None
) -> dict[str, ScriptRun]:
    """Run several commands concurrently as ScriptRuns does and wait for all of them."""
    with ScriptRuns(root, commands, envs) as runs:
        return {name: runs[name] for name in commands}


def read_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard event directory: tag -> [(step, value), ...] in logging order."""
    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def assert_fails_with_one_error_line(result: subprocess.CompletedProcess, expected: str) -> None:
    """One `error:` line on stderr containing `expected`, non-zero exit, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


def record_calls(monkeypatch: pytest.MonkeyPatch, module, name: str) -> list:
    """Wrap `module.name` (a function or class) so that every call's result is appended to the returned list."""
    original, results = getattr(module, name), []

    def recording(*args, **kwargs):
        results.append(original(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(module, name, recording)
    return results
