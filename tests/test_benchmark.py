"""benchmark/run.py: a tiny grid end to end, aggregation against hand-written events, interval estimates on
hand-made returns, resuming, clear errors, Ctrl-C, and the W&B sweep's command lines."""

import csv
import itertools
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tyro
import yaml
from conftest import ROOT, TINY
from scripts import restore_ctrl_c, wait_for_text
from torch.utils.tensorboard import SummaryWriter

from benchmark import run

TINY = " ".join(TINY["ppo_continuous"].sizes())
VARIANTS = {"ppo": f"ppo_continuous.py {TINY}", "lr1e-3": f"ppo_continuous.py {TINY} --learning-rate 1e-3"}
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


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """Two PPO variants on Hopper-v4, seeds 1 and 2, 1024 steps each: the output folder and the run's result."""
    out = tmp_path_factory.mktemp("grid") / "out"
    return out, runner(*grid_flags(out))


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
        episodes = run.load_run(directory / "record.json").episodes
        assert len(episodes.steps) > 10 and episodes.steps.max() <= TOTAL
        assert 0 <= episodes.seconds.min() and episodes.seconds.max() <= record["wall_clock_s"]

    summary = (out / "summary.md").read_text().splitlines()
    assert summary[0] == "```sh" and summary[1].startswith("python ") and "benchmark/run.py --variants" in summary[1]
    assert any(line.startswith("| Hopper-v4 | lr1e-3 | 1,024 | 1, 2 | ") for line in summary)
    lines = read_csv(out / "summary.csv")
    assert set(VARIANTS) <= set(lines)
    assert (run.REFERENCE_NAME in lines) == run.REFERENCE_CSV.is_file()
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


@pytest.fixture
def hand_written_runs(tmp_path):
    """Two variants on CartPole-v1 with 1000 steps; expected values are worked out in the test."""
    # ppo seed 1: 20 episodes at 50, 100, ..., 1000 returning 5, 10, ..., 100
    write_run(tmp_path, "ppo", 1, [(50 * i, 5.0 * i) for i in range(1, 21)])
    write_run(tmp_path, "ppo", 2, list(zip([300, 600, 900, 950, 990], [10.0, 20.0, 30.0, 40.0, 60.0])))
    # blpo seed 1: 20 episodes returning 0 then 10 returning 100, at steps 130, 160, ..., 1000
    blpo_returns = [0.0] * 20 + [100.0] * 10
    write_run(
        tmp_path,
        "blpo",
        1,
        [(100 + 30 * i, r) for i, r in enumerate(blpo_returns, start=1)],
        hypergrad__correction_ratio=[(100, 1.0), (200, 2.0), (300, 3.0)],
        hypergrad__nonfinite_fallbacks=[(100, 0.0), (200, 1.0), (300, 2.0)],
        hypergrad__ihvp_error=[(100, 0.5), (300, 7.0)],
        hypergrad__ihvp_cos=[(100, 0.25), (300, -0.5)],
        losses__entropy=[(100, 1.5), (300, 0.5), (200, 9.0)],
        hypergrad__push__actor_logstd__ratio=[(100, 9.0), (300, 0.5)],  # cumulative: the final value counts
        hypergrad__push__actor_logstd__cos_direct=[(300, -1.0)],
        hypergrad__push__actor_logstd__coherence=[(300, 2.0)],
    )
    write_run(
        tmp_path,
        "blpo",
        2,
        [(500, 0.0), (1000, 40.0)],
        hypergrad__correction_ratio=[(100, 4.0), (200, 6.0)],
        hypergrad__nonfinite_fallbacks=[(100, 0.0), (200, 3.0)],
        hypergrad__ihvp_error=[(100, 1.5)],
        hypergrad__ihvp_cos=[(100, 1.0)],
        losses__entropy=[(100, 2.0), (200, -1.5)],
        hypergrad__push__actor_logstd__ratio=[(200, 1.5)],
        hypergrad__push__actor_logstd__cos_direct=[(200, 0.0)],
        hypergrad__push__actor_logstd__coherence=[(200, 4.0)],
    )
    return tmp_path


