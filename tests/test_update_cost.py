"""benchmark/update_cost.py --against: two checkouts' BLPO updates timed in turn in one process."""

import re

import pytest
from conftest import ROOT

from benchmark import update_cost


def test_against_times_both_updates_and_their_ratio(capsys):
    update_cost.compare(ROOT / "blpo_continuous.py", blocks=2)
    out = capsys.readouterr().out
    this, other = map(float, re.search(r"this checkout ([\d.]+) ms, .* ([\d.]+) ms per update", out).groups())
    ratio, low, high = map(float, re.search(r"median ([\d.]+) \(range ([\d.]+)-([\d.]+)\)", out).groups())
    assert this > 0 and other > 0 and low <= ratio <= high


def test_against_a_missing_file_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --against .*nope.py: no such file"):
        update_cost.compare(tmp_path / "nope.py", blocks=1)
