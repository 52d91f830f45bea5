"""The BLPO update as the scripts wire it, against an independent computation of the same step.

`update_minibatch` is what the main loop calls once per minibatch. Here it runs on a small random rollout, with
plain SGD so that each parameter's change is its gradient times the learning rate, and the result is compared
with a reference written from the paper's definitions alone: K - 1 critic steps on PPO's value loss, then one
joint step whose actor gradient is h = g - (d^2 L / d theta d w) (H + rho I)^-1 grad_w l, with the Hessian and the
mixed term formed densely and A(w) recomputed by a plain GAE loop. Whole runs in-process then check what only the
main loop decides: the batch it builds, the generator it seeds, how often it calls the update.
"""

import copy
import inspect
import math
import re

import numpy as np
import pytest
import torch
from conftest import BLPO_SCRIPTS, ROOT, TINY
from scripts import read_scalars

from benchmark.in_process import load_script, run_main

NUM_STEPS, NUM_ENVS, OBS_DIM, NUM_ACTIONS = 12, 2, 3, 2
MB_INDS = np.array([0, 3, 4, 9, 13, 17, 22, 23])
LR_ACTOR, LR_CRITIC = 0.05, 0.1


def is_discrete(blpo) -> bool:
    return blpo.__name__.startswith("blpo_discrete")


def make_problem(blpo, seed=0):
    """(agent, batch): a random rollout of NUM_STEPS x NUM_ENVS with two episode ends, advantages far from mean 0
    and std 1, and old log-probabilities from a perturbed actor so that ratios leave the clip range."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    agent = blpo.Agent(OBS_DIM, NUM_ACTIONS)
    # a small critic keeps the dense Hessian cheap; the update treats any critic module alike
    agent.critic = torch.nn.Sequential(torch.nn.Linear(OBS_DIM, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    obs = torch.randn(NUM_STEPS, NUM_ENVS, OBS_DIM, generator=gen)
    next_obs = torch.randn(NUM_ENVS, OBS_DIM, generator=gen)
    if is_discrete(blpo):
        actions = torch.randint(0, NUM_ACTIONS, (NUM_STEPS, NUM_ENVS), generator=gen).double()
    else:
        actions = torch.randn(NUM_STEPS, NUM_ENVS, NUM_ACTIONS, generator=gen)
    old_agent = copy.deepcopy(agent)
    with torch.no_grad():
        for p in old_agent.actor_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        flat_actions = actions.reshape(-1) if is_discrete(blpo) else actions.reshape(-1, NUM_ACTIONS)
        logprobs = old_agent.get_action_and_value(obs.reshape(-1, OBS_DIM), flat_actions)[1]
    rewards = torch.randn(NUM_STEPS, NUM_ENVS, generator=gen)
    dones = torch.zeros(NUM_STEPS, NUM_ENVS)
    dones[5, 0] = dones[8, 1] = 1.0
    next_done = torch.tensor([0.0, 1.0])
    advantages = 3.0 * torch.randn(NUM_STEPS * NUM_ENVS, generator=gen) + 2.0
    batch = blpo.Batch(
        obs=obs.reshape(-1, OBS_DIM),
        actions=flat_actions,
        logprobs=logprobs,
        advantages=advantages,
        returns=2.0 * torch.randn(NUM_STEPS * NUM_ENVS, generator=gen),
        values=torch.randn(NUM_STEPS * NUM_ENVS, generator=gen),
        states=torch.cat([obs, next_obs[None]]),
        rewards=rewards,
        dones=dones,
        next_done=next_done,
        gae_matrix=blpo.gae_discount_matrix(dones, next_done, 0.99, 0.95),
    )
    return agent, batch


def update_args(blpo, **overrides):
    args = blpo.Args(
        nested_updates=3,
        ihvp="exact",
        ihvp_rho=2.0,
        hypergrad_bound=math.inf,
        max_grad_norm=math.inf,
        ent_coef=0.01,
        clip_vloss=True,
    )
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


def sgd(agent):
    """Plain SGD with the script's two parameter groups, so a step is exactly -lr * the gradient it applied."""
    return torch.optim.SGD(
        [
            {"params": agent.actor_parameters(), "lr": LR_ACTOR},
            {"params": list(agent.critic.parameters()), "lr": LR_CRITIC},
        ]
    )


