"""benchmark/authors_nystrom.py: their layout of the Nystrom rows against a written-out reading of JAX's
ravel_pytree, and the measurement leaves the update it measures unchanged."""

import pytest
import torch
import torch.nn as nn
from conftest import TINY
from scripts import read_scalars

from benchmark import authors_nystrom
from benchmark.in_process import load_script, run_main


def test_their_rows_follow_ravel_pytree_on_a_two_layer_critic():
    """torch's flat order: W0 (3, 2) at 0-5, b0 at 6-8, W1 (1, 3) at 9-11, b1 at 12. Their Flax pytree, keys sorted:
    Dense_0 {bias (3,), kernel (2, 3)}, Dense_1 {bias (1,), kernel (3, 1)}, kernel[i, o] = W[o, i]."""
    critic = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    leaves = [[6, 7, 8], [0, 2, 4, 1, 3, 5], [12], [9, 10, 11]]  # each leaf's entries, row-major, as torch indices
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(13, 13, generator=gen, dtype=torch.float64)
    hessian, coords = a + a.T, torch.tensor([0, 7, 12])
    flat = []  # jacrev: a (k, *leaf.shape) block per leaf, block[j] = d grad[S_j] / d leaf; ravel_pytree: the blocks
    for leaf in leaves:
        flat += [hessian[s, t] for s in coords for t in leaf]
    jax_order = sum(leaves, [])
    rows, s = authors_nystrom.their_rows(hessian[coords], coords, critic)
    assert torch.equal(rows, torch.stack(flat).view(3, 13))  # reshape(rank, -1)
    assert s.tolist() == [jax_order.index(c) for c in coords.tolist()]
    assert not torch.equal(rows, hessian[coords][:, jax_order])  # not H[S, :]: its rows mix pieces of several rows


def test_the_measurement_leaves_the_update_unchanged(tmp_path):
    records, argv = [], TINY["blpo_continuous_authors"].argv()
    measured = read_scalars(run_main(authors_nystrom.measured_script(records), argv, tmp_path / "measured"))
    plain = read_scalars(run_main(load_script("blpo_continuous_authors"), argv, tmp_path / "plain"))
    measured.pop("charts/SPS"), plain.pop("charts/SPS")
    assert measured == plain
    assert len(records) == 2 * 2 * 3  # iterations x epochs x envs
    for record in records:
        assert record["x_gap"] > 0 and -1 <= record["x_cos"] <= 1 and record["h_gap"] >= 0
    assert any(r["x_cos"] < 1 - 1e-9 for r in records)  # their rows do move x
    assert pytest.approx(1, abs=0.1) == sum(r["x_cos"] for r in records) / len(records)
