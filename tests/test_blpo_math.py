"""Every mathematical piece of BLPO against an exact computation on a problem small enough to solve densely.

Parametrized over both BLPO scripts, so their copies of the helpers cannot drift apart.
"""

import importlib
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

SCRIPTS = ["blpo_discrete", "blpo_continuous"]


@pytest.fixture(params=SCRIPTS)
def blpo(request):
    return importlib.import_module(request.param)


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def random_symmetric(d, generator):
    a = torch.randn(d, d, generator=generator)
    return (a + a.T) / 2


def tiny_critic(obs_dim=3, hidden=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def critic_loss_fn(critic_fn, obs, returns):
    """L(w) = mean_i (V_w(s_i) - G_i)^2, the critic's minibatch loss."""
    return lambda w: ((critic_fn(w, obs) - returns) ** 2).mean()


def blpo_args(**overrides):
    args = dict(
        ihvp="nystrom",
        nystrom_rank=5,
        nystrom_rho=0.5,
        hypergrad_bound=math.inf,
        flip_mixed_sign=False,
    )
    args.update(overrides)
    return SimpleNamespace(**args)


# --- Woodbury / Nystrom --------------------------------------------------------------------------


def test_nystrom_full_rank_equals_dense_solve(blpo):
    """With k = d, H_nys = H and the Woodbury formula solves (H + rho I) x = v exactly."""
    gen = torch.Generator().manual_seed(0)
    d, rho = 12, 0.7
    h = random_symmetric(d, gen) + 3 * torch.eye(d)  # invertible, indefinite is fine too
    v = torch.randn(d, generator=gen)
    coords = torch.randperm(d, generator=gen)
    x = blpo.nystrom_ihvp(h[coords], coords, v, rho)
    expected = torch.linalg.solve(h + rho * torch.eye(d), v)
    torch.testing.assert_close(x, expected, rtol=1e-9, atol=1e-10)


def test_nystrom_error_shrinks_with_rank(blpo):
    """On a low-rank-plus-noise PSD Hessian, the IHVP error falls as k grows and vanishes at k = d."""
    gen = torch.Generator().manual_seed(1)
    d, r, rho = 40, 6, 0.1
    u = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    spectrum = torch.cat([torch.logspace(2, 1, r), 1e-3 * torch.rand(d - r, generator=gen)])
    h = u @ torch.diag(spectrum) @ u.T
    v = torch.randn(d, generator=gen)
    exact = torch.linalg.solve(h + rho * torch.eye(d), v)

    def mean_error(k, draws=30):
        errors = []
        for _ in range(draws):
            coords = torch.randperm(d, generator=gen)[:k]
            errors.append(((blpo.nystrom_ihvp(h[coords], coords, v, rho) - exact).norm() / exact.norm()).item())
        return sum(errors) / draws

    errors = [mean_error(k) for k in (2, 4, 8, 16, 32)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False)), errors
    assert mean_error(d, draws=1) < 1e-8


def test_nystrom_singular_system_gives_nan(blpo):
    """A singular rho M + C C^T is reported as non-finite, for the caller's fallback."""
    rows = torch.zeros(2, 5)
    x = blpo.nystrom_ihvp(rows, torch.tensor([0, 1]), torch.ones(5), 1.0)
    assert torch.isnan(x).all()


def test_cg_solves_the_regularized_system(blpo):
    """d iterations of CG solve a d-dimensional SPD system."""
    gen = torch.Generator().manual_seed(2)
    d, rho = 10, 0.3
    a = torch.randn(d, d, generator=gen)
    h = a @ a.T
    v = torch.randn(d, generator=gen)
    x = blpo.cg_ihvp(lambda p: h @ p, v, rho, d)
    torch.testing.assert_close(x, torch.linalg.solve(h + rho * torch.eye(d), v), rtol=1e-6, atol=1e-8)


# --- Hessian rows -------------------------------------------------------------------------------


def test_hessian_rows_match_full_hessian(blpo):
    """The batched unit-vector products equal the matching rows of the full critic-loss Hessian."""
    critic = tiny_critic()
    critic_fn = blpo.functional_critic(critic)
    w = blpo.flat(critic.parameters()).detach()
    obs, returns = torch.randn(9, 3), torch.randn(9)
    loss_fn = critic_loss_fn(critic_fn, obs, returns)
    full = torch.autograd.functional.hessian(loss_fn, w)
    coords = torch.tensor([0, 7, 3, w.numel() - 1])
    w_leaf = w.clone().requires_grad_()
    hvp = blpo.make_hvp(loss_fn(w_leaf), w_leaf)
    torch.testing.assert_close(blpo.hessian_rows(hvp, coords, w.numel()), full[coords])
    u = torch.randn(w.numel())
    torch.testing.assert_close(hvp(u), full @ u)


