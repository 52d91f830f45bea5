"""blpo_continuous_authors.py, the authors' recipe, against definitions: their GAE loop, the +I Nystrom's closed form,
the Hessian's rows, and one whole trajectory update of BLPO against a dense reference (K critic steps, g, v, x, the
mixed derivative of f2 through A(w) and V, the bound); whole tiny runs for the minibatches, the optimizer steps, PPO's
annealing, the shared statistics, the non-finite stop and the plumbing."""

import copy
import math

import numpy as np
import pytest
import torch
from conftest import TINY
from scripts import assert_fails_with_one_error_line, read_scalars, run_scripts

from benchmark.in_process import load_script, run_main

authors = load_script("blpo_continuous_authors")
TINY = TINY["blpo_continuous_authors"].argv()  # 2 iterations of 3 x 40 on Hopper-v4

pytestmark = pytest.mark.usefixtures("run_in_tmp_cwd")


def their_gae(rewards, values, dones, gamma=0.99, lam=0.95):
    """Their calculate_gae as a plain loop: values has T + 1 entries, the last the bootstrap state's."""
    advantages, gae = [], 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * values[t + 1] * (1 - dones[t]) - values[t]
        gae = delta + gamma * lam * (1 - dones[t]) * gae
        advantages.insert(0, gae)
    return torch.stack(advantages)


def test_advantages_are_their_gae_loop(float64):
    gen = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(2, 9, generator=gen), torch.randn(2, 10, generator=gen)
    dones = torch.zeros(2, 9)
    dones[0, 3] = dones[0, 4] = dones[1, 8] = 1.0
    discount = authors.gae_discount_matrix(dones, 0.99, 0.95)
    got = authors.advantages_from_values(values, rewards, dones, discount, 0.99)
    for e in range(2):
        torch.testing.assert_close(got[e], their_gae(rewards[e], values[e], dones[e]))


def test_nystrom_plus_identity_is_its_closed_form_on_seed_independent_coordinates(float64):
    """x = (C^T (M + I)^-1 C + rho I)^-1 v, C = H[S, :], M = C[:, S]; S the same whatever the global seed."""
    torch.manual_seed(1)
    coords = authors.fixed_coordinates(30, 5)
    torch.manual_seed(2)
    assert torch.equal(coords, authors.fixed_coordinates(30, 5)) and len(set(coords.tolist())) == 5
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(30, 30, generator=gen)
    h, v, rho = a @ a.T / 30, torch.randn(30, generator=gen), 50.0
    c, m = h[coords], h[coords][:, coords]
    closed = torch.linalg.solve(c.T @ torch.linalg.inv(m + torch.eye(5)) @ c + rho * torch.eye(30), v)
    torch.testing.assert_close(authors.nystrom_ihvp_plus_identity(c, coords, v, rho), closed)


def test_hessian_rows_are_rows_of_the_full_hessian(float64):
    critic = authors.Agent(3, 2).critic
    critic_fn, w = authors.functional_critic(critic), authors.flat(critic.parameters()).detach()
    obs, targets = torch.randn(7, 3), torch.randn(7)
    loss = lambda w_: ((targets - critic_fn(w_, obs)) ** 2).mean()  # noqa: E731
    coords = torch.tensor([0, 17, 200, 4224])
    torch.testing.assert_close(authors.hessian_rows(loss, w, coords), torch.func.hessian(loss)(w)[coords])


# --- One trajectory update of their BLPO against a dense reference ------------------------------------------------

T, LR_ACTOR, LR_CRITIC = 12, 0.05, 0.02


