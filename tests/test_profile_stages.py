"""benchmark/profile_stages.py: stages come from the scripts' step comments, and a profiled run charges its
samples to them."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from benchmark import profile_stages


@pytest.mark.parametrize("script", ["blpo_discrete.py", "blpo_continuous.py", "ppo_continuous.py"])
def test_step_comments_in_paper_order(script):
    labels = [label.split(".")[0] for _, label in profile_stages.step_comments(ROOT / script)]
    update = (
        ["3a", "3b", "3c", "3d", "3e", "3f"] if script.startswith("blpo") else []
    )  # update_minibatch precedes the main loop
    assert labels == [*update, "1", "2", "3", "4"]


def test_profiled_run_reports_every_stage(tmp_path):
    command = [sys.executable, str(ROOT / "benchmark" / "profile_stages.py"), "blpo_discrete.py"]
    command += ["--total-timesteps", "1024", "--num-minibatches", "2", "--update-epochs", "1", "--ihvp", "cg"]
    result = subprocess.run(
        command, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    shares = dict(re.findall(r"^(\d+[a-z]?\. [^\n]+?)\s+([\d.]+)%$", result.stdout, re.MULTILINE))
    for stage in ("1. Rollout", "3a. Nested critic", "3c. Hessian-vector products"):  # the long ones: always sampled
        assert stage in shares, result.stdout
    assert sum(map(float, shares.values())) == pytest.approx(100, abs=0.5)


def test_unknown_script_is_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmark" / "profile_stages.py"), "nope.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and result.stderr.startswith("error:") and len(result.stderr.splitlines()) == 1