def script_update(blpo, agent, batch, args, generator=None, stats=None):
    """One call of the script's update_minibatch on MB_INDS, recorded as the main loop records it; returns (losses,
    stats)."""
    stats = stats or blpo.HypergradStats()
    generator = generator or torch.Generator().manual_seed(0)
    critic_fn = blpo.functional_critic(agent.critic)
    check = stats.check_due(args.ihvp_check_every)
    losses, diag = blpo.update_minibatch(agent, sgd(agent), critic_fn, batch, MB_INDS, args, generator, check)
    if diag:
        stats.add(**diag)
    return losses, stats


# ---------------------------------------------------------------------------------------------------------------
# The reference, from the definitions alone
# ---------------------------------------------------------------------------------------------------------------


def plain_gae(rewards, values, dones, next_value, next_done, gamma, lam):
    """GAE by the reverse loop, differentiable in the values."""
    advantages, last = [], torch.zeros(rewards.shape[1])
    for t in reversed(range(rewards.shape[0])):
        next_nonterminal = 1.0 - (next_done if t == rewards.shape[0] - 1 else dones[t + 1])
        next_values = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_values * next_nonterminal - values[t]
        last = delta + gamma * lam * next_nonterminal * last
        advantages.insert(0, last)
    return torch.stack(advantages)


def clip_by_global_norm(grads, max_norm):
    total = torch.sqrt(sum((g**2).sum() for g in grads))
    scale = min(1.0, max_norm / (total.item() + 1e-6))
    return [g * scale for g in grads]