@pytest.mark.parametrize("with_reference", [True, False])
def test_aggregation_of_known_events(hand_written_runs, monkeypatch, with_reference):
    out = hand_written_runs
    reference = out / "reference.csv"
    if with_reference:
        lines = ["script,env_id,seed,global_step,episodic_return", "ppo.py,Acrobot-v1,1,1000,-80"]
        lines += [
            f"ppo.py,CartPole-v1,{seed},{step},{r}" for seed, step, r in [(1, 950, 200), (1, 1000, 300), (1, 1001, 1e4)]
        ]
        lines += [f"ppo.py,CartPole-v1,{seed},{step},{r}" for seed, step, r in [(2, 400, 0), (2, 999, 100)]]
        reference.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(run, "REFERENCE_CSV", reference)  # its episodes after step 1000 are ignored
    command = "python benchmark/run.py --aggregate-only --threshold 30"
    run.aggregate(sorted(out.glob("*/*/seed*/record.json")), out, 30.0, command)

    lines = read_csv(out / "summary.csv")
    assert list(lines) == ["blpo", "ppo"] + ([run.REFERENCE_NAME] if with_reference else [])
    ppo, blpo = lines["ppo"], lines["blpo"]
    # last 10%: episodes ending at step 900 or later
    assert float(ppo["return_seed1"]) == (90 + 95 + 100) / 3
    assert float(ppo["return_seed2"]) == pytest.approx((30 + 40 + 60) / 3)
    assert float(ppo["return_mean"]) == pytest.approx((95 + 130 / 3) / 2)
    assert float(ppo["return_std"]) == pytest.approx((95 - 130 / 3) / 2)
    # two seeds: the IQM trims nothing; the bootstrap resamples both seeds alike a quarter of the time
    assert float(ppo["iqm"]) == pytest.approx((95 + 130 / 3) / 2)
    assert (float(ppo["iqm_low"]), float(ppo["iqm_high"])) == (pytest.approx(130 / 3), 95)
    # running mean of the last 20 returns reaches 30: seed 1 at its 11th episode, seed 2 at its 5th
    assert (float(ppo["steps_to_threshold_seed1"]), float(ppo["steps_to_threshold_seed2"])) == (550, 990)
    assert (float(ppo["steps_to_threshold_mean"]), ppo["threshold_reached"]) == (770, "2")
    assert (float(ppo["wall_clock_s"]), float(ppo["sps"])) == (150, 7.5)
    assert (float(blpo["return_seed1"]), float(blpo["return_seed2"])) == (100, 40)
    assert (float(blpo["return_mean"]), float(blpo["return_std"])) == (70, 30)
    # blpo seed 1 reaches 30 only when the window has slid (6 x 100 / 20, 26th episode); seed 2 never does
    assert (float(blpo["steps_to_threshold_seed1"]), blpo["steps_to_threshold_seed2"]) == (880, "")
    assert (float(blpo["steps_to_threshold_mean"]), blpo["threshold_reached"]) == (880, "1")
    assert float(blpo["hypergrad/correction_ratio"]) == (2 + 5) / 2
    assert float(blpo["hypergrad/nonfinite_fallbacks"]) == 2 + 3
    assert ppo["hypergrad/correction_ratio"] == ""
    # extremes: the largest ratio and error and the smallest cosine logged in any run, beside the means
    assert float(blpo["hypergrad/correction_ratio_max"]) == 6
    assert (float(blpo["hypergrad/ihvp_error"]), float(blpo["hypergrad/ihvp_error_max"])) == ((3.75 + 1.5) / 2, 7)
    assert (float(blpo["hypergrad/ihvp_cos"]), float(blpo["hypergrad/ihvp_cos_min"])) == ((-0.125 + 1) / 2, -0.5)
    # final entropy: the value at the last step (written out of order for seed 1), not the mean or the last written
    assert (float(blpo["final_entropy_seed1"]), float(blpo["final_entropy_seed2"])) == (0.5, -1.5)
    assert (float(blpo["final_entropy_mean"]), float(blpo["final_entropy_std"])) == (-0.5, 1.0)
    assert ppo["final_entropy_mean"] == ""

    summary = (out / "summary.md").read_text()
    assert summary.startswith(f"```sh\n{command}\n```\n")
    ppo_row = "| CartPole-v1 | ppo | 1,000 | 1, 2 | 69.17 ± 25.83 (95.00, 43.33) | 69.17 [43.33, 95.00] | 770 (2/2) |"
    assert ppo_row + " n/a | 150 | 8 |" in summary
    blpo_row = "| 70.00 ± 30.00 (100.00, 40.00) | 70.00 [40.00, 100.00] | 880 (1/2) | -0.50 ± 1.00 |"
    blpo_row = "| CartPole-v1 | blpo | 1,000 | 1, 2 " + blpo_row
    assert blpo_row in summary
    header = "| env | variant | correction_ratio | ihvp_cos | ihvp_error | nonfinite_fallbacks | max correction_ratio"
    assert header + " | max ihvp_error | min ihvp_cos |\n" in summary
    assert "| CartPole-v1 | blpo | 3.5 | 0.4375 | 2.625 | 5 | 6 | 7 | -0.5 |" in summary
    assert "| CartPole-v1 | blpo | actor_logstd | 2 | 1 ± 0.5 | -0.5 ± 0.5 | 3 ± 1 |" in summary
    if with_reference:
        row = f"| CartPole-v1 | {run.REFERENCE_NAME} | 1,000 | 1, 2 | 175.00 ± 75.00 (250.00, 100.00) | "
        row += "175.00 [100.00, 250.00] | 974 (2/2) |"
        assert row in summary
        assert float(lines[run.REFERENCE_NAME]["steps_to_threshold_mean"]) == (950 + 999) / 2
    assert (out / "CartPole-v1.png").read_bytes().startswith(b"\x89PNG")

    # blpo against the baseline ppo (ppo-nested has no runs; the reference is no variant): blpo's seeds (100, 40)
    # beat ppo's (95, 43.33) half the time, and both seeds of either side coincide in a quarter of the resamples
    assert "| X | Y | task | P(X > Y) | 95% CI | verdict |\n" in summary
    for task in ["CartPole-v1", "all tasks (1)"]:
        assert f"| blpo | ppo | {task} | 0.50 | [0.00, 1.00] | not separated (< 5 seeds) |\n" in summary
    with (out / "probability_of_improvement.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == [
            {"x": "blpo", "y": "ppo", "task": task, "tasks": "CartPole-v1", "p": "0.5", "p_low": "0.0", "p_high": "1.0"}
            | {"verdict": "not separated (< 5 seeds)"}
            for task in ["CartPole-v1", "all tasks (1)"]
        ]
    assert (out / "probability_of_improvement.png").read_bytes().startswith(b"\x89PNG")


