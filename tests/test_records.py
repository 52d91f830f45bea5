"""benchmark/records.py: compact records against their events, every event loaded, committed runs converted."""

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from grids import write_run

from benchmark import records, run, stats


def test_every_scalar_event_is_loaded(tmp_path):
    """More episodes than TensorBoard's default sample of 10,000 scalars per tag."""
    returns = np.arange(12_000, dtype=float)
    write_run(tmp_path, "ppo", 1, [(i, r) for i, r in enumerate(returns)])
    episodes = records.load_run(tmp_path / "ppo" / "CartPole-v1" / "seed1" / "record.json").episodes
    assert np.array_equal(episodes.returns, returns)


def test_compact_record_of_a_fresh_run_equals_its_events(tiny_grid):
    """Every episode (step, return, length) and the final entropy in the compact record are the events' own."""
    out, result = tiny_grid
    assert result.returncode == 0, result.stderr
    for directory in sorted(out.glob("*/*/seed*")):
        record = json.loads((directory / "record.json").read_text())
        scalars, _ = records.load_scalars(directory)
        with (directory / records.EPISODES_CSV).open() as f:
            rows = list(csv.DictReader(f))
        returns = [e.value for e in scalars["charts/episodic_return"]]  # float32 values, as TensorBoard keeps them
        assert [float(np.float32(r["return"])) for r in rows] == returns
        assert records.load_run(directory / "record.json").episodes.returns.tolist() == returns
        assert [int(r["global_step"]) for r in rows] == [e.step for e in scalars["charts/episodic_return"]]
        assert [float(r["length"]) for r in rows] == [e.value for e in scalars["charts/episodic_length"]]
        assert record["summary"]["final_entropy"] == scalars["losses/entropy"][-1].value
        assert record["commit"] == run.git_commit() and record["command"].startswith("python ppo_continuous.py")
    assert "4 done, 0 running, 0 failed, 0 left" in result.stdout


COMMITTED_RUN = "benchmark/results/mujoco-1m/ppo/Hopper-v4/seed1"


def test_conversion_of_a_committed_run_keeps_its_numbers(tmp_path):
    """A run committed with its events at f754b0f, converted: the same last-10% return and final entropy as its
    events give."""
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", "f754b0f", COMMITTED_RUN], cwd=ROOT, capture_output=True, text=True
    )
    if listing.returncode != 0:
        pytest.skip("this clone has no history to read the committed events from")
    for path in listing.stdout.split():
        target = tmp_path / Path(path).relative_to(COMMITTED_RUN)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run(["git", "show", f"f754b0f:{path}"], cwd=ROOT, capture_output=True).stdout)
    (tmp_path / records.EPISODES_CSV).unlink(missing_ok=True)
    record = json.loads((tmp_path / "record.json").read_text())
    (tmp_path / "record.json").write_text(json.dumps({k: v for k, v in record.items() if k != "summary"}))
    scalars, _ = records.load_scalars(tmp_path)
    events = scalars["charts/episodic_return"]
    from_events = records.Episodes(1, np.array([e.step for e in events], float), np.array([e.value for e in events]))
    converted = records.load_run(tmp_path / "record.json")
    assert stats.last_fraction_mean(converted.episodes, 1_000_000) == stats.last_fraction_mean(from_events, 1_000_000)
    assert converted.final_entropy == scalars["losses/entropy"][-1].value
    assert (tmp_path / records.EPISODES_CSV).is_file() and "summary" in json.loads(
        (tmp_path / "record.json").read_text()
    )


def test_a_record_cut_at_any_byte_is_not_whole(tiny_grid, tmp_path):
    """record.json and episodes.csv of a real run, each cut at every byte offset (as a kill or a full disk during a
    write would leave them, were they not written whole): never taken for a finished run; whole, they are."""
    out, result = tiny_grid
    assert result.returncode == 0, result.stderr
    source = out / "ppo" / "Hopper-v4" / "seed1"
    files = {name: (source / name).read_bytes() for name in ("record.json", records.EPISODES_CSV)}
    for name, data in files.items():
        for other, whole in files.items():
            (tmp_path / other).write_bytes(whole)
        assert records.record_fault(tmp_path) is None
        for end in range(len(data)):
            (tmp_path / name).write_bytes(data[:end])
            whole = name == "record.json" and data[:end].strip() == data.strip()  # only the last newline cut
            assert (records.record_fault(tmp_path) is None) == whole, (name, end)


def test_write_whole_leaves_the_old_file_or_the_new_one_under_a_kill(tmp_path):
    """A process killed (SIGKILL) while it writes 200 MB over a file leaves the old file as it was and at most a
    temporary file beside it, which the next write replaces."""
    target = tmp_path / "record.json"
    target.write_text("old")
    code = "import sys, pathlib; from benchmark.records import write_whole; "
    code += "write_whole(pathlib.Path(sys.argv[1]), b'x' * 200_000_000)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=ROOT)
    temporary = tmp_path / ".record.json.tmp"
    deadline = time.monotonic() + 60
    while not (temporary.exists() and temporary.stat().st_size > 0) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    assert target.stat().st_size in (3, 200_000_000)  # the kill came before the rename (the old file), or after it
    records.write_whole(target, "new")
    assert target.read_text() == "new" and not temporary.exists()
