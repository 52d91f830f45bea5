"""benchmark/stats.py: interval estimates and verdicts on hand-made returns, and the NumPy bootstrap against
rliable's own."""

import math

import numpy as np
import tyro

from benchmark import report, run, stats


def score_rows(scores: dict[str, dict[str, list[float]]]) -> list[stats.Row]:
    """Summary rows of hand-made last-10% returns given as {variant: {env_id: per-seed returns}}."""
    return [
        stats.Row(env_id, variant, 1000, list(range(1, len(returns) + 1)), returns, [math.nan] * len(returns))
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
    found = stats.improvements(rows, ["ppo", "ppo-nested"])  # no ppo-nested runs: skipped
    assert [(i.x, i.y, stats.task_label(i)) for i in found] == [
        ("blpo", "ppo", "Hopper-v4"),
        ("blpo", "ppo", "Walker2d-v4"),
        ("blpo", "ppo", "all tasks (2)"),
    ]
    assert found[-1].tasks == ["Hopper-v4", "Walker2d-v4"]
    for i in found:
        assert (i.p, stats.verdict(i)) == (stats.Interval(1.0, 1.0, 1.0), "blpo > ppo")
    # the other way round, with blpo as the baseline: P = 0, and the verdict still names blpo
    for i in stats.improvements(rows, ["blpo"]):
        assert (i.x, i.y, i.p, stats.verdict(i)) == ("ppo", "blpo", stats.Interval(0.0, 0.0, 0.0), "blpo > ppo")
    assert tyro.cli(run.Args, args=[]).baselines == ["ppo", "ppo-nested"]


def test_identical_variants_are_not_separated():
    same = {"Hopper-v4": [1.0, 4.0, 2.0, 8.0, 6.0], "Walker2d-v4": [3.0, 5.0, 0.0, 1.0, 9.0, 7.0]}
    found = stats.improvements(score_rows({"a": same, "b": same}), ["b"])
    assert [stats.task_label(i) for i in found] == ["Hopper-v4", "Walker2d-v4", "all tasks (2)"]
    for i in found:
        assert i.p.value == 0.5 and i.p.low < 0.5 < i.p.high and stats.verdict(i) == "not separated"


def test_iqm_is_the_mean_of_the_middle_half():
    returns = [9.0, 1.0, 7.0, 3.0, 100.0, -50.0, 5.0, 4.0]  # sorted: -50, 1, | 3, 4, 5, 7, | 9, 100
    estimate = stats.iqm(returns)
    assert estimate.value == (3 + 4 + 5 + 7) / 4
    assert estimate.low < estimate.value < estimate.high
    assert stats.iqm(returns + [math.nan]) == estimate  # a seed without a last-10% return is left out


def test_bootstrap_is_reproducible_and_leaves_numpy_alone():
    """The same numbers whatever NumPy's global generator was, and that generator as it was before."""
    rows = score_rows({"a": {"Hopper-v4": [1.0, 5.0, 2.0, 8.0, 3.0]}, "b": {"Hopper-v4": [2.0, 4.0, 6.0, 0.0]}})
    estimates = []
    for seed in [1, 2]:
        np.random.seed(seed)
        estimates.append((stats.iqm([9.0, 1.0, 7.0, 3.0, 5.0]), stats.improvements(rows, ["b"])))
        assert np.random.random() == np.random.RandomState(seed).random_sample()
    assert estimates[0] == estimates[1]


def test_a_verdict_must_hold_under_every_bootstrap_draw():
    """Scores whose interval's high end crosses 0.5 under one of five generator seeds only: separated under that
    draw alone, not separated under seed 0 or under all five; the first seed's interval is the one reported."""
    rows = score_rows({"a": {"Hopper-v4": [3.0, 3, 4, 4, 7]}, "b": {"Hopper-v4": [11.0, 3, 12, 8, 6]}})
    alone = [stats.improvements(rows, ["b"], [seed])[0] for seed in range(5)]
    assert [stats.verdict(i) for i in alone] == ["not separated"] * 3 + ["b > a", "not separated"]
    drawn = stats.improvements(rows, ["b"], range(5))[0]
    assert drawn.draws == [i.p for i in alone] and drawn.p == alone[0].p
    assert stats.verdict(drawn) == "not separated (separated under some bootstrap draws only)"
    low, high = min(i.p.high for i in alone), max(i.p.high for i in alone)
    assert low < 0.5 < high
    assert report.ends_over_draws(drawn) == dict(p_low_min=0.0, p_low_max=0.0, p_high_min=low, p_high_max=high)
    table = report.improvement_table([drawn])
    assert "| X | Y | task | P(X > Y) | 95% CI | CI ends over 5 draws | verdict |" in table
    assert (
        f"| 0.00-0.00, {report.format_number(low)}-{report.format_number(high)} | not separated (separated under some"
        in table
    )
    assert report.improvement_record(drawn)["draws"] == 5
    assert "draws" not in report.improvement_record(alone[0]) and "CI ends" not in report.improvement_table(alone)


def test_fewer_than_five_seeds_give_no_verdict():
    """One seed: an interval without width, no exception; fewer than 5 seeds of either variant on any task: no claim,
    even when every seed separates; a variant without returns is left out."""
    assert stats.iqm([3.0]) == stats.Interval(3.0, 3.0, 3.0)
    assert all(math.isnan(bound) for bound in vars(stats.iqm([math.nan])).values())
    a = {"Hopper-v4": [3.0], "Walker2d-v4": [1.0, 2.0, 3.0, 4.0, 5.0]}
    b = {"Hopper-v4": [1.0], "Walker2d-v4": [0.0, 0.5, 0.1, 0.2, 0.3]}
    found = stats.improvements(score_rows({"a": a, "b": b, "c": {"Hopper-v4": [math.nan]}}), ["b"])
    assert [(i.x, stats.task_label(i), i.p, stats.verdict(i)) for i in found] == [
        ("a", "Hopper-v4", stats.Interval(1.0, 1.0, 1.0), "not separated (< 5 seeds)"),
        ("a", "Walker2d-v4", stats.Interval(1.0, 1.0, 1.0), "a > b"),
        ("a", "all tasks (2)", stats.Interval(1.0, 1.0, 1.0), "not separated (< 5 seeds)"),
    ]
    four = stats.improvements(score_rows({"a": {"Hopper-v4": [5.0, 6, 7, 8]}, "b": {"Hopper-v4": [1.0, 2, 3, 4]}}), "b")
    assert stats.verdict(four[0]) == "not separated (< 5 seeds)"


def rliable_intervals(scores, statistic, seed):
    """rliable's own get_interval_estimates, with the generator seeded as stats.bootstrap seeds it: (3, values)."""
    from rliable import library as rly

    np.random.seed(seed)
    point, interval = rly.get_interval_estimates({"": scores}, statistic, reps=stats.BOOTSTRAP_REPS)
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
        mine = stats.iqm(list(returns))
        expected = rliable_intervals(returns[:, None], metrics.aggregate_iqm, stats.BOOTSTRAP_SEED)
        np.testing.assert_allclose([mine.value, mine.low, mine.high], expected[:, 0], rtol=0, atol=1e-9)
        pairs = [
            (np.round(2 * gen.normal(size=gen.integers(1, 8))), np.round(2 * gen.normal(size=gen.integers(1, 8))))
            for _ in range(gen.integers(1, 4))
        ]
        mine = stats.probability_of_improvement(pairs, seed=trial)
        expected = rliable_intervals([s[:, None] for pair in pairs for s in pair], rliable_improvement, trial)
        np.testing.assert_allclose([[i.value, i.low, i.high] for i in mine], expected.T, rtol=0, atol=1e-9)
