"""The statistics of a grid: each seed's last-10% return, the interquartile mean (IQM) over seeds and the probability
of improvement P(X > Y), each with its stratified-bootstrap 95% CI as rliable computes it, and the verdicts."""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from benchmark.records import COUNTERS, EXTREMES, Episodes, Run

REFERENCE_NAME = "CleanRL PPO (reference)"
LAST_FRACTION_START = 0.9
"""the last-10% return averages the episodes that ended after this fraction of the total steps"""
WINDOW = 20
"""episodes in the running mean behind steps-to-threshold and the learning curves"""
BOOTSTRAP_REPS = 500
"""bootstrap resamples behind every confidence interval (rliable's default is 50,000). With few seeds P takes few
values, and the interval's ends move by one of its steps between generator seeds at 5,000 resamples as at 500"""
MIN_SEEDS = 5
"""the fewest seeds of each variant on each task for a verdict that one variant beats another"""
BOOTSTRAP_SEED = 0
"""NumPy's global generator is seeded with this for every bootstrap, unless `--bootstrap-seeds` adds others: rliable
1.2.0 draws its resamples with np.random.choice and ignores its `random_state` argument"""


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
