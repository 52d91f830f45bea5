"""Every mathematical piece of BLPO against an exact computation on a problem small enough to solve densely.

Parametrized over both BLPO scripts, so their copies of the helpers cannot drift apart.
"""

import math

import pytest
import torch
import torch.nn as nn


def random_symmetric(d, generator):
    a = torch.randn(d, d, generator=generator)
    return (a + a.T) / 2


def tiny_critic(obs_dim=3, hidden=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def critic_loss_fn(critic_fn, obs, returns):
    """L(w) = mean_i (V_w(s_i) - G_i)^2, the critic's minibatch loss."""
    return lambda w: ((critic_fn(w, obs) - returns) ** 2).mean()


# --- IHVP solvers -------------------------------------------------------------------------------


def psd_low_rank(d, r, gen):
    """A PSD matrix with r large eigenvalues and d - r tiny ones."""
    u = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    spectrum = torch.cat([torch.logspace(2, 1, r), 1e-3 * torch.rand(d - r, generator=gen)])
    return u @ torch.diag(spectrum) @ u.T


def relative_error(x, exact):
    return ((x - exact).norm() / exact.norm()).item()


def test_nystrom_full_rank_equals_dense_solve(blpo):
    """The paper's Woodbury form: with k = d, H_nys = H and (H + rho I) x = v is solved exactly, indefinite H too."""
    gen = torch.Generator().manual_seed(0)
    d, rho = 12, 0.7
    h = random_symmetric(d, gen) + 3 * torch.eye(d)
    v = torch.randn(d, generator=gen)
    coords = torch.randperm(d, generator=gen)
    x = blpo.nystrom_ihvp(h[coords], coords, v, rho)
    torch.testing.assert_close(x, torch.linalg.solve(h + rho * torch.eye(d), v), rtol=1e-9, atol=1e-10)


def test_nystrom_error_shrinks_with_rank(blpo):
    """On a low-rank-plus-noise PSD Hessian the IHVP error falls as k sampled coordinates grow and vanishes at
    k = d."""
    gen = torch.Generator().manual_seed(1)
    d, rho = 40, 0.1
    h = psd_low_rank(d, 6, gen)
    v = torch.randn(d, generator=gen)
    exact = torch.linalg.solve(h + rho * torch.eye(d), v)

    def solve(k):
        coords = torch.randperm(d, generator=gen)[:k]
        return blpo.nystrom_ihvp(h[coords], coords, v, rho)

    def mean_error(k, draws=30):
        return sum(relative_error(solve(k), exact) for _ in range(draws)) / draws

    errors = [mean_error(k) for k in (2, 4, 8, 16, 32)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False)), errors
    assert mean_error(d, draws=1) < 1e-8


def test_nystrom_singular_system_gives_nan(blpo):
    """A singular rho M + C C^T is reported as non-finite, for the caller's fallback."""
    rows = torch.zeros(2, 5)
    x = blpo.nystrom_ihvp(rows, torch.tensor([0, 1]), torch.ones(5), 1.0)
    assert torch.isnan(x).all()


def test_cg_solves_the_regularized_system(blpo):
    """d iterations of CG solve a d-dimensional SPD system; a zero right-hand side gives x = 0, not 0 / 0."""
    gen = torch.Generator().manual_seed(2)
    d, rho = 10, 0.3
    a = torch.randn(d, d, generator=gen)
    h = a @ a.T
    v = torch.randn(d, generator=gen)
    x = blpo.cg_ihvp(lambda p: h @ p, v, rho, d)
    torch.testing.assert_close(x, torch.linalg.solve(h + rho * torch.eye(d), v), rtol=1e-6, atol=1e-8)
    assert torch.equal(blpo.cg_ihvp(lambda p: h @ p, torch.zeros(d), rho, d), torch.zeros(d))


