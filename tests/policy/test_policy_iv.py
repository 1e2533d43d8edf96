"""PACS, UPGE, CurES and Reinforce-Ada's advantages against hand derivations and exact truths."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from gradlab import policy, tasks

# A tabular policy over V^L = 9 sequences; a batch of B = 2 prompts x G = 4 responses.
V, L = 3, 2
SEQS = jnp.asarray(policy.all_sequences(V, L))
IDX = np.array([[0, 4, 8, 5], [1, 1, 7, 3]])
Y = SEQS[IDX]  # [2, 4, 2]
R = jnp.asarray([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])


@pytest.fixture(scope="module")
def tabular():
  @jax.jit
  def setup():
    params = policy.init_tabular(jax.random.key(0), V, L, scale=1.0)
    ref = policy.init_tabular(jax.random.key(1), V, L, scale=1.0)
    flat, unravel = ravel_pytree(params)
    # the exact score of every response, d log pi(y_i) / d theta: [2, 4, num_params]
    score = jax.jacobian(lambda f: policy.tabular_token_logp(unravel(f), Y).sum(-1))(flat)
    return params, policy.tabular_token_logp(ref, Y), flat, score

  params, ref_logp, flat, score = setup()
  unravel = ravel_pytree(params)[1]
  return params, ref_logp, flat, unravel, np.asarray(score, np.float64)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------- PACS -------
def test_pacs_gradient_is_the_policy_gradient_with_an_implicit_critic(tabular):
  params, ref_logp, flat, unravel, score = tabular
  beta, mask = 2.0, jnp.ones(Y.shape)

  def loss(f):
    lp = policy.tabular_token_logp(unravel(f), Y)
    return policy.pacs_loss(R, lp, ref_logp, beta=beta, mask=mask, baseline="none")

  grad = np.asarray(jax.jit(jax.grad(loss))(flat))
  # hand-derived: dL/dtheta = -(1/N) sum_i beta (r_i - sigmoid(beta log pi/pi_ref)) grad log pi
  lp = np.asarray(policy.tabular_token_logp(params, Y), np.float64).sum(-1)
  h = beta * (lp - np.asarray(ref_logp, np.float64).sum(-1))
  coef = beta * (np.asarray(R) - _sigmoid(h))
  expected = -np.einsum("bg,bgp->p", coef, score) / R.size
  # float32 rounding: O(1) terms, a few ulps each, summed over 8 responses
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
  assert np.abs(expected).max() > 0.05  # a gradient, not zeros


def _official_pacs_loss(r, lp, lr, beta):
  """A line-by-line NumPy copy of ritzz-ai/PACS compute_pacs_loss (rloo, use_weight, question)."""
  reward = beta * (lp - lr).sum(-1, keepdims=True)  # compute_reward, method "1"
  n = r.shape[1]
  reward = reward.reshape(-1, n, 1)
  total = reward.sum(1, keepdims=True).repeat(n, 1)
  adv = (reward - (total - reward) / (n - 1)).reshape(-1, 1)  # compute_rloo_outcome_advantage
  labels = r.reshape(-1)
  weight = np.ones_like(labels)
  for i in range(0, len(labels), n):  # compute_weight, mode "question"
    chunk = labels[i : i + n]
    if len(set(chunk.tolist())) > 1:
      classes, counts = np.unique(chunk, return_counts=True)
      w = dict(zip(classes, len(chunk) / (len(classes) * counts)))  # sklearn "balanced"
      weight[i : i + n] = [w[c] for c in chunk]
  x, y = adv[:, 0], labels
  bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))  # BCEWithLogitsLoss
  return float(np.mean(weight * bce))


def test_pacs_rloo_balanced_matches_the_official_loss_and_its_advantages(tabular):
  params, ref_logp, flat, unravel, score = tabular
  beta, mask = 1.0, jnp.ones(Y.shape)
  kw = dict(beta=beta, mask=mask, baseline="rloo", balance=True)
  lp_fn = lambda g: policy.tabular_token_logp(unravel(g), Y)

  @jax.jit
  def run(f):
    lp = lp_fn(f)
    value, grad = jax.value_and_grad(lambda g: policy.pacs_loss(R, lp_fn(g), ref_logp, **kw))(f)
    adv = policy.pacs_advantages(R, lp, ref_logp, **kw)
    pg = jax.grad(
      lambda g: policy.policy_gradient_loss(lp_fn(g), adv, mask, aggregation="seq_mean_token_sum")
    )(f)
    return value, grad, adv, pg

  value, grad, adv, pg = (np.asarray(x, np.float64) for x in run(flat))
  lp = np.asarray(policy.tabular_token_logp(params, Y), np.float64)
  lr = np.asarray(ref_logp, np.float64)
  # float32 rounding of an O(1) loss
  np.testing.assert_allclose(value, _official_pacs_loss(np.asarray(R), lp, lr, beta), rtol=1e-6)
  # the advantages, by hand: RLOO of the weighted residual u = w (r - sigmoid(psi))
  h = beta * (lp - lr).sum(-1)
  psi = h - (h.sum(1, keepdims=True) - h) / 3
  w = np.array([[1.0, 1.0, 1.0, 1.0], [4 / 6, 4 / 2, 4 / 6, 4 / 6]])  # group 0: 2 and 2
  u = w * (np.asarray(R) - _sigmoid(psi))
  np.testing.assert_allclose(adv, beta * (u - (u.sum(1, keepdims=True) - u) / 3), rtol=1e-5)
  # and the policy gradient with them is PACS's gradient (float32 rounding)
  np.testing.assert_allclose(grad, pg, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad, -np.einsum("bg,bgp->p", adv, score) / 8, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- UPGE -------
@pytest.fixture(scope="module")
def tokens(tabular):
  params, _, flat, unravel, _ = tabular

  @jax.jit
  def setup(params):
    keys = jax.random.split(jax.random.key(2), L)
    old_params = [t + 0.6 * jax.random.normal(k, t.shape) for t, k in zip(params, keys)]
    return policy.tabular_token_logp(old_params, Y), jax.random.normal(jax.random.key(3), R.shape)

  old, adv = setup(params)
  mask = jnp.asarray([[[1, 1], [1, 0], [1, 1], [1, 1]], [[1, 1], [1, 1], [0, 1], [1, 1]]], float)
  return flat, unravel, old, mask, adv


def test_upge_ppo_and_grpo_equal_the_gradients_of_their_losses(tokens):
  flat, unravel, old, mask, adv = tokens
  lp_fn = lambda f: policy.tabular_token_logp(unravel(f), Y)
  clip = dict(eps_low=0.2, eps_high=0.28, dual_clip=1.3)

  def upge(parts_fn, aggregation):
    return jax.grad(
      lambda g: policy.upge_loss(lp_fn(g), parts_fn(lp_fn(g)), mask, aggregation=aggregation)
    )

  a_grpo = policy.grpo_advantages(R)

  @jax.jit
  def grads(f):
    ppo = jax.grad(lambda g: policy.ppo_clip_loss(lp_fn(g), old, adv, mask, **clip))(f)
    u_ppo = upge(lambda lp: policy.upge_ppo(lp, old, adv, mask, **clip), "token_mean")(f)
    grpo = jax.grad(
      lambda g: policy.ppo_clip_loss(lp_fn(g), old, a_grpo, mask, **clip, aggregation="constant")
    )(f)
    u_grpo = upge(lambda lp: policy.upge_grpo(lp, old, R, mask, **clip), "constant")(f)
    stable = policy.ppo_stable_mask(lp_fn(f), old, adv, mask, **clip)
    return ppo, u_ppo, grpo, u_grpo, stable

  ppo, u_ppo, grpo, u_grpo, stable = (np.asarray(x) for x in grads(flat))
  # the mask matters: 4 of the 14 tokens lose their gradient on this draw (twice
  # A < 0 with rho < 1 - eps_l, once A > 0 with rho > 1 + eps_h, once the dual clip)
  m = np.asarray(mask)
  assert (stable * m).sum() == m.sum() - 4
  # float32 rounding: each gradient is a sum of 14 O(1) terms
  np.testing.assert_allclose(u_ppo, ppo, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(u_grpo, grpo, rtol=1e-5, atol=1e-7)
  assert np.abs(ppo).max() > 0.01


def test_upge_sft_grpo_on_policy_and_online_dpo(tokens, tabular):
  flat, unravel, _, _, _ = tokens
  ref_logp = tabular[1]
  lp_fn = lambda f: policy.tabular_token_logp(unravel(f), Y)
  ones = jnp.ones(Y.shape)
  on = lp_fn(flat)  # the rollout policy is the current one
  pairs = Y[:, :2]  # [2, 2, 2]: chosen, rejected
  lp_pairs = lambda f: policy.tabular_token_logp(unravel(f), pairs)
  beta = 0.5

  @jax.jit
  def grads(f):
    sft = jax.grad(lambda g: -jnp.mean(jnp.sum(lp_fn(g), -1)))(f)  # the SFT log-likelihood
    u_sft = jax.grad(
      lambda g: policy.upge_loss(
        lp_fn(g), policy.upge_sft(lp_fn(g), ones), ones, aggregation="seq_mean_token_sum"
      )
    )(f)
    grpo = jax.grad(
      lambda g: policy.policy_gradient_loss(lp_fn(g), policy.grpo_advantages(R), ones)
    )(f)
    u_grpo = jax.grad(
      lambda g: policy.upge_loss(
        lp_fn(g), policy.upge_grpo(lp_fn(g), on, R, ones), ones, aggregation="seq_mean_token_sum"
      )
    )(f)

    def dpo_loss(g):
      h = jnp.sum(lp_pairs(g) - ref_logp[:, :2], -1)
      return -jnp.mean(jax.nn.log_sigmoid(beta * (h[:, 0] - h[:, 1])))

    dpo = jax.grad(dpo_loss)(f)
    m2 = jnp.ones(pairs.shape)
    u_dpo = jax.grad(
      lambda g: policy.upge_loss(
        lp_pairs(g),
        policy.upge_dpo(lp_pairs(g), ref_logp[:, :2], m2, beta=beta),
        m2,
        aggregation="seq_mean_token_sum",
      )
    )(f)
    return sft, u_sft, grpo, u_grpo, dpo, u_dpo

  sft, u_sft, grpo, u_grpo, dpo, u_dpo = (np.asarray(x) for x in grads(flat))
  # float32 rounding of sums of 8 O(1) terms
  np.testing.assert_allclose(u_sft, sft, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(u_grpo, grpo, rtol=1e-5, atol=1e-6)
  # DPO's loss averages over the B pairs, UPGE's aggregation over the 2B responses
  np.testing.assert_allclose(2 * u_dpo, dpo, rtol=1e-5, atol=1e-7)
  assert min(np.abs(g).max() for g in (sft, grpo, dpo)) > 0.01


# ---------------------------------------------------------------- CurES ------
@pytest.fixture(scope="module")
def bandit():
  pop = tasks.bandit.beta_population(4, 1.0, 2.0, outcomes=4, correct=2)
  z = np.exp(np.asarray(pop.logits, np.float64))
  probs = z / z.sum(1, keepdims=True)  # [P, K]
  p = probs[:, : pop.correct].sum(1)
  k = probs.shape[1]
  g = np.eye(k)[None] - probs[:, None]  # score of outcome y: e_y - pi, [P, K(y), K]
  r = (np.arange(k) < pop.correct).astype(float)
  # the exact variance of one rollout's (r - p) g, by enumeration over the K outcomes
  est = (r[None, :] - p[:, None])[..., None] * g
  mean = np.einsum("py,pyk->pk", probs, est)
  var = np.einsum("py,pyk->p", probs, (est - mean[:, None]) ** 2)
  # the exact conditional moments CurES's formula takes
  c, w = probs * r, probs * (1 - r)
  sq = (g**2).sum(-1)
  ec = (c * sq).sum(1) / c.sum(1)
  ew = (w * sq).sum(1) / w.sum(1)
  gap = (
    (np.einsum("py,pyk->pk", c, g) / c.sum(1, keepdims=True))
    - (np.einsum("py,pyk->pk", w, g) / w.sum(1, keepdims=True))
  ) ** 2
  return p, var, ec, ew, gap.sum(1)


def test_cures_variance_is_the_exact_rollout_variance_on_the_bandit(bandit):
  p, var, ec, ew, gap = bandit
  got = jax.jit(policy.cures_variance)(p, ec, ew, gap)
  # float32 rounding of O(0.1) quantities
  np.testing.assert_allclose(np.asarray(got), var, rtol=1e-5, atol=1e-7)


def test_cures_allocation_is_the_integer_argmin(bandit):
  var = bandit[1]
  budget, minimum, n = 11, 1, len(var)
  best, best_value = None, np.inf
  for counts in itertools.product(range(minimum, budget + 1), repeat=n):
    if sum(counts) == budget:
      value = np.sum(var / np.asarray(counts))
      if value < best_value - 1e-12:
        best, best_value = counts, value
  alloc = jax.jit(lambda v: policy.cures_allocation(v, budget, minimum=minimum))(var)
  np.testing.assert_array_equal(np.asarray(alloc), best)
  assert len(set(best)) > 1  # the prompts do get different budgets
  prop = np.asarray(policy.cures_allocation(var, budget, rounding="proportional"))
  assert prop.sum() == budget and prop.min() >= minimum
  assert np.sum(var / prop) >= best_value * (1 - 1e-6)


def test_cures_sampling_probs_match_the_official_sampler():
  successes = np.array([0, 3, 8, 5, 1], np.float32)
  trials = np.array([4, 8, 8, 12, 16], np.float32)
  got = np.asarray(jax.jit(policy.cures_sampling_probs)(successes, trials))
  # ZexuSun/CurES epic/epic_sampler.py, update_difficulty and __iter__, line by line
  difficulty = (successes + 1) / (successes + 1 + trials - successes + 1)  # Beta(a + 1, b + 1) mean
  t_vec = (successes + 1) / 1e-2
  scores = np.exp(np.sqrt(difficulty * (1 - difficulty)) / t_vec)
  np.testing.assert_allclose(got, scores / scores.sum(), rtol=1e-6)
  tempered = np.asarray(policy.cures_sampling_probs(successes, trials, temperature=0.1))
  assert np.argmax(tempered) == 3  # 6/14: the one nearest p = 1/2


def test_reinforce_ada_advantages_use_every_sampled_response():
  rewards = jnp.asarray([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
  valid = jnp.asarray([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], bool)
  got = np.asarray(jax.jit(policy.reinforce_ada_advantages)(rewards, valid))
  expected = np.zeros((2, 6))
  for i in range(2):
    v = np.asarray(valid[i])
    x = np.asarray(rewards[i])[v]
    expected[i, v] = (x - x.mean()) / (x.std(ddof=1) + 1e-6)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_bad_input_names_the_argument():
  lp = jnp.zeros((1, 2))
  with pytest.raises(ValueError, match="beta"):
    policy.pacs_loss(jnp.ones((1, 2)), lp, lp, beta=0.0)
  with pytest.raises(ValueError, match="baseline"):
    policy.pacs_loss(jnp.ones((1, 2)), lp, lp, baseline="grpo")
  with pytest.raises(ValueError, match="rewards"):
    policy.pacs_loss(jnp.full((1, 2), 2.0), lp, lp)
  with pytest.raises(ValueError, match="rewards"):
    policy.pacs_loss(jnp.full((1, 2), 0.5), lp, lp, balance=True)
  with pytest.raises(ValueError, match="mask"):
    policy.upge_dpo(jnp.zeros((1, 3, 2)), jnp.zeros((1, 3, 2)), jnp.ones((1, 3, 2)))
  with pytest.raises(ValueError, match="dual_clip"):
    policy.ppo_stable_mask(lp[..., None], lp[..., None], lp, jnp.ones((1, 2, 1)), dual_clip=1.0)
  with pytest.raises(ValueError, match="budget"):
    policy.cures_allocation(jnp.ones(3), 2)
  with pytest.raises(ValueError, match="rounding"):
    policy.cures_allocation(jnp.ones(3), 6, rounding="floor")
  with pytest.raises(ValueError, match="trials"):
    policy.cures_accuracy(jnp.array([3.0]), jnp.array([2.0]))
  with pytest.raises(ValueError, match="temperature"):
    policy.cures_sampling_probs(jnp.ones(2), jnp.ones(2), temperature=0.0)
  with pytest.raises(ValueError, match="sq_norm_wrong"):
    policy.cures_variance(jnp.ones(2) / 2, jnp.ones(2), jnp.ones(3), jnp.ones(2))
