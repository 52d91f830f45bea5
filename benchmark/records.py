"""A run's compact record: record.json (the command, the commit, wall-clock, SPS and a summary of the scalars the
tables use) and episodes.csv (every episode's global step, return, length and seconds), made from its TensorBoard
events and read back for the aggregation; and CleanRL's reference episodes."""

import csv
import errno
import hashlib
import io
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_CSV = ROOT.parent / "shared" / "reference" / "cleanrl_ppo_episodes.csv"
"""CleanRL PPO episodes (script, env_id, seed, global_step, episodic_return); optional"""
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
RECORD_KEYS = ("variant", "env_id", "seed", "total_timesteps", "returncode", "wall_clock_s", "sps")
"""what every record.json holds; a finished run's also its summary, and since #44 its episodes.csv's SHA-256"""


def fail(message: str) -> None:
    """Stop with one line on stderr and a non-zero exit, no traceback."""
    sys.exit(f"error: {message}")


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


def write_whole(path: Path, data: str | bytes) -> None:
    """Write `path` whole or not at all: into a temporary file beside it, synced, then renamed over it. A kill leaves
    the old file (or none) and at most the temporary one; a full disk raises OSError with nothing changed."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def compact_record(directory: Path, record: dict | None = None) -> None:
    """Write the compact record of the finished run in `directory` from its events: episodes.csv, then record.json
    (`record`, or the one there) with the summary and episodes.csv's SHA-256. record.json comes last, and each file
    comes whole, so a run has a record only once both are complete."""
    episodes, summary = summarize_events(directory)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["global_step", "return", "length", "seconds"])
    rows = [(step, str(np.float32(r)), f"{length:g}", f"{sec:.1f}") for step, r, length, sec in episodes]
    writer.writerows(rows)  # a float32's shortest repr: read back as float32, it is TensorBoard's value exactly
    data = table.getvalue().encode()
    write_whole(directory / EPISODES_CSV, data)
    record = record or json.loads((directory / "record.json").read_text())
    record |= {"summary": summary, "episodes_sha256": hashlib.sha256(data).hexdigest()}
    write_whole(directory / "record.json", json.dumps(record, indent=1) + "\n")


def record_fault(directory: Path) -> str | None:
    """Why `directory` holds no whole record, None if it does: record.json must be a JSON object with RECORD_KEYS,
    and with a summary its episodes.csv must be the file it names (one without a summary, made before compact
    records, must have the events to make one from)."""
    try:
        record = json.loads((directory / "record.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"not a JSON record ({type(e).__name__}: {e})"
    missing = [key for key in RECORD_KEYS if key not in record] if isinstance(record, dict) else list(RECORD_KEYS)
    if missing:
        return f"a record without {', '.join(missing)}"
    if "summary" not in record:
        return None if any(directory.glob("runs/**/events.out.tfevents.*")) else "no summary and no events to make one"
    try:
        data = (directory / EPISODES_CSV).read_bytes()
        if "episodes_sha256" not in record:  # made before #44: it must parse
            np.loadtxt(io.BytesIO(data), delimiter=",", skiprows=1, ndmin=2).reshape(-1, 4)
    except (OSError, ValueError) as e:
        return f"its {EPISODES_CSV} is unreadable ({type(e).__name__}: {e})"
    if record.get("episodes_sha256", hashlib.sha256(data).hexdigest()) != hashlib.sha256(data).hexdigest():
        return f"its {EPISODES_CSV} is not the one it names (cut short?)"
    return None


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