def score_rows(scores: dict[str, dict[str, list[float]]]) -> list[run.Row]:
    """Summary rows of hand-made last-10% returns given as {variant: {env_id: per-seed returns}}."""
    return [
        run.Row(env_id, variant, 1000, list(range(1, len(returns) + 1)), returns, [math.nan] * len(returns))
        for variant, by_env in scores.items()
        for env_id, returns in by_env.items()
    ]


def test_a_variant_ahead_on_every_seed_improves_with_probability_one():
    """Different seed counts per task and per variant; the baseline alone on a task has no pair there."""
    rows = score_rows(
        {
            "blpo": {"Hopper-v4": [30.0, 20.0, 25.0, 21.0, 40.0], "Walker2d-v4": [5.0, 7.0, 6.0, 9.0, 8.0, 7.5]},
            "ppo": {"Hopper-v4": [10, 19, 15, 0, 3, 18.0], "Walker2d-v4": [4.0, -1, 3, 2, 1], "Ant-v4": [1.0, 2.0]},
        }
    )
    found = run.improvements(rows, ["ppo", "ppo-nested"])  # no ppo-nested runs: skipped
    assert [(i.x, i.y, run.task_label(i)) for i in found] == [
        ("blpo", "ppo", "Hopper-v4"),
        ("blpo", "ppo", "Walker2d-v4"),
        ("blpo", "ppo", "all tasks (2)"),
    ]
    assert found[-1].tasks == ["Hopper-v4", "Walker2d-v4"]
    for i in found:
        assert (i.p, run.verdict(i)) == (run.Interval(1.0, 1.0, 1.0), "blpo > ppo")
    # the other way round, with blpo as the baseline: P = 0, and the verdict still names blpo
    for i in run.improvements(rows, ["blpo"]):
        assert (i.x, i.y, i.p, run.verdict(i)) == ("ppo", "blpo", run.Interval(0.0, 0.0, 0.0), "blpo > ppo")
    assert tyro.cli(run.Args, args=[]).baselines == ["ppo", "ppo-nested"]