def test_cg_reports_an_indefinite_system_as_nan(blpo):
    """H + rho I with a negative eigenvalue along the first search direction: CG's step is undefined, NaN."""
    h = torch.diag(torch.tensor([-3.0, 1.0, 2.0]))
    x = blpo.cg_ihvp(lambda p: h @ p, torch.tensor([1.0, 0.0, 0.0]), 1.0, 3)
    assert torch.isnan(x).all()


def test_exact_ihvp_dense_and_by_cg(blpo):
    """The reference solve: dense for small d; above the limit, CG to a 1e-10 relative residual."""
    gen = torch.Generator().manual_seed(4)
    d, rho = 30, 2.0
    a = torch.randn(d, d, generator=gen)
    h = a @ a.T / d
    v = torch.randn(d, generator=gen)
    exact = torch.linalg.solve(h + rho * torch.eye(d), v)
    torch.testing.assert_close(blpo.exact_ihvp(lambda u: u @ h, v, rho), exact, rtol=1e-12, atol=1e-12)
    assert relative_error(blpo.exact_ihvp(lambda u: u @ h, v, rho, max_dense_dim=10), exact) < 1e-9


class ZeroInputProblem:
    """A 3-8-1 tanh critic on states whose first input is always 0: the first-layer weights of that input have
    all-zero Hessian rows, as the always-zero observations of InvertedDoublePendulum-v4 and Reacher-v4 give."""

    def __init__(self, blpo, rho):
        gen = torch.Generator().manual_seed(5)
        torch.manual_seed(5)
        critic = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        critic_fn = blpo.functional_critic(critic)
        obs, returns = torch.randn(16, 3, generator=gen), torch.randn(16, generator=gen)
        obs[:, 0] = 0.0
        self.w = blpo.flat(critic.parameters()).detach()
        self.hvp = blpo.squared_error_hvp(critic, self.w, obs, returns)
        self.v = torch.randn(self.w.numel(), generator=gen)
        self.rho = rho
        hessian = torch.autograd.functional.hessian(critic_loss_fn(critic_fn, obs, returns), self.w.detach())
        self.zero_rows = torch.nonzero(hessian.abs().sum(1) == 0).squeeze(1)
        self.exact = torch.linalg.solve(hessian + rho * torch.eye(len(hessian)), self.v)


@pytest.mark.parametrize("rho", [50.0, 1.0])
def test_zero_hessian_rows_break_only_the_papers_nystrom(blpo, rho):
    """Five coordinates that include a zero Hessian row: the paper's exact core is singular (NaN, for the caller's
    Gauss-Newton fallback); the default solver (CG) stays finite and close to the exact x. Measured relative errors
    at rho = 50 / 1: CG 4e-11 / 0.002."""
    problem = ZeroInputProblem(blpo, rho)
    assert len(problem.zero_rows) == 8  # the 8 weights of the zero input
    d = problem.w.numel()
    coords = torch.cat([problem.zero_rows[:1], torch.tensor([9, 20, 30, 40])])
    rows = blpo.hessian_rows(problem.hvp, coords, d)
    assert torch.isnan(blpo.nystrom_ihvp(rows, coords, problem.v, rho)).all()
    x = blpo.cg_ihvp(problem.hvp, problem.v, rho, 5)
    assert torch.isfinite(x).all() and relative_error(x, problem.exact) < (1e-4 if rho == 50.0 else 0.1)


# --- Hessian rows -------------------------------------------------------------------------------


def test_hessian_rows_match_full_hessian(blpo):
    """The batched unit-vector products equal the matching rows of the full critic-loss Hessian."""
    critic = tiny_critic()
    w = blpo.flat(critic.parameters()).detach()
    obs, returns = torch.randn(9, 3), torch.randn(9)
    full = torch.autograd.functional.hessian(critic_loss_fn(blpo.functional_critic(critic), obs, returns), w)
    coords = torch.tensor([0, 7, 3, w.numel() - 1])
    hvp = blpo.squared_error_hvp(critic, w, obs, returns)
    torch.testing.assert_close(blpo.hessian_rows(hvp, coords, w.numel()), full[coords])


