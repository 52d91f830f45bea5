"""benchmark/report.py: the aggregation of hand-written runs, worked out by hand."""

import csv

import pytest
from grids import read_csv

from benchmark import report, stats


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
    monkeypatch.setattr(report, "REFERENCE_CSV", reference)  # its episodes after step 1000 are ignored
    command = "python benchmark/run.py --aggregate-only --threshold 30"
    report.aggregate(sorted(out.glob("*/*/seed*/record.json")), out, 30.0, command)

    lines = read_csv(out / "summary.csv")
    assert list(lines) == ["blpo", "ppo"] + ([stats.REFERENCE_NAME] if with_reference else [])
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
        row = f"| CartPole-v1 | {stats.REFERENCE_NAME} | 1,000 | 1, 2 | 175.00 ± 75.00 (250.00, 100.00) | "
        row += "175.00 [100.00, 250.00] | 974 (2/2) |"
        assert row in summary
        assert float(lines[stats.REFERENCE_NAME]["steps_to_threshold_mean"]) == (950 + 999) / 2
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


def test_a_reference_that_stops_short_of_the_last_tenth_is_left_out(hand_written_runs, monkeypatch):
    """CleanRL's 1M-step episodes say nothing of a 3M-step grid's last 10%: no reference row, rather than n/a."""
    reference = hand_written_runs / "reference.csv"
    reference.write_text("script,env_id,seed,global_step,episodic_return\nppo.py,CartPole-v1,1,800,200\n")
    monkeypatch.setattr(report, "REFERENCE_CSV", reference)
    rows = report.aggregate(sorted(hand_written_runs.glob("*/*/seed*/record.json")), hand_written_runs, None, "python")
    assert [row.variant for row in rows] == ["blpo", "ppo"]