def test_identical_variants_are_not_separated():
    same = {"Hopper-v4": [1.0, 4.0, 2.0, 8.0, 6.0], "Walker2d-v4": [3.0, 5.0, 0.0, 1.0, 9.0, 7.0]}
    found = run.improvements(score_rows({"a": same, "b": same}), ["b"])
    assert [run.task_label(i) for i in found] == ["Hopper-v4", "Walker2d-v4", "all tasks (2)"]
    for i in found:
        assert i.p.value == 0.5 and i.p.low < 0.5 < i.p.high and run.verdict(i) == "not separated"


def test_iqm_is_the_mean_of_the_middle_half():
    returns = [9.0, 1.0, 7.0, 3.0, 100.0, -50.0, 5.0, 4.0]  # sorted: -50, 1, | 3, 4, 5, 7, | 9, 100
    estimate = run.iqm(returns)
    assert estimate.value == (3 + 4 + 5 + 7) / 4
    assert estimate.low < estimate.value < estimate.high
    assert run.iqm(returns + [math.nan]) == estimate  # a seed without a last-10% return is left out


def test_bootstrap_is_reproducible_and_leaves_numpy_alone():
    """The same numbers whatever NumPy's global generator was, and that generator as it was before."""
    rows = score_rows({"a": {"Hopper-v4": [1.0, 5.0, 2.0, 8.0, 3.0]}, "b": {"Hopper-v4": [2.0, 4.0, 6.0, 0.0]}})
    estimates = []
    for seed in [1, 2]:
        np.random.seed(seed)
        estimates.append((run.iqm([9.0, 1.0, 7.0, 3.0, 5.0]), run.improvements(rows, ["b"])))
        assert np.random.random() == np.random.RandomState(seed).random_sample()
    assert estimates[0] == estimates[1]


def test_a_verdict_must_hold_under_every_bootstrap_draw():
    """Scores whose interval's high end crosses 0.5 under one of five generator seeds only: separated under that
    draw alone, not separated under seed 0 or under all five; the first seed's interval is the one reported."""
    rows = score_rows({"a": {"Hopper-v4": [3.0, 3, 4, 4, 7]}, "b": {"Hopper-v4": [11.0, 3, 12, 8, 6]}})
    alone = [run.improvements(rows, ["b"], [seed])[0] for seed in range(5)]
    assert [run.verdict(i) for i in alone] == ["not separated"] * 3 + ["b > a", "not separated"]
    drawn = run.improvements(rows, ["b"], range(5))[0]
    assert drawn.draws == [i.p for i in alone] and drawn.p == alone[0].p
    assert run.verdict(drawn) == "not separated (separated under some bootstrap draws only)"
    low, high = min(i.p.high for i in alone), max(i.p.high for i in alone)
    assert low < 0.5 < high
    assert run.ends_over_draws(drawn) == dict(p_low_min=0.0, p_low_max=0.0, p_high_min=low, p_high_max=high)
    table = run.improvement_table([drawn])
    assert "| X | Y | task | P(X > Y) | 95% CI | CI ends over 5 draws | verdict |" in table
    assert f"| 0.00-0.00, {run.number(low)}-{run.number(high)} | not separated (separated under some" in table
    assert run.improvement_record(drawn)["draws"] == 5
    assert "draws" not in run.improvement_record(alone[0]) and "CI ends" not in run.improvement_table(alone)


def test_fewer_than_five_seeds_give_no_verdict():
    """One seed: an interval without width, no exception; fewer than 5 seeds of either variant on any task: no claim,
    even when every seed separates; a variant without returns is left out."""
    assert run.iqm([3.0]) == run.Interval(3.0, 3.0, 3.0)
    assert all(math.isnan(bound) for bound in vars(run.iqm([math.nan])).values())
    a = {"Hopper-v4": [3.0], "Walker2d-v4": [1.0, 2.0, 3.0, 4.0, 5.0]}
    b = {"Hopper-v4": [1.0], "Walker2d-v4": [0.0, 0.5, 0.1, 0.2, 0.3]}
    found = run.improvements(score_rows({"a": a, "b": b, "c": {"Hopper-v4": [math.nan]}}), ["b"])
    assert [(i.x, run.task_label(i), i.p, run.verdict(i)) for i in found] == [
        ("a", "Hopper-v4", run.Interval(1.0, 1.0, 1.0), "not separated (< 5 seeds)"),
        ("a", "Walker2d-v4", run.Interval(1.0, 1.0, 1.0), "a > b"),
        ("a", "all tasks (2)", run.Interval(1.0, 1.0, 1.0), "not separated (< 5 seeds)"),
    ]
    four = run.improvements(score_rows({"a": {"Hopper-v4": [5.0, 6, 7, 8]}, "b": {"Hopper-v4": [1.0, 2, 3, 4]}}), "b")
    assert run.verdict(four[0]) == "not separated (< 5 seeds)"


