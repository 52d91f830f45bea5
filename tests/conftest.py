import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)  # in-process script runs use one thread, as the subprocess ones do


@pytest.fixture
def run_in_tmp_cwd(tmp_path, monkeypatch):
    """Keep files written to the working directory (e.g. MuJoCo's MUJOCO_LOG.TXT) out of the repository."""
    monkeypatch.chdir(tmp_path)