def trajectory(agent, seed=0):
    """A 12-step trajectory with an episode end at step 4, old log-probabilities of a perturbed policy (so ratios
    differ from 1 and some are clipped), and targets G far from V."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, 3, generator=gen)
    actions = torch.randn(T, 2, generator=gen)
    with torch.no_grad():
        logprobs = agent.get_action(obs, actions)[1] + 0.3 * torch.randn(T, generator=gen)
    dones = torch.zeros(T)
    dones[4] = 1.0
    return dict(
        obs=obs,
        actions=actions,
        logprobs=logprobs,
        rewards=torch.randn(T, generator=gen),
        dones=dones,
        targets=3 * torch.randn(T, generator=gen),
        last_obs=torch.randn(3, generator=gen),
        gae_matrix=authors.gae_discount_matrix(dones, 0.99, 0.95),
    )


def reference_update(agent, traj, args, detach=None):
    """K SGD steps of the critic on mean (G - V)^2, then g, v, x = (C^T (M + I)^-1 C + rho I)^-1 v from the dense
    Hessian, c = (d^2 f2 / d theta d w) x from the dense mixed Jacobian of f2 (A(w) by the plain loop), the bound, and
    one SGD step of the actor along h. `detach`: "A" or "V" holds that factor of f2 constant (a wrong reference)."""
    critic, actor = list(agent.critic.parameters()), agent.actor_parameters()
    for _ in range(args.nested_updates):
        grads = torch.autograd.grad(((traj["targets"] - agent.get_value(traj["obs"])) ** 2).mean(), critic)
        with torch.no_grad():
            for p, grad in zip(critic, grads):
                p -= LR_CRITIC * grad
    names = [n for n, _ in agent.critic.named_parameters()]
    shapes = [p.shape for p in critic]

    def value(w, x):
        params = dict(zip(names, [t.view(s) for t, s in zip(w.split([math.prod(s) for s in shapes]), shapes)]))
        return torch.func.functional_call(agent.critic, params, (x,)).squeeze(-1)

    def loss_parts(theta, w):
        chunks = theta.split([p.numel() for p in actor])
        mean = torch.func.functional_call(
            agent.actor_mean,
            {n: c.view_as(p) for (n, p), c in zip(agent.actor_mean.named_parameters(), chunks)},
            (traj["obs"],),
        )
        dist = torch.distributions.Normal(mean, chunks[-1].exp())
        ratio = (dist.log_prob(traj["actions"]).sum(-1) - traj["logprobs"]).exp()
        values = value(w, torch.cat([traj["obs"], traj["last_obs"][None]]))
        advantages = their_gae(traj["rewards"], values, traj["dones"])
        return ratio, advantages, values[:-1]

    def actor_loss(theta, w):
        ratio, a, _ = loss_parts(theta, w)
        return -torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a).mean()

    def f2(theta, w):
        ratio, a, v = loss_parts(theta, w)
        a = a.detach() if detach == "A" else a
        v = v.detach() if detach == "V" else v
        return (
            -2
            * (
                torch.minimum(ratio * a, ratio.clamp(1 - args.mixed_clip, 1 + args.mixed_clip) * a)
                * (traj["targets"] - v)
            ).sum()
        )

    theta0, w0 = authors.flat(actor).detach(), authors.flat(critic).detach()
    g, v = torch.func.grad(actor_loss, argnums=(0, 1))(theta0, w0)
    hessian = torch.func.hessian(lambda w: ((traj["targets"] - value(w, traj["obs"])) ** 2).mean())(w0)
    coords = authors.fixed_coordinates(len(w0), args.ihvp_rank)
    c_rows, m = hessian[coords], hessian[coords][:, coords]
    core = c_rows.T @ torch.linalg.inv(m + torch.eye(len(coords))) @ c_rows + args.ihvp_rho * torch.eye(len(w0))
    x = torch.linalg.solve(core, v)
    mixed = torch.func.jacrev(torch.func.grad(f2, argnums=0), argnums=1)(theta0, w0)  # (d_theta, d_w)
    c = mixed @ x
    h = g - min(1.0, args.hypergrad_bound * g.norm() / (c.norm() + 1e-8)) * c
    with torch.no_grad():
        for p, step in zip(actor, (LR_ACTOR * h).split([p.numel() for p in actor])):
            p -= step.view_as(p)
    return c


def script_update(agent, traj, args, generator=None):
    """update_trajectory with SGD; returns the statistics of its g, c, h, and those four."""
    actor_opt = torch.optim.SGD(agent.actor_parameters(), lr=LR_ACTOR)
    critic_opt = torch.optim.SGD(agent.critic.parameters(), lr=LR_CRITIC)
    stats = authors.HypergradStats(2)
    critic_fn = authors.functional_critic(agent.critic)
    _, hypergrad = authors.update_trajectory(agent, actor_opt, critic_opt, critic_fn, traj, args, generator)
    if hypergrad is not None:
        stats.add(**hypergrad)
    return stats, hypergrad


def blpo_args(**overrides):
    args = authors.Args(algo="blpo", nested_updates=2, ihvp_rho=0.5, hypergrad_bound=math.inf)
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


@pytest.mark.parametrize("bound", [math.inf, 1.0])
def test_trajectory_update_is_their_blpo_step(float64, bound):
    """The weights after update_trajectory equal the dense reference's: the critic after K steps, the actor after one
    step along h = g - c, with c the mixed derivative of f2 through both A(w) and V, unbounded and bounded."""
    torch.manual_seed(0)
    agent = authors.Agent(3, 2)
    traj, args = trajectory(agent), blpo_args(hypergrad_bound=bound)
    expected = copy.deepcopy(agent)
    c = reference_update(expected, traj, args)
    stats, _ = script_update(agent, traj, args)
    for (name, p), q in zip(agent.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")
    assert stats.pop_means()["correction_norm"] == pytest.approx(c.norm().item(), rel=1e-9)


def test_the_mixed_term_goes_through_both_a_and_v(float64):
    """f2's derivative with A(w) or V held constant is another c, and the script's is neither: the comparison above
    separates them."""
    torch.manual_seed(0)
    agent = authors.Agent(3, 2)
    traj, args = trajectory(agent), blpo_args()
    c = reference_update(copy.deepcopy(agent), traj, args)
    for wrong in ("A", "V"):
        c_wrong = reference_update(copy.deepcopy(agent), traj, args, detach=wrong)
        assert (c - c_wrong).norm() > 1e-3 * c.norm(), wrong
    assert script_update(agent, traj, args)[0].pop_means()["correction_norm"] == pytest.approx(
        c.norm().item(), rel=1e-9
    )


def test_nested_is_blpo_without_c(float64):
    torch.manual_seed(0)
    agent = authors.Agent(3, 2)
    traj = trajectory(agent)
    nested, blpo_zero = copy.deepcopy(agent), copy.deepcopy(agent)
    script_update(nested, traj, blpo_args(algo="nested"))
    script_update(blpo_zero, traj, blpo_args(hypergrad_bound=0.0))
    script_update(agent, traj, blpo_args())
    assert all(torch.equal(p, q) for p, q in zip(nested.parameters(), blpo_zero.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(nested.actor_parameters(), agent.actor_parameters()))


# --- The controls: c's size and angle to g with a random direction --------------------------------------------


def split_along(c, g):
    """(a, r): c = a g / ||g|| + r with r orthogonal to g."""
    a = c @ g / g.norm()
    return a, c - a * g / g.norm()


@pytest.mark.parametrize("seed", [0, 1])
def test_matched_control_keeps_norm_angle_and_each_tensors_remainder(float64, seed):
    gen = torch.Generator().manual_seed(seed)
    sizes = [12, 4, 6, 3]
    c, g = torch.randn(25, generator=gen), torch.randn(25, generator=gen)
    made = authors.matched_control(c, g, sizes, torch.Generator().manual_seed(5))
    (a, r), (a_made, r_made) = split_along(c, g), split_along(made, g)
    torch.testing.assert_close(made.norm(), c.norm())
    torch.testing.assert_close(authors.cosine(made, g), authors.cosine(c, g))
    torch.testing.assert_close(a_made, a)
    for r_i, made_i, g_i in zip(r.split(sizes), r_made.split(sizes), g.split(sizes)):
        torch.testing.assert_close(made_i.norm(), r_i.norm())
        assert abs(made_i @ g_i) < 1e-12 * made_i.norm() * g_i.norm()  # orthogonal to g on every tensor
        assert authors.cosine(made_i, r_i) < 0.99  # a new direction
    again = authors.matched_control(c, g, sizes, torch.Generator().manual_seed(5))
    other = authors.matched_control(c, g, sizes, torch.Generator().manual_seed(6))
    assert torch.equal(made, again) and not torch.allclose(made, other)


def test_matched_control_keeps_a_one_entry_tensors_remainder(float64):
    gen = torch.Generator().manual_seed(0)
    c, g = torch.randn(7, generator=gen), torch.randn(7, generator=gen)
    made = authors.matched_control(c, g, [6, 1], gen)
    assert made[-1].item() == pytest.approx(c[-1].item(), rel=1e-12)  # a g_k / ||g|| + r_k, both c's own


def test_random_control_keeps_only_the_norm(float64):
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(4000, generator=gen)
    made = authors.random_control(c, torch.Generator().manual_seed(1))
    torch.testing.assert_close(made.norm(), c.norm())
    assert abs(authors.cosine(made, c)) < 0.1
    assert torch.equal(made, authors.random_control(c, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("correction", ["matched", "random"])
def test_controls_replace_c_before_the_same_bound(float64, correction):
    """The update applies h = g - scale * c' with c' the control of its own c, bounded as ift's c: the same ||c||, the
    same scale, and for matched the same cos(c, g)."""
    torch.manual_seed(0)
    agent = authors.Agent(3, 2)
    traj = trajectory(agent)
    for bound in (math.inf, 1.0):
        _, ift = script_update(copy.deepcopy(agent), traj, blpo_args(hypergrad_bound=bound))
        gen = torch.Generator().manual_seed(3)
        _, control = script_update(copy.deepcopy(agent), traj, blpo_args(hypergrad_bound=bound, correction=correction))
        sizes = [p.numel() for p in agent.actor_parameters()]
        make = {"matched": lambda: authors.matched_control(ift["c"], ift["g"], sizes, gen)}
        make["random"] = lambda: authors.random_control(ift["c"], gen)
        torch.testing.assert_close(control["g"], ift["g"], rtol=0, atol=0)
        assert control["c"].norm().item() == pytest.approx(ift["c"].norm().item(), rel=1e-12)
        assert control["scale"] == pytest.approx(ift["scale"], rel=1e-12) and (bound < math.inf) == (ift["scale"] < 1)
        torch.testing.assert_close(control["h"], control["g"] - control["scale"] * control["c"], rtol=0, atol=0)
        if correction == "matched":
            assert authors.cosine(control["c"], ift["g"]) == pytest.approx(authors.cosine(ift["c"], ift["g"]), 1e-9)


# --- Whole runs, in-process ---------------------------------------------------------------------------------------


def test_each_minibatch_is_one_envs_whole_trajectory_once_per_epoch(tmp_path, monkeypatch):
    module = load_script("blpo_continuous_authors")
    seen, update = [], module.update_trajectory

    def recording(agent, actor_opt, critic_opt, critic_fn, traj, *rest):
        seen.append({k: t.clone() for k, t in traj.items()})
        return update(agent, actor_opt, critic_opt, critic_fn, traj, *rest)

    monkeypatch.setattr(module, "update_trajectory", recording)
    run_main(module, TINY, tmp_path)
    assert len(seen) == 2 * 2 * 3  # iterations x epochs x envs
    last = module.obs  # the second iteration's rollout, (num_steps, num_envs, obs)
    for epoch in (seen[6:9], seen[9:12]):
        envs = [next(e for e in range(3) if torch.equal(traj["obs"], last[:, e])) for traj in epoch]
        assert sorted(envs) == [0, 1, 2]  # each env once, its 40 steps in time order
        for traj, e in zip(epoch, envs):
            assert torch.equal(traj["actions"], module.actions[:, e]) and torch.equal(traj["dones"], module.dones[:, e])
            assert torch.equal(traj["last_obs"], module.next_obs[e])
    assert [len(t["obs"]) for t in seen] == [40] * 12


def counting_adam(module, log):
    class CountingAdam(module.optim.Adam):
        def step(self, closure=None):
            log.append(("critic" if len(self.param_groups[0]["params"]) == 6 else "actor", self.param_groups[0]["lr"]))
            return super().step(closure)

    return CountingAdam


@pytest.mark.parametrize("algo", ["blpo", "nested"])
def test_critic_takes_k_steps_alone_then_the_actor_one(algo, tmp_path, monkeypatch):
    """Per minibatch: K critic steps, then one actor step during which the critic does not move; constant rates."""
    module, log = load_script("blpo_continuous_authors"), []
    monkeypatch.setattr(module.optim, "Adam", counting_adam(module, log))
    critic_during_actor = []
    set_grads = module.set_grads

    def recording_set_grads(params, vector):
        critic_during_actor.append(authors.flat(module.agent.critic.parameters()).clone())
        return set_grads(params, vector)

    monkeypatch.setattr(module, "set_grads", recording_set_grads)
    run_main(module, [*TINY, "--algo", algo, "--nested-updates", "2"], tmp_path)
    assert [who for who, _ in log] == ["critic", "critic", "actor"] * 12
    assert {lr for who, lr in log if who == "critic"} == {1e-3} and {lr for who, lr in log if who == "actor"} == {
        2.5e-4
    }
    assert len(critic_during_actor) == 12
    assert torch.equal(critic_during_actor[-1], authors.flat(module.agent.critic.parameters()))  # the last step


def test_k_per_task_as_in_their_scripts():
    """Their F scripts' --nested per task (run_brax*.sh at 2628926, 7af0645, 23dee78), by Gymnasium id."""
    theirs = {"Hopper": 3, "HalfCheetah": 5, "Walker2d": 2, "Humanoid": 3, "HumanoidStandup": 5, "Reacher": 3}
    theirs |= {"Pusher": 3, "InvertedDoublePendulum": 3, "InvertedPendulum": 5, "Ant": 3}
    assert {task: authors.default_nested_updates(f"{task}-v4") for task in theirs} == theirs