def test_every_scalar_event_is_loaded(tmp_path):
    """More episodes than TensorBoard's default sample of 10,000 scalars per tag."""
    returns = np.arange(12_000, dtype=float)
    write_run(tmp_path, "ppo", 1, [(i, r) for i, r in enumerate(returns)])
    episodes = run.load_run(tmp_path / "ppo" / "CartPole-v1" / "seed1" / "record.json").episodes
    assert np.array_equal(episodes.returns, returns)


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
    monkeypatch.setattr(run, "RAY_TOKEN", token)
    monkeypatch.setenv("RAY_AUTH_MODE", "unset")  # recorded, so the mode the runner sets is removed afterwards;
    monkeypatch.delenv("RAY_AUTH_MODE")  # delenv alone records nothing when the variable is absent
    monkeypatch.setattr(run, "check_reachable", lambda address: None)
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
        run.run_grid_ray(args, [])
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
    """Whether process `pid` exists and runs a training script."""
    try:
        return b"_continuous.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_ctrl_c_stops_the_workers_and_names_the_unfinished_runs(tmp_path):
    """SIGINT while the first of two long runs trains on one worker: the worker is killed, both runs are named as
    unfinished in one line, exit 130 without a traceback, no record and no aggregation."""
    out = tmp_path / "out"
    flags = ["--variants", f"ppo=ppo_continuous.py {TINY}", "--env-ids", "Hopper-v4", "--seeds", "1", "2"]
    flags += ["--total-timesteps", "10000000", "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmark" / "run.py"), *flags],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=restore_ctrl_c,
    )
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


# --- #35: compact records, the NumPy bootstrap against rliable's, bad input, and the Ray backend -----------------


def rliable_intervals(scores, statistic, seed):
    """rliable's own get_interval_estimates, with the generator seeded as run.bootstrap seeds it: (3, values)."""
    from rliable import library as rly

    np.random.seed(seed)
    point, interval = rly.get_interval_estimates({"": scores}, statistic, reps=run.BOOTSTRAP_REPS)
    return np.array([np.atleast_1d(point[""]), *np.reshape(interval[""], (2, -1))])


def test_numpy_intervals_equal_rliables_on_random_scores():
    """The IQM and P(X > Y) per task and over tasks, with their intervals, equal rliable's to 1e-9 on random scores:
    1 to 7 seeds, ties, unequal seed counts, 1 to 3 tasks."""
    from rliable import metrics

    def rliable_improvement(*scores):
        per_task = [metrics.probability_of_improvement(x, y) for x, y in zip(scores[::2], scores[1::2])]
        return np.array([*per_task, np.mean(per_task)])

    gen = np.random.default_rng(0)
    for trial in range(12):
        returns = np.round(2 * gen.normal(size=gen.integers(1, 8)))  # rounded: ties
        mine = run.iqm(list(returns))
        expected = rliable_intervals(returns[:, None], metrics.aggregate_iqm, run.BOOTSTRAP_SEED)
        np.testing.assert_allclose([mine.value, mine.low, mine.high], expected[:, 0], rtol=0, atol=1e-9)
        pairs = [
            (np.round(2 * gen.normal(size=gen.integers(1, 8))), np.round(2 * gen.normal(size=gen.integers(1, 8))))
            for _ in range(gen.integers(1, 4))
        ]
        mine = run.probability_of_improvement(pairs, seed=trial)
        expected = rliable_intervals([s[:, None] for pair in pairs for s in pair], rliable_improvement, trial)
        np.testing.assert_allclose([[i.value, i.low, i.high] for i in mine], expected.T, rtol=0, atol=1e-9)


