"""--capture-video with what requirements.txt installs: a short MuJoCo video (moviepy, EGL) and a short
classic-control one (pygame-ce), each a one-iteration run (the authors' recipe's too), as rendering is slow. The
MuJoCo run is on HalfCheetah, whose model makes MuJoCo warn that `settotalmass` is deprecated: the scripts silence
that warning and keep MuJoCo's MUJOCO_LOG.TXT out of the working directory."""

import pytest
from conftest import TINY
from scripts import run_scripts

ONE_ITERATION = {script: ["--total-timesteps", str(TINY[script].batch), "--capture-video"] for script in TINY}
ONE_ITERATION["blpo_continuous_authors"] = ["--total-timesteps", "256", "--capture-video"]
RUNS = {
    "ppo_continuous": TINY["ppo_continuous"].command("ppo_continuous", "--env-id", "HalfCheetah-v4"),
    "blpo_discrete": TINY["blpo_discrete"].command("blpo_discrete"),
    "blpo_continuous_authors": ["blpo_continuous_authors.py", "--num-envs", "2", "--num-steps", "128"],
}


@pytest.fixture(scope="module")
def video_runs(tmp_path_factory):
    """Both runs, started concurrently once for the module."""
    commands = {name: [*command, *ONE_ITERATION[name]] for name, command in RUNS.items()}
    return run_scripts(tmp_path_factory.mktemp("video_runs"), commands)


@pytest.mark.parametrize("script", RUNS)
def test_capture_video_writes_an_mp4(video_runs, script):
    """An MP4 file (its `ftyp` box right after the first size field) under videos/{run_name}/, and nothing on
    stderr that looks like an error (pygame's SDL complains there without a video driver)."""
    run = video_runs[script]
    run_dir = run.run_dir()
    videos = list((run.cwd / "videos" / run_dir.name).glob("*.mp4"))
    assert videos, list((run.cwd / "videos").rglob("*")) if (run.cwd / "videos").exists() else "no videos/"
    assert all(video.read_bytes()[4:8] == b"ftyp" for video in videos), videos
    assert "error" not in run.result.stderr.lower(), run.result.stderr[-3000:]


def test_mujoco_warning_is_silenced_and_leaves_no_log(video_runs):
    """HalfCheetah: no `settotalmass` lines on stdout or stderr, no MUJOCO_LOG.TXT in the working directory."""
    run = video_runs["ppo_continuous"]
    run.run_dir()
    assert "settotalmass" not in run.result.stdout + run.result.stderr
    assert not (run.cwd / "MUJOCO_LOG.TXT").exists()