def test_ppo_anneals_both_rates_to_zero_and_steps_the_critic_after_the_actor(tmp_path, monkeypatch):
    module, log = load_script("blpo_continuous_authors"), []
    monkeypatch.setattr(module.optim, "Adam", counting_adam(module, log))
    run_main(module, [*TINY, "--algo", "ppo", "--total-timesteps", "480"], tmp_path)  # 4 iterations
    assert [who for who, _ in log] == ["actor", "critic"] * (4 * 2 * 4)
    rates = [lr for _, lr in log]
    per_iteration = [rates[i * 16 : (i + 1) * 16] for i in range(4)]
    assert [set(r) for r in per_iteration] == [{2.5e-4 * f} for f in (1.0, 0.75, 0.5, 0.25)]  # 0 after the last


def test_statistics_are_shared_and_unclipped():
    """One running mean and variance over every env's observations, updated with each batch before use; rewards
    divided by the standard deviation of the discounted returns, which restart at a done."""
    normalizer = authors.Normalizer((2,), 3, 0.9)
    gen = np.random.default_rng(0)
    batches = [gen.normal(5, 3, size=(3, 2)) for _ in range(4)]
    for batch in batches:
        out = normalizer.obs(batch)
    seen = np.concatenate(batches)
    np.testing.assert_allclose(normalizer.obs_rms.mean, seen.mean(0), rtol=1e-4)
    np.testing.assert_allclose(normalizer.obs_rms.var, seen.var(0), rtol=1e-3)
    np.testing.assert_allclose(out, (batches[-1] - normalizer.obs_rms.mean) / np.sqrt(normalizer.obs_rms.var + 1e-8))
    normalizer.frozen = True
    assert np.abs(normalizer.obs(np.full((3, 2), 1e4))).min() > 1000  # no clipping at 10
    normalizer.frozen = False
    returns = np.zeros(3)
    for reward, done in [(np.ones(3), np.array([0, 0, 1])), (np.full(3, 2.0), np.array([1, 0, 0]))]:
        returns = returns * 0.9 * (1 - done) + reward
        scaled = normalizer.reward(reward, done)
    np.testing.assert_allclose(normalizer.discounted_return, returns)
    np.testing.assert_allclose(scaled, np.full(3, 2.0) / np.sqrt(normalizer.return_rms.var + 1e-8))