def reference_update(agent, batch, args, gauss_newton=None):
    """The bilevel update of the paper on MB_INDS, applied to `agent` with SGD; returns (pg_loss, v_loss, g, c) with
    c the correction before its size rule (None without the hypergradient). `gauss_newton` (default: with --ihvp
    gauss-newton) solves with the Hessian's Gauss-Newton part (2/B) J^T J, J built row by row."""
    gauss_newton = args.ihvp == "gauss-newton" if gauss_newton is None else gauss_newton
    mb = torch.as_tensor(MB_INDS)
    obs, returns, old_values = batch.obs[mb], batch.returns[mb], batch.values[mb]
    critic, actor = list(agent.critic.parameters()), agent.actor_parameters()
    names = [name for name, _ in agent.critic.named_parameters()]

    def value(params, x):
        return torch.func.functional_call(agent.critic, dict(zip(names, params)), (x,)).squeeze(-1)

    def ppo_value_loss(new_values):
        unclipped = (new_values - returns) ** 2
        if not args.clip_vloss:
            return 0.5 * unclipped.mean()
        clipped = (old_values + (new_values - old_values).clamp(-args.clip_coef, args.clip_coef) - returns) ** 2
        return 0.5 * torch.maximum(unclipped, clipped).mean()

    # K - 1 critic steps alone, each with the critic's gradient clipped on its own
    for _ in range(args.nested_updates - 1):
        grads = torch.autograd.grad(args.vf_coef * ppo_value_loss(value(critic, obs)), critic)
        with torch.no_grad():
            for p, grad in zip(critic, clip_by_global_norm(grads, args.max_grad_norm)):
                p -= LR_CRITIC * grad

    # the actor's loss at (theta, w): A(w) from a plain GAE loop over the critic's values of all the rollout's states
    w = [p.detach().clone().requires_grad_() for p in critic]
    all_values = value(w, batch.states.flatten(0, 1)).view(NUM_STEPS + 1, NUM_ENVS)
    a_w = plain_gae(batch.rewards, all_values[:-1], batch.dones, all_values[-1], batch.next_done, 0.99, 0.95)
    a_w = a_w.reshape(-1)[mb]
    advantages = batch.advantages[mb] + (a_w - a_w.detach()) if args.hypergrad else batch.advantages[mb]
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    _, newlogprob, entropy, newvalue = agent.get_action_and_value(obs, batch.actions[mb])
    ratio = torch.exp(newlogprob - batch.logprobs[mb])
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
    pg_loss = torch.maximum(unclipped, clipped).mean()
    v_loss = ppo_value_loss(newvalue)
    g = torch.cat(
        [t.reshape(-1) for t in torch.autograd.grad(pg_loss - args.ent_coef * entropy.mean(), actor, retain_graph=True)]
    )
    critic_grads = list(torch.autograd.grad(args.vf_coef * v_loss, critic, retain_graph=True))

    h, c = g, None
    if args.hypergrad:
        v = torch.cat([t.reshape(-1) for t in torch.autograd.grad(pg_loss, w)])
        w_flat = torch.cat([p.detach().reshape(-1) for p in critic])

        def unflatten(flat):
            return [t.view_as(p) for t, p in zip(flat.split([p.numel() for p in critic]), critic)]

        def critic_loss(flat):
            return ((value(unflatten(flat), obs) - returns) ** 2).mean()

        hessian = torch.func.hessian(critic_loss)(w_flat)
        if gauss_newton:
            w_gn = w_flat.clone().requires_grad_()
            rows = torch.stack(
                [torch.autograd.grad(value(unflatten(w_gn), obs[i : i + 1]).sum(), w_gn)[0] for i in range(len(obs))]
            )
            hessian = 2 / len(mb) * rows.T @ rows
        x = torch.linalg.solve(hessian + args.ihvp_rho * torch.eye(len(w_flat)), v)
        # c = grad_theta [ grad_w L(theta, w) . x ] with L(theta, w) = mean_i r_i(theta) (V_w(s_i) - G_i)^2
        w_var = w_flat.clone().requires_grad_()
        (grad_w,) = torch.autograd.grad(
            (ratio * (value(unflatten(w_var), obs) - returns) ** 2).mean(), w_var, create_graph=True
        )
        c = torch.cat([t.reshape(-1) for t in torch.autograd.grad(grad_w @ x, actor)])
        # the bound: ||c|| at most beta ||g||
        h = g - c * min(1.0, args.hypergrad_bound * g.norm() / c.norm())

    actor_grads = list(h.split([p.numel() for p in actor]))
    actor_grads = [grad.view_as(p) for grad, p in zip(actor_grads, actor)]
    by_param = {id(p): grad for p, grad in zip(critic + actor, critic_grads + actor_grads)}
    params = list(agent.parameters())
    grads = clip_by_global_norm([by_param[id(p)] for p in params], args.max_grad_norm)
    with torch.no_grad():
        for p, grad in zip(params, grads):
            p -= (LR_CRITIC if any(p is q for q in critic) else LR_ACTOR) * grad
    return pg_loss.item(), v_loss.item(), g, c


