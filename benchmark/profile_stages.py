"""Where the time of a training script goes, by the algorithm's steps.

    python benchmark/profile_stages.py blpo_continuous.py --total-timesteps 20480

Runs the script in this process (its own flags follow its name) while a sampling thread looks at the main
thread's stack every few milliseconds. A sample is charged to the step comment (`# 1. Rollout ...`,
`# 3a. Nested critic ...`) above the script line it is in; inside the hypergradient, the helper it is in
(Hessian graph and rows, solve, mixed term) names a finer stage. Prints one line per stage with its share of
the training loop's samples.
"""

import re
import runpy
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INTERVAL = 0.002
"""seconds between samples"""
HELPERS = {
    "critic_advantages": "3b. A(w) from the critic pass",
    "squared_error_hvp": "3c. Hessian setup (the critic's forward and backward pass)",
    "hvp_one": "3c. Hessian-vector products",
    "nystrom_ihvp": "3c. solve",
    "cg_ihvp": "3c. solve",
    "exact_ihvp": "3c. solve",
    "critic_jacobian": "3c. Gauss-Newton Jacobian",
    "gauss_newton_ihvp": "3c. solve",
    "mixed_term": "3d. mixed term",
}
"""hypergradient helpers that name a finer stage than their step comment"""
STEP_SCOPES = ("<module>", "update_minibatch")
"""the code whose step comments label a sample: the main loop, and the per-minibatch update it calls"""


def step_comments(path: Path) -> list[tuple[int, str]]:
    """(line number, label) of every `# 1. ...`, `# 3a. ...` step comment, in file order."""
    steps = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = re.match(r"\s*# (\d+[a-z]?)\. ([^:(,]+)", line)
        if match:
            steps.append((number, f"{match.group(1)}. {match.group(2).strip()}"))
    return steps


def stage_of(frame, script: str, steps: list[tuple[int, str]]) -> str | None:
    """The stage a sampled stack is in, or None outside the training loop: the innermost helper of HELPERS, else
    the step comment above the line of the innermost STEP_SCOPES frame."""
    helper, loop_start = None, next(number for number, label in steps if label.startswith("1."))
    while frame is not None:
        code = frame.f_code
        if code.co_filename == script:
            if code.co_name in HELPERS and helper is None:
                helper = HELPERS[code.co_name]
            if code.co_name in STEP_SCOPES:
                if code.co_name == "<module>" and frame.f_lineno < loop_start:
                    return None  # before the main loop's first step
                above = [label for number, label in steps if number <= frame.f_lineno]
                return helper or (above[-1] if above else steps[0][1])
        frame = frame.f_back
    return None


def profile(script: Path, argv: list[str]) -> Counter:
    """Run `script` with `argv` as __main__ and count samples per stage."""
    steps = step_comments(script)
    main = threading.main_thread().ident
    counts: Counter = Counter()
    done = threading.Event()

    def sample():
        while not done.wait(INTERVAL):
            frame = sys._current_frames().get(main)
            stage = stage_of(frame, str(script), steps) if frame is not None else None
            if stage is not None:
                counts[stage] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sys.argv = [str(script), *argv]
    sampler.start()
    start = time.time()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        done.set()
        sampler.join()
    counts["wall-clock seconds"] = round(time.time() - start)
    return counts


def main() -> None:
    if len(sys.argv) < 2 or not (ROOT / sys.argv[1]).is_file():
        sys.exit(
            "error: name a training script of this repository, e.g. benchmark/profile_stages.py blpo_continuous.py"
        )
    command = " ".join(sys.argv[1:])
    counts = profile(ROOT / sys.argv[1], sys.argv[2:])
    seconds = counts.pop("wall-clock seconds")
    total = sum(counts.values())
    print(f"\n{command}: {total} samples over {seconds} s")
    for stage, count in sorted(counts.items()):
        print(f"{stage:45s} {100 * count / total:5.1f}%")


if __name__ == "__main__":
    main()