def test_a_nonfinite_c_is_counted_and_broken_weights_stop_the_run_losing_nothing(tmp_path, monkeypatch):
    """c turns NaN on the 5th update: their update applies it, the weights turn NaN, the run stops with one `error:`
    line; the saved model is the one before that update and finite, and the events hold the episodes and the count."""
    module, calls, snapshots = load_script("blpo_continuous_authors"), [], []
    mixed, update = module.mixed_term, module.update_trajectory

    def failing_mixed(*args):
        calls.append(1)
        c = mixed(*args)
        return torch.full_like(c, math.nan) if len(calls) == 5 else c

    def recording_update(agent, *rest):
        snapshots.append({k: t.clone() for k, t in agent.state_dict().items()})
        return update(agent, *rest)

    monkeypatch.setattr(module, "mixed_term", failing_mixed)
    monkeypatch.setattr(module, "update_trajectory", recording_update)
    with pytest.raises(SystemExit) as stop:
        run_main(module, TINY, tmp_path)
    message = str(stop.value.code)
    assert message.startswith("error: the parameters turned non-finite") and "\n" not in message
    run_dir = next((tmp_path / "runs").iterdir())
    saved = torch.load(next(run_dir.glob("*.pt")), weights_only=False)["agent"]
    assert all(torch.equal(saved[k], t) for k, t in snapshots[4].items())
    assert all(torch.isfinite(t).all() for t in saved.values())
    scalars = read_scalars(run_dir)
    assert scalars["hypergrad/nonfinite_corrections"][-1][1] == 1 and len(scalars["charts/episodic_return"]) > 0