def assert_same_parameters(agent, expected, rtol=1e-7, atol=1e-10):
    for (name, p), q in zip(agent.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


UPDATE_CASES = {
    "K3-minibatch-stats": dict(),
    "K3-clipped-bounded": dict(max_grad_norm=0.3, hypergrad_bound=0.5),
    "K3-bounded-hard": dict(hypergrad_bound=0.01),
    "K1-clipped": dict(nested_updates=1, max_grad_norm=0.3),
    "K2-no-vloss-clip": dict(nested_updates=2, clip_vloss=False),
    "K4-no-hypergrad-clipped": dict(nested_updates=4, hypergrad=False, max_grad_norm=0.3),
}


@pytest.mark.parametrize("case", UPDATE_CASES)
def test_update_is_the_bilevel_step(blpo, case):
    """The parameters after update_minibatch equal the reference's, and so do the logged losses: this pins the
    gradient applied (h, not g or g + c), the Hessian's loss, states and weights, the mixed term's inputs, the
    clipped surrogate (max of the negated terms), the advantage normalization, the value loss, the number of
    critic steps, and the joint clip."""
    agent, batch = make_problem(blpo)
    args = update_args(blpo, **UPDATE_CASES[case])
    expected = copy.deepcopy(agent)
    losses, stats = script_update(blpo, agent, batch, args)
    pg_loss, v_loss, _, _ = reference_update(expected, batch, args)
    assert losses["policy_loss"] == pytest.approx(pg_loss, rel=1e-9)
    assert losses["value_loss"] == pytest.approx(v_loss, rel=1e-9)
    assert_same_parameters(agent, expected)
    if args.hypergrad:
        assert stats.updates == 1 and stats.fallbacks == 0


def test_the_correction_moves_the_actor(blpo):
    """The correction moves the actor a thousand times farther than the tolerance of the comparison above."""
    agent, batch = make_problem(blpo)
    direct = copy.deepcopy(agent)
    _, stats = script_update(blpo, agent, batch, update_args(blpo))
    script_update(blpo, direct, batch, update_args(blpo, hypergrad=False))
    assert stats.pop_means()["correction_ratio"] > 1e-3
    difference = max((p - q).abs().max().item() for p, q in zip(agent.actor_parameters(), direct.actor_parameters()))
    assert difference > 1e3 * (1e-10 + 1e-7 * max(p.abs().max().item() for p in agent.parameters()))


def test_bound_zero_update_equals_no_hypergrad(blpo):
    """beta = 0 scales the correction to zero: the update is the direct one bitwise; beta = 1.4 is not."""
    results = {}
    for name, overrides in {
        "bound0": dict(hypergrad_bound=0.0, ihvp="cg", ihvp_rho=50.0),
        "direct": dict(hypergrad=False),
        "default": dict(hypergrad_bound=1.4, ihvp="cg", ihvp_rho=50.0),
    }.items():
        agent, batch = make_problem(blpo)
        script_update(blpo, agent, batch, update_args(blpo, **overrides))
        results[name] = [p.detach() for p in agent.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(results["bound0"], results["direct"]))
    assert not all(torch.equal(p, q) for p, q in zip(results["default"], results["direct"]))


def test_nonfinite_correction_falls_back_to_the_direct_step(blpo, monkeypatch):
    """A correction that comes out NaN: the update applies g, counts the fallback, and the weights stay finite."""
    agent, batch = make_problem(blpo)
    direct = copy.deepcopy(agent)
    monkeypatch.setattr(blpo, "mixed_term", lambda x, *rest: torch.full_like(blpo.flat(rest[-1]), float("nan")))
    _, stats = script_update(blpo, agent, batch, update_args(blpo))
    script_update(blpo, direct, batch, update_args(blpo, hypergrad=False))
    assert stats.fallbacks == 1 and stats.updates == 1
    assert all(torch.isfinite(p).all() for p in agent.parameters())
    assert all(torch.equal(p, q) for p, q in zip(agent.parameters(), direct.parameters()))


def test_each_call_draws_fresh_coordinates_from_the_generator(blpo, monkeypatch):
    """Successive updates sample new Nystrom coordinates, and exactly the generator's next ones: neither frozen to
    the first draw nor reseeded on every call."""
    seen, rows = [], blpo.hessian_rows
    monkeypatch.setattr(blpo, "hessian_rows", lambda hvp, coords, dim: seen.append(coords) or rows(hvp, coords, dim))
    agent, batch = make_problem(blpo)
    generator, stats = torch.Generator().manual_seed(11), blpo.HypergradStats()
    for _ in range(3):
        script_update(blpo, agent, batch, update_args(blpo, ihvp="nystrom", ihvp_rank=4), generator, stats)
    dim = sum(p.numel() for p in agent.critic.parameters())
    twin = torch.Generator().manual_seed(11)
    expected = [torch.randperm(dim, generator=twin)[:4] for _ in range(3)]
    assert len(seen) == 3
    for got, want in zip(seen, expected):
        assert torch.equal(got, want)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


def test_ihvp_check_reports_the_solvers_error(blpo):
    """--ihvp-check-every: zero error and cosine one for the exact solver, a positive error for one CG step."""
    agent, batch = make_problem(blpo)
    _, stats = script_update(blpo, agent, batch, update_args(blpo, ihvp="exact", ihvp_check_every=1))
    means = stats.pop_means()
    assert means["ihvp_error"] == 0.0 and means["ihvp_cos"] == pytest.approx(1.0)
    agent, batch = make_problem(blpo)
    _, stats = script_update(blpo, agent, batch, update_args(blpo, ihvp="cg", ihvp_rank=1, ihvp_check_every=1))
    means = stats.pop_means()
    assert means["ihvp_error"] > 1e-3 and -1 <= means["ihvp_cos"] < 1
    agent, batch = make_problem(blpo)
    _, stats = script_update(blpo, agent, batch, update_args(blpo, ihvp="cg", ihvp_check_every=2))
    assert "ihvp_error" not in stats.pop_means()  # one update, checked only every second


def test_ihvp_check_leaves_the_update_alone(blpo):
    """The exact solve of --ihvp-check-every is a diagnostic: the parameters after the update are the same bits."""
    updated = []
    for every in (0, 1):
        agent, batch = make_problem(blpo)
        script_update(blpo, agent, batch, update_args(blpo, ihvp="cg", ihvp_rank=2, ihvp_check_every=every))
        updated.append([p.detach().clone() for p in agent.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*updated))
    initial = make_problem(blpo)[0].parameters()
    assert not all(torch.equal(a, b) for a, b in zip(updated[0], initial))  # and the update did move them


PAPER_STEPS = ["3a. Nested critic", "3b. g", "3c. IHVP", "3d. Mixed term", "3e. Bound", "3f. Step"]


def test_update_reads_in_the_papers_order(blpo):
    """update_minibatch's step comments are the paper's steps in order, and the BLPO helpers each step calls first
    are defined above update_minibatch, step by step in that order (the PPO code they share is left where it is, and
    the diagnostics after the bound are no step)."""
    source = inspect.getsource(blpo)
    ppo_names = set(re.findall(r"^def (\w+)", (ROOT / "ppo_continuous.py").read_text(), re.MULTILINE))
    defined = {name: line for line, name in enumerate(re.findall(r"^(?:def|class) (\w+)", source, re.MULTILINE))}
    update = inspect.getsource(blpo.update_minibatch)
    titles = re.findall(r"^ *# (3[a-f]\. [^:,]+)", update, re.MULTILINE)
    assert [t[: len(p)] for t, p in zip(titles, PAPER_STEPS)] == PAPER_STEPS and len(titles) == 6, titles
    parts = re.split(r"^ *# (3[a-f]\.|Diagnostics)", update, flags=re.MULTILINE)[1:]
    sections = [text for title, text in zip(parts[::2], parts[1::2]) if title != "Diagnostics"]
    seen, order = set(), []
    for section in sections:
        called = [n for n in re.findall(r"\b(\w+)\(", section) if n in defined and n not in ppo_names]
        order.append([defined[n] for n in dict.fromkeys(called) if n not in seen])
        seen.update(called)
    assert order[2] and order[3] and order[4], order  # the IHVP, the mixed term and the bound call helpers
    assert all(max(a) < min(b) for a, b in zip([o for o in order if o], [o for o in order if o][1:])), order
    assert max(max(o) for o in order if o) < defined["update_minibatch"]


# ---------------------------------------------------------------------------------------------------------------
# Whole runs, in-process: what the main loop decides
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(params=BLPO_SCRIPTS)
def script(request):
    return request.param


def test_run_builds_the_batch_and_calls_the_update_as_specified(script, tmp_path, monkeypatch):
    """Over a whole run: update_minibatch is called epochs x minibatches times per iteration with a partition of
    the batch; the batch's states are its observations plus the bootstrap states; its advantages are GAE's by the
    plain loop over its rewards, dones and values; the generator is the run's seeded one, drawn fresh."""
    module = load_script(script)
    calls, coordinates = [], []
    original_update, original_rows = module.update_minibatch, module.hessian_rows

    def recording_update(agent, optimizer, critic_fn, batch, mb_inds, args, generator, check):
        snapshot = type(batch)(*(None if t is None else t.clone() for t in batch))  # the storage is reused
        calls.append((snapshot, np.array(mb_inds), agent.get_value(batch.states[-1]).detach()))
        return original_update(agent, optimizer, critic_fn, batch, mb_inds, args, generator, check)

    def recording_rows(hvp, coords, dim):
        coordinates.append(coords)
        return original_rows(hvp, coords, dim)

    monkeypatch.setattr(module, "update_minibatch", recording_update)
    monkeypatch.setattr(module, "hessian_rows", recording_rows)
    run_main(module, TINY[script].argv("--ihvp", "nystrom", "--seed", "3"), tmp_path)

    iterations, epochs, minibatches = TINY[script].ITERATIONS, TINY[script].EPOCHS, TINY[script].MINIBATCHES
    assert len(calls) == iterations * epochs * minibatches
    for i in range(0, len(calls), minibatches):
        group = np.concatenate([inds for _, inds, _ in calls[i : i + minibatches]])
        assert sorted(group) == list(range(len(calls[i][0].obs)))  # each epoch visits every sample once
    for batch, _, next_value in (calls[0], calls[epochs * minibatches]):  # each iteration's first update
        num_envs = batch.states.shape[1]
        torch.testing.assert_close(batch.states[:-1].reshape(batch.obs.shape), batch.obs)
        values = batch.values.view(-1, num_envs)
        advantages = plain_gae(batch.rewards, values, batch.dones, next_value, batch.next_done, 0.99, 0.95)
        torch.testing.assert_close(batch.advantages, advantages.reshape(-1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch.returns, batch.advantages + batch.values)
        # the GAE matrix the update recomputes A(w) with gives the same advantages from the same values
        all_values = torch.cat([values, next_value.view(1, -1)])
        next_nonterminal = 1.0 - torch.cat([batch.dones[1:], batch.next_done[None]])
        deltas = batch.rewards + 0.99 * next_nonterminal * all_values[1:] - all_values[:-1]
        recomputed = torch.einsum("ets,se->te", batch.gae_matrix, deltas).reshape(-1)
        torch.testing.assert_close(recomputed, batch.advantages, rtol=1e-4, atol=1e-4)
    assert not torch.equal(calls[0][0].obs, calls[epochs * minibatches][0].obs)
    twin = torch.Generator().manual_seed(3)
    assert len(coordinates) == len(calls)
    dim = sum(p.numel() for p in module.agent.critic.parameters())
    for coords in coordinates:
        assert torch.equal(coords, torch.randperm(dim, generator=twin)[:5])


def test_run_takes_k_critic_steps_per_minibatch(script, tmp_path, monkeypatch):
    """Every optimizer step of a whole run: K per minibatch update, the last of each with the actor's gradient,
    both learning rates annealed together (1, then 1/2 of their initial values over two iterations), CleanRL's
    --learning-rate the actor's."""
    module = load_script(script)
    steps, rates = [], []
    adam = module.optim.Adam

    class CountingAdam(adam):
        def step(self, closure=None):
            steps.append(self.param_groups[0]["params"][0].grad is not None)
            rates.append(tuple(group["lr"] for group in self.param_groups))
            return super().step(closure)

    monkeypatch.setattr(module.optim, "Adam", CountingAdam)
    rate_flags = ["--learning-rate", "0.004", "--critic-lr", "0.002"]
    run_main(module, TINY[script].argv("--nested-updates", "3", *rate_flags), tmp_path)
    actor_group, actor = module.optimizer.param_groups[0]["params"], module.agent.actor_parameters()
    assert len(actor_group) == len(actor) and all(p is q for p, q in zip(actor_group, actor))
    updates = TINY[script].ITERATIONS * TINY[script].EPOCHS * TINY[script].MINIBATCHES
    assert len(steps) == 3 * updates
    assert steps == [False, False, True] * updates  # the actor's group has a gradient only at the joint step
    half = len(rates) // 2
    assert rates == [(0.004, 0.002)] * half + [(0.002, 0.001)] * half


def test_logged_fallback_counts_are_the_updates_that_fell_back(script, tmp_path, monkeypatch):
    """A whole run of 16 updates (8 per iteration) whose CG returns NaN on updates 2, 3, 5 and 11, and whose
    Gauss-Newton solve, which takes over there, also fails on 3 and 11, so that c is not finite and h = g there. The
    logged counters, cumulative per iteration, read gauss_newton_fallbacks [3, 4] and nonfinite_fallbacks [1, 2]."""
    module = load_script(script)
    cg_calls, gauss_newton_calls = [], []
    cg, gauss_newton = module.cg_ihvp, module.gauss_newton_ihvp

    def failing_cg(hvp, v, rho, iterations, tol=0.0):
        cg_calls.append(len(cg_calls) + 1)
        x = cg(hvp, v, rho, iterations, tol)
        return torch.full_like(x, math.nan) if cg_calls[-1] in (2, 3, 5, 11) else x

    def failing_gauss_newton(jac, v, rho):
        gauss_newton_calls.append(cg_calls[-1])
        x = gauss_newton(jac, v, rho)
        return torch.full_like(x, math.nan) if cg_calls[-1] in (3, 11) else x

    monkeypatch.setattr(module, "cg_ihvp", failing_cg)
    monkeypatch.setattr(module, "gauss_newton_ihvp", failing_gauss_newton)
    scalars = read_scalars(run_main(module, TINY[script].argv("--ihvp", "cg"), tmp_path))
    assert len(cg_calls) == 16 and gauss_newton_calls == [2, 3, 5, 11]
    assert [value for _, value in scalars["hypergrad/gauss_newton_fallbacks"]] == [3, 4]
    assert [value for _, value in scalars["hypergrad/nonfinite_fallbacks"]] == [1, 2]


def scalars_and_weights(run_dir):
    scalars = read_scalars(run_dir)
    weights = torch.load(next(run_dir.glob("*.pt")), weights_only=False)["agent"]
    return scalars, weights


def test_bound_zero_run_equals_no_hypergrad_run(script, tmp_path):
    """A whole run with beta = 0 logs the numbers of a --no-hypergrad run and ends with the same weights."""
    runs = {
        name: scalars_and_weights(
            run_main(load_script(script), TINY[script].argv(*flags, "--save-model"), tmp_path / name)
        )
        for name, flags in {"bound0": ["--hypergrad-bound", "0"], "direct": ["--no-hypergrad"]}.items()
    }
    (bound0, bound0_weights), (direct, direct_weights) = runs["bound0"], runs["direct"]
    for tag in direct:
        if tag != "charts/SPS":
            assert bound0[tag] == direct[tag], tag
    assert all(torch.equal(bound0_weights[key], tensor) for key, tensor in direct_weights.items())


def test_ppo_variant_is_ppo(tmp_path):
    """blpo_continuous.py --nested-updates 1 --no-hypergrad and ppo_continuous.py, same seed: every logged number
    (minibatch losses, returns, KL, clip fractions) and the final weights are the same."""
    argv = ["--env-id", "Hopper-v4", "--total-timesteps", "1024", "--num-steps", "512", "--seed", "5", "--save-model"]
    ppo_dir = run_main(load_script("ppo_continuous"), argv, tmp_path / "ppo")
    blpo_dir = run_main(
        load_script("blpo_continuous"), [*argv, "--nested-updates", "1", "--no-hypergrad"], tmp_path / "b"
    )
    (ppo, ppo_weights), (blpo, blpo_weights) = scalars_and_weights(ppo_dir), scalars_and_weights(blpo_dir)
    assert sorted(ppo) == sorted(blpo)
    for tag in ppo:
        if tag != "charts/SPS":
            assert ppo[tag] == blpo[tag], tag
    assert ppo_weights.keys() == blpo_weights.keys()
    assert all(torch.equal(ppo_weights[key], tensor) for key, tensor in blpo_weights.items())


class CleanRLAgent(torch.nn.Module):
    """CleanRL ppo.py's Agent, transcribed but for its initialization: the test loads the script's weights into it."""

    def __init__(self, envs_obs_dim, num_actions):
        super().__init__()
        self.critic = torch.nn.Sequential(
            torch.nn.Linear(envs_obs_dim, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, 1),
        )
        self.actor = torch.nn.Sequential(
            torch.nn.Linear(envs_obs_dim, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, num_actions),
        )

    def get_action_and_value(self, x, action=None):
        logits = self.actor(x)
        probs = torch.distributions.Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


def cleanrl_ppo_minibatch(
    agent, optimizer, b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values, mb_inds, args
):
    """One minibatch of CleanRL ppo.py's update loop, transcribed; returns its losses."""
    _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions.long()[mb_inds])
    logratio = newlogprob - b_logprobs[mb_inds]
    ratio = logratio.exp()

    mb_advantages = b_advantages[mb_inds]
    if args.norm_adv:
        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

    # Policy loss
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

    # Value loss
    newvalue = newvalue.view(-1)
    if args.clip_vloss:
        v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
        v_clipped = b_values[mb_inds] + torch.clamp(
            newvalue - b_values[mb_inds],
            -args.clip_coef,
            args.clip_coef,
        )
        v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
        v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
        v_loss = 0.5 * v_loss_max.mean()
    else:
        v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

    entropy_loss = entropy.mean()
    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    return pg_loss.item(), v_loss.item()


@pytest.mark.parametrize("clip_vloss", [True, False])
def test_ppo_variant_of_blpo_discrete_is_cleanrl_ppo(clip_vloss):
    """blpo_discrete.py --nested-updates 1 --no-hypergrad, its optimizer built as its main block builds it (one fused
    Adam, the actor's and the critic's group at CleanRL's learning rate), against a transcription of CleanRL ppo.py's
    agent and minibatch loop with its Adam, fused (CleanRL's default for-loop Adam rounds the last bit differently):
    four minibatch updates from the same weights give the same losses and the same weights, bit for bit."""
    module = load_script("blpo_discrete")
    args = module.Args(nested_updates=1, hypergrad=False, clip_vloss=clip_vloss)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    agent = module.Agent(4, 2)
    reference = CleanRLAgent(4, 2)
    reference.load_state_dict(agent.state_dict())
    n = 128
    obs, actions = torch.randn(n, 4, generator=gen), torch.randint(0, 2, (n,), generator=gen).float()
    with torch.no_grad():
        logprobs = agent.get_action_and_value(obs + 0.1, actions.long())[1]
    advantages, returns, values = (torch.randn(n, generator=gen) for _ in range(3))
    batch = module.Batch(obs, actions, logprobs, advantages, returns, values, None, None, None, None, None)
    param_groups = [{"params": agent.actor_parameters(), "lr": args.learning_rate}]  # as the main block does
    param_groups.append({"params": list(agent.critic.parameters()), "lr": args.critic_lr})
    optimizer = torch.optim.Adam(param_groups, eps=1e-5, fused=True)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=2.5e-4, eps=1e-5, fused=True)
    b_inds = np.random.default_rng(0).permutation(n)
    for start in range(0, n, 32):
        mb_inds = b_inds[start : start + 32]
        losses, diag = module.update_minibatch(agent, optimizer, None, batch, mb_inds, args, None)
        assert diag is None
        expected = cleanrl_ppo_minibatch(
            reference, reference_optimizer, obs, actions, logprobs, advantages, returns, values, mb_inds, args
        )
        assert (losses["policy_loss"], losses["value_loss"]) == expected
    assert all(torch.equal(p, q) for p, q in zip(agent.state_dict().values(), reference.state_dict().values()))


@pytest.mark.parametrize("ihvp", ["cg", "gauss-newton"])
def test_indefinite_hessian_gets_the_gauss_newton_correction(blpo, ihvp):
    """Returns far from the critic's values make H + rho I indefinite, and CG meets non-positive curvature there (it
    falls back: counted). The update is the reference's with x = (G + rho I)^-1 v, G = (2/B) J^T J, finite, and the
    IHVP check compares against the dense solve of that system; --ihvp gauss-newton takes it without falling back."""
    agent, batch = make_problem(blpo)
    batch = batch._replace(returns=60.0 * batch.returns)
    args = update_args(blpo, ihvp=ihvp, ihvp_rho=0.5, ihvp_check_every=1)
    expected = copy.deepcopy(agent)
    losses, stats = script_update(blpo, agent, batch, args)
    reference_update(expected, batch, args, gauss_newton=True)
    assert stats.gauss_newton == (ihvp == "cg") and stats.fallbacks == 0
    assert all(torch.isfinite(p).all() for p in agent.parameters())
    assert_same_parameters(agent, expected)
    means = stats.pop_means()
    assert means["ihvp_error"] < 1e-9 and means["correction_ratio"] > 1e-3