def test_squared_error_hvp_is_the_full_hessian_times_u(blpo):
    """H u in closed form against the Hessian of L(w) = mean (V_w(s) - G)^2 by autograd, in float64, for a critic of
    two hidden layers as the scripts' and for a linear one; one vector and a batch of them."""
    torch.manual_seed(2)
    for critic in [
        nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1)).double(),
        nn.Sequential(nn.Linear(3, 1)).double(),
    ]:
        w = blpo.flat(critic.parameters()).detach()
        obs, returns = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
        full = torch.autograd.functional.hessian(critic_loss_fn(blpo.functional_critic(critic), obs, returns), w)
        hvp = blpo.squared_error_hvp(critic, w, obs, returns)
        u = torch.randn(4, w.numel(), dtype=torch.float64)
        torch.testing.assert_close(hvp(u[0]), full @ u[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(hvp(u), u @ full, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="Linear and Tanh layers only"):
        blpo.squared_error_hvp(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)), w, obs, returns)


def test_functional_critic_matches_module(blpo):
    critic = tiny_critic()
    obs = torch.randn(5, 3)
    w = blpo.flat(critic.parameters()).detach()
    torch.testing.assert_close(blpo.functional_critic(critic)(w, obs), critic(obs).squeeze(-1))


def test_functional_critic_jvp_matches_autograd(blpo):
    """critic_fn(w, obs, x) = (V_w(obs), grad_w V_w(obs) . x), against torch.func.jvp of the module itself, for a
    critic of two hidden layers as the scripts' (Linear, Tanh, Linear, Tanh, Linear); other layers are refused."""
    torch.manual_seed(1)
    critic = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    obs, names = torch.randn(7, 3), [name for name, _ in critic.named_parameters()]
    w, x = blpo.flat(critic.parameters()).detach(), torch.randn(sum(p.numel() for p in critic.parameters()))
    split = [p.numel() for p in critic.parameters()]

    def module_values(flat_w):
        params = {n: t.view_as(p) for n, t, p in zip(names, flat_w.split(split), critic.parameters())}
        return torch.func.functional_call(critic, params, (obs,)).squeeze(-1)

    values, u = blpo.functional_critic(critic)(w, obs, x)
    expected_values, expected_u = torch.func.jvp(module_values, (w,), (x,))
    torch.testing.assert_close(values, expected_values)
    torch.testing.assert_close(u, expected_u)
    with pytest.raises(TypeError, match="Linear and Tanh layers only"):
        blpo.functional_critic(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))
    with pytest.raises(TypeError, match="with biases"):  # its flat weights would be cut at the wrong places
        blpo.functional_critic(nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 1)))


# --- Differentiable GAE -------------------------------------------------------------------------


def rollout_with_episode_ends(num_steps=7, num_envs=3, seed=3):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(num_steps, num_envs, generator=gen)
    dones = torch.zeros(num_steps, num_envs)
    dones[2, 0] = dones[5, 0] = dones[1, 1] = dones[6, 2] = 1.0  # obs[t] starts a new episode
    next_done = torch.tensor([0.0, 1.0, 0.0])
    return rewards, dones, next_done


def test_differentiable_gae_equals_loop(blpo):
    """D delta reproduces the plain reverse loop, episode ends and the bootstrap included."""
    gamma, lam = 0.97, 0.9
    rewards, dones, next_done = rollout_with_episode_ends()
    gen = torch.Generator().manual_seed(4)
    values, next_value = torch.randn(7, 3, generator=gen), torch.randn(3, generator=gen)
    expected, _ = blpo.compute_gae(rewards, values, dones, next_value, next_done, gamma, lam)
    discount = blpo.gae_discount_matrix(dones, next_done, gamma, lam)
    deltas = blpo.td_errors(torch.cat([values, next_value[None]]), rewards, dones, next_done, gamma)
    advantages = torch.einsum("ets,se->te", discount, deltas)
    torch.testing.assert_close(advantages, expected)