def test_a_singular_nystrom_core_stops_the_run_with_one_line_keeping_the_model(tmp_path, monkeypatch):
    """Rows with -2 at their own coordinates and rho = 4 make the core rho (M + I) + C C^T = -4 I + 4 I = 0."""
    module = load_script("blpo_continuous_authors")

    def singular_rows(loss_fn, w, coords):
        rows = torch.zeros(len(coords), w.numel(), dtype=w.dtype)
        rows[torch.arange(len(coords)), coords] = -2.0
        return rows

    monkeypatch.setattr(module, "hessian_rows", singular_rows)
    with pytest.raises(SystemExit) as stop:
        run_main(module, [*TINY, "--ihvp-rho", "4"], tmp_path)
    message = str(stop.value.code)
    assert message.startswith("error: the IHVP failed") and "singular" in message and "\n" not in message
    saved = torch.load(next(next((tmp_path / "runs").iterdir()).glob("*.pt")), weights_only=False)["agent"]
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_a_control_run_repeats_from_its_seed_and_leaves_the_rollouts_draws_alone(tmp_path):
    scalars = {
        name: read_scalars(run_main(load_script("blpo_continuous_authors"), [*TINY, *flags], tmp_path / name))
        for name, flags in [
            ("ift", []),
            ("matched", ["--correction", "matched"]),
            ("again", ["--correction", "matched"]),
        ]
    }
    for runs in scalars.values():
        runs.pop("charts/SPS")
    assert scalars["matched"] == scalars["again"]
    first = [(s, r) for s, r in scalars["ift"]["charts/episodic_return"] if s <= 120]  # the first rollout
    assert first and first == [(s, r) for s, r in scalars["matched"]["charts/episodic_return"] if s <= 120]
    assert scalars["matched"]["losses/policy_loss"] != scalars["ift"]["losses/policy_loss"]