def test_functional_critic_matches_module(blpo):
    critic = tiny_critic()
    obs = torch.randn(5, 3)
    w = blpo.flat(critic.parameters()).detach()
    torch.testing.assert_close(blpo.functional_critic(critic)(w, obs), critic(obs).squeeze(-1))


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
    deltas = blpo.td_errors(values, next_value, rewards, dones, next_done, gamma)
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
        deltas = blpo.td_errors(all_values[:-1], all_values[-1], rewards, dones, next_done, gamma)
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
    td_error = reward[actions] - w  # delta_i = G_i - V_w
    critic_jvp = torch.ones_like(td_error)  # u_i = dV/dw * x with x = 1
    c = blpo.mixed_term(ratio, td_error, critic_jvp, [logits])
    torch.testing.assert_close(c, closed_form, rtol=0.03, atol=0.01)
    assert torch.dot(c, closed_form) > 0.99 * c.norm() * closed_form.norm()


# --- Whole hypergradient ------------------------------------------------------------------------


class TinyProblem:
    """A rollout of 6 steps x 2 envs, a linear softmax actor and a 3-4-1 tanh critic: l(theta, w) is the
    script's clipped surrogate with advantages A(w) recomputed by differentiable GAE."""

    def __init__(self, blpo, seed=6):
        gen = torch.Generator().manual_seed(seed)
        self.blpo = blpo
        self.num_steps, self.num_envs, self.clip = 6, 2, 0.2
        self.obs = torch.randn(self.num_steps * self.num_envs, 3, generator=gen)
        self.all_obs = torch.cat([self.obs, torch.randn(self.num_envs, 3, generator=gen)])
        self.rewards = torch.randn(self.num_steps, self.num_envs, generator=gen)
        self.dones = torch.zeros(self.num_steps, self.num_envs)
        self.dones[3, 0] = 1.0
        self.next_done = torch.tensor([0.0, 1.0])
        self.discount = blpo.gae_discount_matrix(self.dones, self.next_done, 0.99, 0.95)
        self.actions = torch.randint(0, 2, (self.num_steps * self.num_envs,), generator=gen)
        self.returns = torch.randn(self.num_steps * self.num_envs, generator=gen)
        torch.manual_seed(seed)
        self.actor = nn.Linear(3, 2)
        self.critic = tiny_critic(seed=seed)
        self.critic_fn = blpo.functional_critic(self.critic)
        self.old_logprob = self.logprob(blpo.flat(self.actor.parameters()).detach()).detach()
        with torch.no_grad():  # move the actor off the rollout policy so ratios and clipping are not trivial
            for p in self.actor.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
        self.theta = blpo.flat(self.actor.parameters()).detach()
        self.w = blpo.flat(self.critic.parameters()).detach()

    def logprob(self, theta):
        weight, bias = theta[:6].view(2, 3), theta[6:]
        return torch.log_softmax(self.obs @ weight.T + bias, -1).gather(1, self.actions[:, None]).squeeze(1)

    def ratio(self, theta):
        return (self.logprob(theta) - self.old_logprob).exp()

    def actor_loss(self, theta, w):
        all_values = self.critic_fn(w, self.all_obs).view(self.num_steps + 1, self.num_envs)
        deltas = self.blpo.td_errors(all_values[:-1], all_values[-1], self.rewards, self.dones, self.next_done, 0.99)
        advantages = torch.einsum("ets,se->te", self.discount, deltas).reshape(-1)
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        ratio = self.ratio(theta)
        return torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - self.clip, 1 + self.clip)).mean()

    def score_critic_loss(self, theta, w):
        """L(theta, w) = mean_i r_i(theta) (V_w(s_i) - G_i)^2, the critic loss's dependence on the policy."""
        return (self.ratio(theta) * (self.critic_fn(w, self.obs) - self.returns) ** 2).mean()

    def dense_hypergradient(self, rho):
        """grad_theta l - (d^2 L / d theta d w) (d^2 L / d w^2 + rho I)^-1 grad_w l with full matrices."""
        g, v = torch.autograd.grad(
            self.actor_loss(self.theta.requires_grad_(), self.w.requires_grad_()), (self.theta, self.w)
        )
        hessian = torch.autograd.functional.hessian(
            critic_loss_fn(self.critic_fn, self.obs, self.returns), self.w.detach()
        )
        mixed = torch.autograd.functional.jacobian(
            lambda theta: torch.func.grad(lambda w: self.score_critic_loss(theta, w))(self.w.detach()),
            self.theta.detach(),
        )  # (d_w, d_theta)
        x = torch.linalg.solve(hessian + rho * torch.eye(len(hessian)), v)
        return g - mixed.T @ x, g

    def script_hypergradient(self, args, poison_v=False):
        """The script's steps 3-5 on the same problem, fed as in its update loop; poison_v makes v NaN.
        Returns (g, h, c, x, bound_active, fell_back)."""
        theta = self.theta.detach().requires_grad_()
        w = self.w.detach().requires_grad_()
        ratio = self.ratio(theta)
        g, v = torch.autograd.grad(self.actor_loss(theta, w), (theta, w), retain_graph=True)
        if poison_v:
            v = torch.full_like(v, float("nan"))
        hvp = self.blpo.make_hvp(critic_loss_fn(self.critic_fn, self.obs, self.returns)(w), w)
        generator = torch.Generator().manual_seed(0)
        return g, *self.blpo.hypergradient(
            g, v, hvp, ratio, [theta], self.critic_fn, w, self.obs, self.returns, args, generator
        )


