"""--capture-video with what requirements.txt installs: a short MuJoCo video (moviepy, EGL) and a short
classic-control one (pygame-ce), each a one-iteration run, as rendering is slow. The MuJoCo run is on HalfCheetah,
whose model makes MuJoCo warn that `settotalmass` is deprecated: the scripts silence that warning and keep MuJoCo's
MUJOCO_LOG.TXT out of the working directory."""

import pytest
from scripts import run_scripts

RUNS = {
    "ppo_continuous": "ppo_continuous.py --env-id HalfCheetah-v4 --total-timesteps 64".split(),
    "blpo_discrete": "blpo_discrete.py --env-id CartPole-v1 --num-envs 2 --total-timesteps 128".split(),
}
QUICK = "--num-steps 64 --num-minibatches 2 --update-epochs 1 --capture-video".split()


@pytest.fixture(scope="module")
def video_runs(tmp_path_factory):
    """Both runs, started concurrently once for the module."""
    return run_scripts(
        tmp_path_factory.mktemp("video_runs"), {name: [*command, *QUICK] for name, command in RUNS.items()}
    )


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