def test_differentiable_gae_gradient_matches_finite_differences(blpo):
    """d A(w) / d w through the critic, checked by finite differences."""
    gamma, lam = 0.99, 0.95
    rewards, dones, next_done = rollout_with_episode_ends()
    critic = tiny_critic()
    critic_fn = blpo.functional_critic(critic)
    all_obs = torch.randn(8 * 3, 3)
    discount = blpo.gae_discount_matrix(dones, next_done, gamma, lam)

    def advantages(w):
        all_values = critic_fn(w, all_obs).view(8, 3)
        deltas = blpo.td_errors(all_values, rewards, dones, next_done, gamma)
        return torch.einsum("ets,se->te", discount, deltas)

    w = blpo.flat(critic.parameters()).detach().requires_grad_()
    assert torch.autograd.gradcheck(advantages, (w,), eps=1e-6, atol=1e-7)


def test_anchored_advantages_keep_rollout_values_and_critic_gradient(blpo):
    """A_rollout + A(w) - A(w_t): the rollout's values at w_t, and exactly A(w)'s derivative in w there."""
    critic = tiny_critic()
    critic_fn, obs = blpo.functional_critic(critic), torch.randn(6, 3)
    rollout_advantages, weights = torch.randn(6), torch.randn(6)
    w = blpo.flat(critic.parameters()).detach().requires_grad_()
    advantages_w = critic_fn(w, obs) ** 2  # any differentiable A(w)
    anchored = blpo.anchored_advantages(rollout_advantages, advantages_w)
    assert torch.equal(anchored.detach(), rollout_advantages)
    (grad_anchored,) = torch.autograd.grad(weights @ anchored, w, retain_graph=True)
    (grad_critic,) = torch.autograd.grad(weights @ advantages_w, w)
    torch.testing.assert_close(grad_anchored, grad_critic, rtol=0, atol=0)


# --- Mixed term ---------------------------------------------------------------------------------


def test_mixed_term_matches_bandit_closed_form(blpo):
    """One-state bandit, V_w = w: d/dtheta dL/dw = -2 d/dtheta E_pi[R]; the score-function estimate must
    match it in sign and size."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    reward = torch.tensor([1.0, -0.5, 2.0])
    w = torch.tensor(0.4)
    probs = torch.softmax(logits, 0)
    closed_form = -2 * torch.autograd.grad(probs @ reward, logits)[0]

    actions = torch.multinomial(probs.detach(), 400_000, replacement=True, generator=gen)
    logprob = torch.log_softmax(logits, 0)[actions]
    ratio = (logprob - logprob.detach()).exp()

    def critic_fn(w, obs, x):  # V_w(s) = w at the one state, so u_i = dV/dw x = x
        return w.expand(len(obs)), x.expand(len(obs))

    c = blpo.mixed_term(torch.tensor(1.0), ratio, critic_fn, w, actions, reward[actions], [logits])
    torch.testing.assert_close(c, closed_form, rtol=0.03, atol=0.01)
    assert torch.dot(c, closed_form) > 0.99 * c.norm() * closed_form.norm()


# --- Bound and fallback (the whole hypergradient, as wired, is in test_blpo_update.py) ---------------


def test_bound_caps_the_correction(blpo):
    """h = g - c below the bound; above it h = g - beta ||g|| c / ||c||; a non-finite c falls back to h = g."""
    g, c = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0])
    h, scale = blpo.bounded_hypergradient(g, c, 1.0)
    assert torch.equal(h, g - c) and scale == 1.0
    h, scale = blpo.bounded_hypergradient(g, 10 * c, 0.1)
    torch.testing.assert_close(h, g - 0.5 * c)
    assert scale == pytest.approx(0.05)
    h, scale = blpo.bounded_hypergradient(g, torch.tensor([float("nan"), 0.0]), 1.0)
    assert torch.equal(h, g) and math.isnan(scale)


def test_stats_count_fallbacks_and_average_the_rest(blpo):
    stats = blpo.HypergradStats()
    g = torch.tensor([1.0, 0.0])
    stats.add(g, torch.tensor([float("nan"), 0.0]), math.nan)
    stats.add(g, torch.tensor([0.5, 0.0]), 1.0)
    stats.add(g, torch.tensor([0.0, 2.0]), 0.5)
    stats.add(g, torch.tensor([1.0, 1.0]), 1.0, gauss_newton=True, c_exact=torch.tensor([1.0, 0.0]))
    assert stats.updates == 4 and stats.fallbacks == 1 and stats.gauss_newton == 1
    means = stats.pop_means()
    assert means["correction_ratio"] == pytest.approx((0.5 + 2 + 2**0.5) / 3)
    assert means["cos_correction_direct"] == pytest.approx((1 + 0 + 2**-0.5) / 3)
    assert means["bound_active_frac"] == pytest.approx(1 / 3)
    assert means["ihvp_error"] == pytest.approx(1.0) and means["ihvp_cos"] == pytest.approx(2**-0.5)
    assert stats.pop_means() == {"nonfinite_fallbacks": 1, "gauss_newton_fallbacks": 1}


# --- The Gauss-Newton IHVP, every solver's fallback where H + rho I is indefinite ------------------------------


def per_sample_jacobian(critic_fn, w, obs):
    """J row by row, one backward pass per state: independent of the script's batched jacrev."""
    w = w.detach().requires_grad_()
    return torch.stack([torch.autograd.grad(critic_fn(w, obs[i : i + 1]).sum(), w)[0] for i in range(len(obs))])