def test_compact_record_of_a_fresh_run_equals_its_events(tiny_grid):
    """Every episode (step, return, length) and the final entropy in the compact record are the events' own."""
    out, result = tiny_grid
    assert result.returncode == 0, result.stderr
    for directory in sorted(out.glob("*/*/seed*")):
        record = json.loads((directory / "record.json").read_text())
        scalars, _ = run.load_scalars(directory)
        with (directory / run.EPISODES_CSV).open() as f:
            rows = list(csv.DictReader(f))
        returns = [e.value for e in scalars["charts/episodic_return"]]  # float32 values, as TensorBoard keeps them
        assert [float(np.float32(r["return"])) for r in rows] == returns
        assert run.load_run(directory / "record.json").episodes.returns.tolist() == returns
        assert [int(r["global_step"]) for r in rows] == [e.step for e in scalars["charts/episodic_return"]]
        assert [float(r["length"]) for r in rows] == [e.value for e in scalars["charts/episodic_length"]]
        assert record["summary"]["final_entropy"] == scalars["losses/entropy"][-1].value
        assert record["commit"] != "unknown" and record["command"].startswith("python ppo_continuous.py")
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
    (tmp_path / run.EPISODES_CSV).unlink(missing_ok=True)
    record = json.loads((tmp_path / "record.json").read_text())
    (tmp_path / "record.json").write_text(json.dumps({k: v for k, v in record.items() if k != "summary"}))
    scalars, _ = run.load_scalars(tmp_path)
    events = scalars["charts/episodic_return"]
    from_events = run.Episodes(1, np.array([e.step for e in events], float), np.array([e.value for e in events]))
    converted = run.load_run(tmp_path / "record.json")
    assert run.last_fraction_mean(converted.episodes, 1_000_000) == run.last_fraction_mean(from_events, 1_000_000)
    assert converted.final_entropy == scalars["losses/entropy"][-1].value
    assert (tmp_path / run.EPISODES_CSV).is_file() and "summary" in json.loads((tmp_path / "record.json").read_text())


def test_ray_grid_gives_the_local_records_and_records_a_failure(tmp_path):
    """A tiny grid (Pendulum-v1, seeds 1 and 2, 2,048 steps) on a local Ray: the same episodes, bit for bit, as the
    local backend; a variant whose runs fail is recorded as failed, named in the summary, and the grid finishes."""
    grid = ["--env-ids", "Pendulum-v1", "--seeds", "1", "2", "--total-timesteps", "2048", "--workers", "2"]
    local = runner("--variants", f"ppo=ppo_continuous.py {TINY}", *grid, "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    variants = ["--variants", f"ppo=ppo_continuous.py {TINY}", "bad=ppo_continuous.py --num-minibatches 7"]
    ray_grid = runner(*variants, *grid, "--backend", "ray", "--out", str(tmp_path / "ray"))
    assert ray_grid.returncode != 0 and "2 run(s) failed" in ray_grid.stderr, ray_grid.stderr
    assert "ray: cluster at 127.0.0.1:" in ray_grid.stdout and "4 to run as Ray tasks" in ray_grid.stdout
    for seed in (1, 2):
        here, there = (tmp_path / name / "ppo" / "Pendulum-v1" / f"seed{seed}" for name in ("local", "ray"))
        columns = [np.loadtxt(d / run.EPISODES_CSV, delimiter=",", skiprows=1)[:, :3] for d in (here, there)]
        assert np.array_equal(*columns) and len(columns[0]) == 10
        failed = json.loads((tmp_path / "ray" / "bad" / "Pendulum-v1" / f"seed{seed}" / "failed.json").read_text())
        assert failed["returncode"] != 0 and "--num-minibatches does not divide" in failed["error"]
    summary = (tmp_path / "ray" / "summary.md").read_text()
    assert "Failed runs, left out above:" in summary and "- bad Pendulum-v1 seed 2: exit 1," in summary


def test_a_reference_that_stops_short_of_the_last_tenth_is_left_out(hand_written_runs, monkeypatch):
    """CleanRL's 1M-step episodes say nothing of a 3M-step grid's last 10%: no reference row, rather than n/a."""
    reference = hand_written_runs / "reference.csv"
    reference.write_text("script,env_id,seed,global_step,episodic_return\nppo.py,CartPole-v1,1,800,200\n")
    monkeypatch.setattr(run, "REFERENCE_CSV", reference)
    rows = run.aggregate(sorted(hand_written_runs.glob("*/*/seed*/record.json")), hand_written_runs, None, "python")
    assert [row.variant for row in rows] == ["blpo", "ppo"]