def test_only_ppo_needs_minibatches_that_divide_the_batch():
    authors.check_args(authors.Args(algo="blpo", num_minibatches=7))
    with pytest.raises(ValueError, match="--num-minibatches does not divide"):
        authors.check_args(authors.Args(algo="ppo", num_minibatches=7))


def test_bad_input_is_one_line_and_save_and_evaluate_work(tmp_path):
    runs = run_scripts(
        tmp_path,
        {
            "discrete": ["blpo_continuous_authors.py", "--env-id", "CartPole-v1"],
            "unknown": ["blpo_continuous_authors.py", "--env-id", "NoSuchEnv-v0"],
            "divide": ["blpo_continuous_authors.py", "--algo", "ppo", "--num-minibatches", "7"],
            "rank": ["blpo_continuous_authors.py", "--ihvp-rank", "100000"],
            "saved": ["blpo_continuous_authors.py", *TINY, "--save-model"],
        },
    )
    assert_fails_with_one_error_line(runs["discrete"].result, "not Box")
    assert_fails_with_one_error_line(runs["unknown"].result, "cannot make 'NoSuchEnv-v0'")
    assert_fails_with_one_error_line(runs["divide"].result, "--num-minibatches does not divide")
    assert_fails_with_one_error_line(runs["rank"].result, "exceeds the critic's parameters")
    run_dir = runs["saved"].run_dir()
    assert "evaluation: mean return" in runs["saved"].result.stdout
    assert len(read_scalars(run_dir)["eval/episodic_return"]) == 10