@pytest.mark.parametrize(("ihvp", "rho"), [("nystrom", 0.05), ("cg", 1.0)])
def test_hypergradient_matches_implicit_function_theorem(blpo, ihvp, rho):
    """k = d, bound off: the script's hypergradient equals the dense implicit-function-theorem formula.
    The critic-loss Hessian here is indefinite (smallest eigenvalue about -0.76): Nystrom's Woodbury solve is
    exact for any rho, CG needs rho large enough for H + rho I to be positive definite."""
    problem = TinyProblem(blpo)
    d = problem.w.numel()
    expected, g_dense = problem.dense_hypergradient(rho)
    g, h, c, x, bound_active, fell_back = problem.script_hypergradient(
        blpo_args(ihvp=ihvp, nystrom_rank=d, nystrom_rho=rho)
    )
    assert not bound_active and not fell_back
    torch.testing.assert_close(g, g_dense)
    assert (expected - g).norm() > 1e-3 * g.norm()  # the correction is far above the tolerance below
    torch.testing.assert_close(h, expected, rtol=1e-6, atol=1e-8)


def test_bound_caps_the_correction(blpo):
    """With the bound active, h = g - beta ||g|| c / ||c||."""
    problem = TinyProblem(blpo)
    beta = 0.01
    g, h, c, x, bound_active, fell_back = problem.script_hypergradient(
        blpo_args(nystrom_rank=problem.w.numel(), hypergrad_bound=beta, nystrom_rho=0.05)
    )
    assert bound_active and not fell_back
    torch.testing.assert_close(h, g - beta * g.norm() * c / c.norm())
    flipped = problem.script_hypergradient(
        blpo_args(nystrom_rank=problem.w.numel(), hypergrad_bound=beta, nystrom_rho=0.05, flip_mixed_sign=True)
    )
    torch.testing.assert_close(flipped[1], g + beta * g.norm() * c / c.norm())


def test_nonfinite_correction_falls_back_to_direct_gradient(blpo):
    """A forced non-finite correction: h = g, counted, and the actor's weights stay finite after a step."""
    problem = TinyProblem(blpo)
    g, h, c, x, bound_active, fell_back = problem.script_hypergradient(blpo_args(), poison_v=True)
    assert fell_back and not torch.isfinite(c).all()
    torch.testing.assert_close(h, g)

    stats = blpo.HypergradStats()
    stats.add(g, c, bound_active, fell_back)
    stats.add(g, g, False, False)
    assert stats.fallbacks == 1 and stats.pop_means()["cos_correction_direct"] == pytest.approx(1.0)

    params = list(problem.actor.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    blpo.set_grads(params, h)
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in params)
    assert not torch.equal(blpo.flat(params), problem.theta)


def test_ihvp_residual(blpo):
    """Zero for the exact solution of (H + rho I) x = v, one for x = 0."""
    gen = torch.Generator().manual_seed(7)
    h = random_symmetric(6, gen) + 4 * torch.eye(6)
    v = torch.randn(6, generator=gen)
    exact = torch.linalg.solve(h + 0.5 * torch.eye(6), v)
    assert blpo.ihvp_residual(lambda u: h @ u, exact, v, 0.5) < 1e-12
    assert blpo.ihvp_residual(lambda u: h @ u, torch.zeros(6), v, 0.5) == pytest.approx(1.0)
