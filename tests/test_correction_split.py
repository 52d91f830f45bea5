"""benchmark/correction_split.py: one row per actor tensor, in the order g and c are flattened in."""

import math
import re

import torch

from benchmark import correction_split

SMALL = ["--num-steps", "64", "--num-minibatches", "2", "--update-epochs", "1"]


def test_split_reports_every_actor_tensor(capsys):
    correction_split.main(correction_split.Args(env_id="Hopper-v4", iterations=1, skip_iterations=20, flags=SMALL))
    out = capsys.readouterr().out
    # 2,048 steps of 64-step rollouts (32), 2 minibatches each; the first 20 rollouts' updates left out
    assert "Hopper-v4, seed 1, 24 updates after rollout 20" in out
    rows = re.findall(r"^(\S+)\s+(\S+)\s+(\S+)$", out, re.MULTILINE)  # the header has more columns
    names = [name for name, _, _ in rows]
    layers = [f"actor_mean.{i}.{kind}" for i in (0, 2, 4) for kind in ("weight", "bias")]
    assert names == ["(all)", *layers, "actor_logstd"]
    for _, ratio, drift in rows:
        assert math.isfinite(float(ratio)) and float(ratio) > 0 and math.isfinite(float(drift))


def test_norms_of_the_whole_and_its_parts():
    vector = torch.tensor([3.0, 4.0, 0.0, 5.0, 12.0])
    expected = torch.tensor([(9 + 16 + 25 + 144) ** 0.5, 5.0, 13.0])
    torch.testing.assert_close(correction_split.norms(vector, [2, 3]), expected)
