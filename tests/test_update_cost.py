"""benchmark/update_cost.py --against: two checkouts' BLPO updates timed in turn in one process."""

import re

import pytest
import torch
from conftest import ROOT

import blpo_continuous
from benchmark import update_cost


def test_against_times_both_updates_and_their_ratio(capsys):
    """Against this very script both sides run the same updates on the same data the same number of times: their
    agents start apart from the seed's and end equal, bit for bit."""
    torch.manual_seed(0)
    start = update_cost.blpo_update(blpo_continuous, *update_cost.rollout(), {})[1].state_dict()
    agents = update_cost.compare(ROOT / "blpo_continuous.py", blocks=2)
    out = capsys.readouterr().out
    this, other = map(float, re.search(r"this checkout ([\d.]+) ms, .* ([\d.]+) ms per update", out).groups())
    ratio, low, high = map(float, re.search(r"median ([\d.]+) \(range ([\d.]+)-([\d.]+)\)", out).groups())
    assert this > 0 and other > 0 and low <= ratio <= high
    (name, a), *_ = agents["this"].state_dict().items()
    assert not torch.equal(a, start[name])
    assert all(torch.equal(a, b) for a, b in zip(*(agent.state_dict().values() for agent in agents.values())))


def test_against_a_missing_file_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --against .*nope.py: no such file"):
        update_cost.compare(tmp_path / "nope.py", blocks=1)
