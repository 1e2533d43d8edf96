"""BVPO, CoPG, HDPO against REINFORCE, VAS and VADE, each against an exact oracle."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from gradlab import policy, tasks
from gradlab.tasks import inventory

# ---------------------------------------------------------------- BVPO -------
# A two-token policy: a "reasoning" token z, then an answer a; the reward
# depends on the answer only. g_trace: RLOO over sampled (z, a), unbiased for
# grad J. g_empty: the answer sampled after the fixed "empty" trace z = 0 and
# the gradient of log pi(a | z = 0) only: quieter, and biased.
V, G = 3, 2
SEQS = jnp.asarray(policy.all_sequences(V, 2))
ANSWER_REWARD = jnp.asarray([1.0, 0.0, 0.0])


def _rloo(r):
  return r - (jnp.sum(r) - r) / (r.shape[0] - 1)


def _bvpo_setup(seed):
  params = policy.init_tabular(jax.random.key(seed), V, 2, scale=1.5)
  rewards = ANSWER_REWARD[SEQS[:, 1]]
  truth = ravel_pytree(jax.grad(policy.exact_objective)(params, SEQS, rewards))[0]

  def trace(idx):
    y = SEQS[idx]
    adv = _rloo(ANSWER_REWARD[y[:, 1]])
    g = jax.grad(lambda p: jnp.sum(adv * policy.tabular_token_logp(p, y).sum(-1)) / G)(params)
    return ravel_pytree(g)[0]

  def empty(idx):
    y = jnp.stack([jnp.zeros_like(idx), idx], -1)
    adv = _rloo(ANSWER_REWARD[idx])
    g = jax.grad(lambda p: jnp.sum(adv * policy.tabular_token_logp(p, y)[:, 1]) / G)(params)
    return ravel_pytree(g)[0]

  p_trace = jnp.exp(policy.tabular_token_logp(params, SEQS).sum(-1))
  p_empty = jax.nn.softmax(params[1][0])
  return truth, trace, empty, p_trace, p_empty


def _all_groups(estimate, probs, n):
  idx = jnp.asarray(np.array(np.meshgrid(*[np.arange(n)] * G, indexing="ij")).reshape(G, -1).T)
  w = jnp.prod(probs[idx], -1)
  return jax.jit(jax.vmap(estimate))(idx), w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bvpo_mixture_mse_by_enumeration_is_never_above_either_component(seed):
  truth, trace, empty, p_trace, p_empty = _bvpo_setup(seed)
  gt, wt = _all_groups(trace, p_trace, V * V)  # 81 groups
  ge, we = _all_groups(empty, p_empty, V)  # 9 groups
  mean_t, mean_e = wt @ gt, we @ ge
  np.testing.assert_allclose(mean_t, truth, atol=1e-6)  # RLOO is unbiased
  var_t = wt @ jnp.sum((gt - mean_t) ** 2, 1)
  var_e = we @ jnp.sum((ge - mean_e) ** 2, 1)
  alpha = policy.mixture_weight(mean_t - truth, mean_e - truth, var_t, var_e)

  def exact_mse(a):  # over every pair of independent groups: no formula involved
    mixed = a * gt[:, None] + (1 - a) * ge[None]
    return jnp.einsum("i,j,ij->", wt, we, jnp.sum((mixed - truth) ** 2, -1))

  best = exact_mse(alpha)
  assert best <= exact_mse(1.0) * (1 + 1e-6) and best <= exact_mse(0.0) * (1 + 1e-6)
  grid = jnp.linspace(0, 1, 101)
  assert best <= jnp.min(jax.jit(jax.vmap(exact_mse))(grid)) * (1 + 1e-6)  # and it is the minimum
  np.testing.assert_allclose(
    policy.mixture_mse(alpha, mean_t - truth, mean_e - truth, var_t, var_e), best, rtol=1e-5
  )
  assert 0 < alpha < 1  # both components matter on this problem


def test_bvpo_estimated_weight_converges_to_the_closed_form():
  truth, trace, empty, p_trace, p_empty = _bvpo_setup(0)
  gt, wt = _all_groups(trace, p_trace, V * V)
  ge, we = _all_groups(empty, p_empty, V)
  mt, me = wt @ gt, we @ ge
  exact = float(
    policy.mixture_weight(
      mt - truth,
      me - truth,
      wt @ jnp.sum((gt - mt) ** 2, 1),
      we @ jnp.sum((ge - me) ** 2, 1),
    )
  )

  @functools.partial(jax.jit, static_argnums=1)
  def estimates(key, n):
    kt, ke = jax.random.split(key)
    it = jax.random.choice(kt, V * V, (n, G), p=p_trace)
    ie = jax.random.choice(ke, V, (n, G), p=p_empty)
    # g_trace is taken as unbiased (no target): the practical estimator
    return policy.estimate_mixture_weight(jax.vmap(trace)(it), jax.vmap(empty)(ie))[0]

  spread = {}
  for n in (250, 4000):
    w = np.array([float(estimates(jax.random.key(r), n)) for r in range(16)])
    se = w.std(ddof=1) / 4
    assert abs(w.mean() - exact) < 4 * se + 1e-3, (n, w.mean(), exact, se)
    spread[n] = w.std(ddof=1)
  # a consistent estimator: the spread shrinks as 1/sqrt(n), 16x the samples -> about 4x
  assert 2 < spread[250] / spread[4000] < 8, spread


def test_bvpo_bad_input():
  with pytest.raises(ValueError, match="samples_a"):
    policy.estimate_mixture_weight(jnp.ones((1, 3)), jnp.ones((4, 3)))
  with pytest.raises(ValueError, match="samples_b"):
    policy.estimate_mixture_weight(jnp.ones((4, 3)), jnp.ones((3, 3)), paired=True)
  with pytest.raises(ValueError, match="weight"):
    policy.mix({"w": 1.0}, {"w": 2.0}, 1.5)
  with pytest.raises(ValueError, match="var_a"):
    policy.mixture_weight(jnp.zeros(2), jnp.ones(2), -1.0, 1.0)


# ---------------------------------------------------------------- CoPG -------
K = 6
REF = jax.random.normal(jax.random.key(3), (K,))
R = jax.random.uniform(jax.random.key(4), (K,))
BETA = 0.25


def _copg_loss(theta, y):
  logp = jax.nn.log_softmax(theta)[y]  # [B, k]
  ref = jax.nn.log_softmax(REF)[y]
  return policy.copg_loss(R[y], logp, ref, beta=BETA)


def test_copg_trained_off_policy_reaches_the_regularized_optimum():
  # responses drawn uniformly (not from pi): CoPG needs no importance weights
  opt = optax.adam(0.05)
  theta = jnp.zeros(K)

  def step(carry, key):
    th, st = carry
    y = jax.random.randint(key, (16, 4), 0, K)
    g = jax.grad(_copg_loss)(th, y)
    upd, st = opt.update(g, st)
    return (optax.apply_updates(th, upd), st), None

  (theta, _), _ = jax.lax.scan(
    step, (theta, opt.init(theta)), jax.random.split(jax.random.key(5), 3000)
  )
  target = policy.regularized_optimum(REF, R, beta=BETA)
  # every pair's loss is 0 at pi*, so the sampled gradient vanishes there and
  # the iterates converge to it (no noise floor): 1e-4 is the optimizer's
  # convergence after 3000 steps, not a statistical allowance
  np.testing.assert_allclose(jax.nn.softmax(theta), target, atol=1e-4)
  # and pi* is not the unregularized optimum, nor the reference
  assert jnp.max(jnp.abs(target - jax.nn.one_hot(jnp.argmax(R), K))) > 0.1
  assert jnp.max(jnp.abs(target - jax.nn.softmax(REF))) > 0.05


def test_copg_loss_is_zero_with_zero_gradient_at_the_optimum_for_any_batch():
  theta = jnp.log(policy.regularized_optimum(REF, R, beta=BETA))
  y = jax.random.randint(jax.random.key(6), (8, 5), 0, K)
  assert float(_copg_loss(theta, y)) < 1e-10
  assert float(jnp.max(jnp.abs(jax.grad(_copg_loss)(theta, y)))) < 1e-5


def test_copg_gradient_contrasts_the_better_and_the_worse_response():
  theta = jax.random.normal(jax.random.key(7), (K,))
  y = jnp.asarray([[0, 3]])
  logp = jax.nn.log_softmax(theta)
  reg = policy.regularized_rewards(R[y], logp[y], jax.nn.log_softmax(REF)[y], beta=BETA)
  better, worse = (0, 3) if reg[0, 0] > reg[0, 1] else (3, 0)
  g = jax.grad(_copg_loss)(theta, y)
  new = jax.nn.log_softmax(theta - 1e-3 * g)
  assert new[better] - new[worse] > logp[better] - logp[worse]
  # the loss's gradient is the policy gradient with CoPG's advantages
  adv = policy.copg_advantages(R[y], logp[y], jax.nn.log_softmax(REF)[y], beta=BETA)
  pg = jax.grad(lambda t: -jnp.sum(adv * jax.nn.log_softmax(t)[y]))(theta)
  np.testing.assert_allclose(g, pg, rtol=1e-5, atol=1e-7)
  assert adv[0, 0] == -adv[0, 1] and (adv[0, 0] > 0) == (better == 0)


def test_copg_with_zero_beta_is_rloo_and_bad_input_is_refused():
  r = jax.random.bernoulli(jax.random.key(8), 0.5, (3, 4)).astype(jnp.float32)
  lp = jax.random.normal(jax.random.key(9), (3, 4))
  np.testing.assert_allclose(
    policy.copg_advantages(r, lp, lp + 1.0, beta=0.0), policy.rloo_advantages(r), atol=1e-6
  )
  with pytest.raises(ValueError, match="beta"):
    policy.copg_advantages(r, lp, lp, beta=-0.1)
  with pytest.raises(ValueError, match="beta"):
    policy.copg_loss(r, lp, lp, beta=0.0)
  with pytest.raises(ValueError, match="rewards"):
    policy.copg_loss(r[:, :1], lp[:, :1], lp[:, :1], beta=0.1)
  with pytest.raises(ValueError, match="logp"):
    policy.copg_loss(r, lp[:, :3], lp, beta=0.1)
  with pytest.raises(ValueError, match="mask"):
    policy.copg_loss(r, lp[..., None], lp[..., None], beta=0.1)


def test_copg_under_jit_and_vmap():
  r = jax.random.bernoulli(jax.random.key(10), 0.5, (5, 3, 4)).astype(jnp.float32)
  lp = jax.random.normal(jax.random.key(11), (5, 3, 4))
  f = jax.jit(jax.vmap(functools.partial(policy.copg_loss, beta=0.5)))
  out = f(r, lp, jnp.zeros_like(lp))
  np.testing.assert_allclose(
    out[2], policy.copg_loss(r[2], lp[2], jnp.zeros((3, 4)), beta=0.5), rtol=1e-6
  )


# ---------------------------------------------------------- HDPO / inventory --
PROB = inventory.Inventory(holding=1.0, penalty=9.0, demand_mean=1.0, horizon=8)


def test_inventory_optimal_level_is_the_critical_fractile_and_minimizes_the_exact_cost():
  s_star = inventory.optimal_level(PROB)
  # P(D < S*) = p / (p + h) for exponential demand
  np.testing.assert_allclose(1 - np.exp(-s_star / PROB.demand_mean), 0.9, rtol=1e-6)
  with jax.enable_x64(True):  # the minimum is flat: 1e-4 off moves the cost by 1e-8 relative
    grid = jnp.linspace(0.0, 6.0, 60001, dtype=jnp.float64)
    costs = inventory.expected_cost(PROB, grid)
    assert abs(float(grid[jnp.argmin(costs)]) - s_star) < 2e-4
    assert abs(float(jax.grad(inventory.expected_cost, 1)(PROB, jnp.float64(s_star)))) < 1e-9
  # the simulator agrees with the closed form in expectation
  d = inventory.sample_demand(jax.random.key(0), PROB, 20000)
  sim = jax.vmap(lambda x: jnp.sum(inventory.period_costs(PROB, 1.5, x)))(d)
  se = sim.std() / np.sqrt(sim.shape[0])
  assert abs(float(sim.mean() - inventory.expected_cost(PROB, 1.5))) < 4 * se


@pytest.mark.parametrize("level", [0.8, 2.3, 3.5])
def test_hdpo_pathwise_gradient_is_unbiased_against_finite_differences_of_the_exact_cost(level):
  d = inventory.sample_demand(jax.random.key(1), PROB, 20000)
  g = inventory.pathwise_gradients(PROB, level, d)
  h = 1e-3
  fd = (inventory.expected_cost(PROB, level + h) - inventory.expected_cost(PROB, level - h)) / (
    2 * h
  )
  se = g.std() / np.sqrt(g.shape[0])
  assert abs(float(g.mean() - fd)) < 4 * float(se) + 1e-3, (g.mean(), fd, se)


def test_pathwise_and_score_gradients_of_the_noisy_policy_are_both_unbiased():
  # one period, S_t = S + sigma * eps: E cost = E_eps L(S + sigma eps) (x_0 = 0 far below),
  # computed by Gauss-Hermite quadrature: the exact reference
  prob = PROB._replace(horizon=1)
  level, sigma = 2.0, 0.3
  x, w = np.polynomial.hermite_e.hermegauss(80)
  w = w / w.sum()

  def exact(s):
    return float(np.sum(w * np.asarray(inventory.newsvendor_loss(prob, s + sigma * x))))

  fd = (exact(level + 1e-3) - exact(level - 1e-3)) / 2e-3
  kd, ke = jax.random.split(jax.random.key(2))
  n = 40000
  d = inventory.sample_demand(kd, prob, n)
  e = sigma * jax.random.normal(ke, (n, 1))
  for g in (
    inventory.pathwise_gradients(prob, level, d, e),
    inventory.score_gradients(prob, level, d, e, sigma),
  ):
    se = float(g.std() / np.sqrt(n))
    assert abs(float(g.mean()) - fd) < 4 * se, (float(g.mean()), fd, se)


def test_over_a_horizon_the_two_estimators_agree_and_the_score_function_is_noisier():
  level, sigma, n = 2.0, 0.3, 20000
  kd, ke = jax.random.split(jax.random.key(3))
  d = inventory.sample_demand(kd, PROB, n)
  e = sigma * jax.random.normal(ke, (n, PROB.horizon))
  gp = inventory.pathwise_gradients(PROB, level, d, e)
  gs = inventory.score_gradients(PROB, level, d, e, sigma)
  se = float(jnp.sqrt(gp.var() / n + gs.var() / n))
  assert abs(float(gp.mean() - gs.mean())) < 4 * se
  assert gs.var() > 10 * gp.var()


def test_inventory_bad_input():
  with pytest.raises(ValueError, match="penalty"):
    inventory.optimal_level(PROB._replace(penalty=-1.0))
  with pytest.raises(ValueError, match="sigma"):
    inventory.score_gradients(PROB, 1.0, jnp.ones((4, 8)), jnp.zeros((4, 8)), 0.0)
  with pytest.raises(ValueError, match="horizon"):
    inventory.pathwise_gradients(PROB._replace(horizon=0), 1.0, jnp.ones((4, 1)))


# ---------------------------------------------------------------- VAS / VADE --
def test_reward_variance_bounds_the_exact_gradient_norm_on_the_bandit_population():
  # MMR1: reward variance lower-bounds the policy-gradient size. For a softmax over
  # answers with correct set C, d p / d logits_k = pi_k (r_k - p), and Cauchy-Schwarz
  # within C and within its complement W gives
  #   ||grad p|| >= Var(r) sqrt(1/|C| + 1/|W|),  Var(r) = p(1 - p),
  # with equality when the mass is spread evenly within C and within W.
  grad_p = jax.jit(jax.vmap(jax.grad(lambda lg: jnp.sum(jax.nn.softmax(lg)[:2]))))
  for a, b in ((1, 1), (0.5, 2)):
    pop = tasks.bandit.beta_population(19, a, b)
    norms = jnp.linalg.norm(grad_p(pop.logits), axis=1)
    var = pop.p * (1 - pop.p)
    np.testing.assert_allclose(norms, var * np.sqrt(1 / 2 + 1 / 2), rtol=1e-4)
  logits = 2 * jax.random.normal(jax.random.key(0), (500, 6))
  norms = jnp.linalg.norm(grad_p(logits), axis=1)
  p = jnp.sum(jax.nn.softmax(logits)[:, :2], 1)
  bound = p * (1 - p) * np.sqrt(1 / 2 + 1 / 4)
  assert bool(jnp.all(norms >= bound * (1 - 1e-5)))
  assert float(jnp.min(norms / bound)) < 1.05  # and it is nearly attained


def test_vade_posterior_is_the_conjugate_update_and_its_decays_have_a_closed_form():
  rng = np.random.default_rng(0)
  num, steps, n = 7, 12, 8
  visits = [rng.choice(num, 3, replace=False) for _ in range(steps)]
  succ = [rng.integers(0, n + 1, 3) for _ in range(steps)]
  for gg, gr in ((1.0, 1.0), (0.9, 0.7)):
    st = policy.vade_init(num, prior=(2.0, 3.0))
    for ids, s in zip(visits, succ):
      st = policy.vade_update(st, ids, s, n, global_decay=gg, revisit_decay=gr)
    ea, eb = np.zeros(num), np.zeros(num)
    for t, (ids, s) in enumerate(zip(visits, succ)):
      for i, si in zip(ids, s):
        later = sum(i in v for v in visits[t + 1 :])
        f = gg ** (steps - 1 - t) * gr**later
        ea[i] += f * si
        eb[i] += f * (n - si)
    np.testing.assert_allclose(st.alpha, 2.0 + ea, rtol=1e-5)
    np.testing.assert_allclose(st.beta, 3.0 + eb, rtol=1e-5)


def test_vade_selects_the_highest_variance_prompts_once_the_posteriors_are_sharp():
  p = jnp.asarray([0.02, 0.5, 0.9, 0.3, 0.99, 0.6])
  st = policy.vade_init(6)._replace(alpha=1e5 * p + 1, beta=1e5 * (1 - p) + 1)
  idx, score = policy.vade_select(jax.random.key(0), st, 3)
  assert sorted(np.asarray(idx).tolist()) == [1, 3, 5]
  np.testing.assert_allclose(score, p * (1 - p), atol=2e-3)
  with pytest.raises(ValueError, match="successes"):
    policy.vade_update(st, jnp.asarray([0]), jnp.asarray([9.0]), 8)
  with pytest.raises(ValueError, match="batch_size"):
    policy.vade_select(jax.random.key(0), st, 7)


def test_vas_scores_sampling_and_distinct_n():
  r = jnp.asarray([[1, 1, 1, 1], [1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], jnp.float32)
  s = policy.vas_scores(r)
  np.testing.assert_allclose(s, [0, 1, 0.75, 0], atol=1e-6)  # p(1-p) min-max normalized
  prev = jnp.asarray([1.0, 0, 0, 0])
  np.testing.assert_allclose(
    policy.vas_scores(r, previous=prev, momentum=0.5), [0.5, 0.5, 0.375, 0]
  )
  # the weighted half draws in proportion to the scores, the other half uniformly
  keys = jax.random.split(jax.random.key(0), 4000)
  idx = jax.jit(jax.vmap(lambda k: policy.vas_sample(k, s, 4)))(keys)
  w = np.bincount(np.asarray(idx[:, :2]).ravel(), minlength=4) / idx[:, :2].size
  expected = np.asarray(s / s.sum())
  assert np.all(
    np.abs(w - expected) < 4 * np.sqrt(expected * (1 - expected) / idx[:, :2].size) + 1e-9
  )
  assert all(len(set(row)) == 2 for row in np.asarray(idx[:, 2:]).tolist())
  # distinct-n against a set of tuples
  toks = jax.random.randint(jax.random.key(1), (3, 4, 5), 0, 3)
  got = policy.distinct_n(toks, 2)
  for pr in range(3):
    grams = [tuple(row[i : i + 2]) for row in np.asarray(toks[pr]).tolist() for i in range(4)]
    assert abs(float(got[pr]) - len(set(grams)) / len(grams)) < 1e-6
  with pytest.raises(ValueError, match="rewards"):
    policy.vas_scores(jnp.asarray([[0.5, 1.5]]))
  with pytest.raises(ValueError, match="rewards"):
    policy.vas_scores(jnp.zeros((2, 0)))
  with pytest.raises(ValueError, match="diversity"):
    policy.vas_scores(r, weights=(1.0, 0.5))
  with pytest.raises(ValueError, match="mixture_ratio"):
    policy.vas_sample(jax.random.key(0), s, 4, mixture_ratio=1.5)
