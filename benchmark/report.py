"""The report of a grid: summary.md (the command line, the results table, the probabilities of improvement and the
diagnostics), summary.csv, probability_of_improvement.csv and the plots, from the finished runs' compact records."""

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmark.records import COUNTERS, EXTREMES, FINALS, REFERENCE_CSV, Episodes, Run, load_reference, load_run
from benchmark.stats import (
    BOOTSTRAP_REPS,
    BOOTSTRAP_SEED,
    LAST_FRACTION_START,
    MIN_SEEDS,
    REFERENCE_NAME,
    WINDOW,
    Improvement,
    Interval,
    Row,
    first_steps,
    improvements,
    reference_row,
    running_mean,
    task_label,
    variant_row,
    verdict,
)

GRID_POINTS = 100
"""points of the common grid the seeds' learning curves are interpolated onto"""
BASELINES = ("ppo", "ppo-nested")
"""the variants every other variant is compared with by the probability of improvement, unless `--baselines` says"""


def format_number(x: float, spec: str = ".2f") -> str:
    """`x` formatted with `spec`, or "n/a" when it is not finite."""
    return format(x, spec) if math.isfinite(x) else "n/a"


def kilo_steps(steps: float) -> str:
    """A step count as the summary shows it: thousands as "212k", small counts in full."""
    return f"{steps / 1000:.0f}k" if steps >= 10_000 else f"{steps:.0f}"


def return_cell(row: Row) -> str:
    """mean ± population std over seeds, then the per-seed values in parentheses."""
    values = np.array(row.returns)
    per_seed = ", ".join(format_number(v) for v in values)
    return f"{format_number(values.mean())} ± {format_number(values.std())} ({per_seed})"


def interval_cell(interval: Interval) -> str:
    """e.g. "2220.39 [2108.25, 2288.54]"."""
    return f"{format_number(interval.value)} [{format_number(interval.low)}, {format_number(interval.high)}]"


def entropy_cell(row: Row) -> str:
    """The final policy entropy, mean ± population std over seeds; "n/a" without one."""
    values = np.array(row.final_entropies or [math.nan])
    return f"{format_number(values.mean())} ± {format_number(values.std())}" if np.isfinite(values).all() else "n/a"


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
        lines.append(cells + [entropy_cell(row), format_number(row.wall_clock_s, ".0f"), format_number(row.sps, ".0f")])
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
        + [format_number(row.diagnostics.get(tag, math.nan), ".0f" if tag in COUNTERS else ".4g") for tag in tags]
        + [format_number(row.extremes.get(tag, math.nan), ".4g") for tag in extreme_tags]
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
                cells.append(f"{format_number(values.mean(), '.3g')} ± {format_number(values.std(), '.2g')}")
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
        [i.x, i.y, task_label(i), format_number(i.p.value), f"[{format_number(i.p.low)}, {format_number(i.p.high)}]"]
        + ["{}-{}, {}-{}".format(*map(format_number, ends_over_draws(i).values()))] * (draws > 1)
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


def plot_band(axes, curves: list[tuple[np.ndarray, np.ndarray]], label: str, color: str, **style) -> None:
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
        plot_band(axes, [(r.episodes.steps, r.episodes.returns) for r in variant_runs], variant, colors[variant])
    plot_band(axes, [(e.steps, e.returns) for e in reference], REFERENCE_NAME, "black", linestyle="--")
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