def test_gauss_newton_ihvp_is_the_dense_solve_of_the_gauss_newton_system(blpo):
    """x = (G + rho I)^-1 v with G = (2/B) J^T J, against a dense solve with J built row by row; for a linear critic,
    where G is the whole Hessian, against exact_ihvp."""
    gen = torch.Generator().manual_seed(3)
    obs, v = torch.randn(6, 3, generator=gen), torch.randn(21, generator=gen)
    critic_fn = blpo.functional_critic(tiny_critic())
    w = blpo.flat(tiny_critic().parameters())
    jac = blpo.critic_jacobian(critic_fn, w, obs)
    j = per_sample_jacobian(critic_fn, w, obs)
    torch.testing.assert_close(jac, j)
    dense = torch.linalg.solve(2 / 6 * j.T @ j + 0.3 * torch.eye(21), v)
    torch.testing.assert_close(blpo.gauss_newton_ihvp(jac, v, 0.3), dense)
    u = torch.randn(2, 21, generator=gen)
    torch.testing.assert_close(blpo.gauss_newton_hvp(jac)(u), u @ (2 / 6 * j.T @ j))
    torch.testing.assert_close(blpo.gauss_newton_hvp(jac)(u[0]), u[0] @ (2 / 6 * j.T @ j))

    linear = nn.Sequential(nn.Linear(3, 1))
    linear_fn, w_lin = blpo.functional_critic(linear), blpo.flat(linear.parameters())
    returns = torch.randn(6, generator=gen)
    hvp = blpo.squared_error_hvp(linear, w_lin.detach(), obs, returns)
    torch.testing.assert_close(
        blpo.gauss_newton_ihvp(blpo.critic_jacobian(linear_fn, w_lin, obs), v[:4], 0.3),
        blpo.exact_ihvp(hvp, v[:4], 0.3),
    )


def test_cosine_is_right_for_vectors_of_any_size(blpo):
    """A correction a billion times smaller than the gradient still gets its true cosine; a zero vector gets 0."""
    a, b = torch.tensor([3.0, 4.0], dtype=torch.float32), torch.tensor([4.0, 3.0], dtype=torch.float32)
    assert blpo.cosine(a * 1e-10, b * 1e-9) == pytest.approx(24 / 25, rel=1e-6)
    assert blpo.cosine(a * 1e10, -b) == pytest.approx(-24 / 25, rel=1e-6)
    assert blpo.cosine(a, torch.zeros(2)) == 0.0
