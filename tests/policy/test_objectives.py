"""Objectives, aggregation, allocation and input checks, against hand computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import policy
from gradlab.policy.allocation import round_preserving_sum


def _tokens(seed=0, shape=(2, 3, 5), spread=0.5):
  rng = np.random.default_rng(seed)
  logp = jnp.asarray(-rng.random(shape) * 2, jnp.float32)
  old = logp + jnp.asarray(rng.normal(scale=spread, size=shape), jnp.float32)
  mask = jnp.asarray(rng.random(shape) < 0.8, jnp.float32)
  adv = jnp.asarray(rng.normal(size=shape[:2]), jnp.float32)
  return logp, old, mask, adv


def test_gppo_gradient_differs_from_ppo_only_on_clipped_tokens():
  logp, old, mask, adv = _tokens()
  el, eh = 0.2, 0.28
  per_token = lambda fn: jax.grad(
    lambda lp: fn(lp, old, adv, mask, eps_low=el, eps_high=eh, aggregation="seq_mean_token_sum")
  )(logp)
  g_ppo, g_gppo = per_token(policy.ppo_clip_loss), per_token(policy.gppo_loss)
  n = mask.shape[0] * mask.shape[1]
  ratio = np.exp(np.asarray(logp - old))
  a = np.broadcast_to(np.asarray(adv)[..., None], ratio.shape)
  m = np.asarray(mask)
  high = (a > 0) & (ratio > 1 + eh)
  low = (a < 0) & (ratio < 1 - el)
  clipped = high | low
  assert clipped[m > 0].any() and (~clipped)[m > 0].any()
  inside = -a * ratio * m / n
  np.testing.assert_allclose(
    np.asarray(g_ppo), np.where(clipped, 0.0, inside), rtol=1e-5, atol=1e-7
  )
  expected_gppo = np.where(high, -a * (1 + eh), np.where(low, -a * (1 - el), -a * ratio)) * m / n
  np.testing.assert_allclose(np.asarray(g_gppo), expected_gppo, rtol=1e-5, atol=1e-7)
  # and the values agree (GPPO only changes the backward)
  kw = dict(eps_low=el, eps_high=eh)
  np.testing.assert_allclose(
    float(policy.ppo_clip_loss(logp, old, adv, mask, **kw)),
    float(policy.gppo_loss(logp, old, adv, mask, **kw)),
    rtol=1e-6,
  )


def test_dual_clip_caps_negative_advantage_losses():
  logp, old, mask, adv = _tokens(spread=2.0)
  c = 3.0
  full = policy.ppo_clip_loss(logp, old, adv, mask, dual_clip=c, aggregation="seq_mean_token_sum")
  ratio = np.exp(np.asarray(logp - old))
  a = np.broadcast_to(np.asarray(adv)[..., None], ratio.shape)
  per = np.maximum(-a * ratio, -a * np.clip(ratio, 0.8, 1.2))
  per = np.where(a < 0, np.minimum(per, -a * c), per)
  np.testing.assert_allclose(float(full), np.sum(per * np.asarray(mask)) / 6, rtol=1e-5)


@pytest.mark.parametrize("mode", policy.AGGREGATIONS)
def test_aggregations_match_their_formulas(mode):
  _, _, mask, _ = _tokens()
  loss = jnp.asarray(np.random.default_rng(1).normal(size=mask.shape), jnp.float32)
  l, m = np.asarray(loss), np.asarray(mask)
  expected = {
    "token_mean": (l * m).sum() / m.sum(),
    "seq_mean_token_mean": ((l * m).sum(-1) / m.sum(-1)).mean(),
    "seq_mean_token_sum": (l * m).sum(-1).mean(),
    "constant": (l * m).sum() / (6 * 5),
  }[mode]
  np.testing.assert_allclose(float(policy.aggregate(loss, mask, mode=mode)), expected, rtol=1e-5)


def test_truncated_importance_weights_and_the_token_surrogate():
  logp, old, mask, adv = _tokens(spread=1.0)
  rollout = old + 0.7 * jnp.asarray(np.random.default_rng(2).normal(size=old.shape), jnp.float32)
  w = np.asarray(policy.truncated_is_weights(old, rollout, mask, cap=2.0))
  raw = np.exp(np.asarray(old - rollout))
  np.testing.assert_allclose(w, np.minimum(raw, 2.0) * np.asarray(mask), rtol=1e-5)
  seq = np.asarray(
    policy.truncated_is_weights(old, rollout, mask, cap=2.0, level="sequence", mode="mask")
  )
  prod = np.exp(np.sum(np.asarray(old - rollout) * np.asarray(mask), -1, keepdims=True))
  np.testing.assert_allclose(seq, np.where(prod <= 2.0, prod, 0.0) * np.asarray(mask), rtol=1e-5)
  # the truncated token-level surrogate's gradient: -min(rho, C) A per token
  g = jax.grad(
    lambda lp: policy.policy_gradient_loss(
      lp, adv, mask, behaviour_logp=rollout, is_cap=2.0, aggregation="seq_mean_token_sum"
    )
  )(logp)
  rho = np.exp(np.asarray(logp - rollout))
  a = np.asarray(adv)[..., None]
  np.testing.assert_allclose(
    np.asarray(g), -np.minimum(rho, 2.0) * a * np.asarray(mask) / 6, rtol=1e-5, atol=1e-7
  )


def test_spo_tracker_follows_its_update_rule():
  t = policy.spo_init(jnp.array([2.0, 6.0, 0.0]), 8)
  n0 = 8.0
  np.testing.assert_allclose(np.asarray(t.alpha), n0 * (np.array([2, 6, 0]) + 0.5) / 9, rtol=1e-6)
  ids, r = jnp.array([0, 2, 1]), jnp.array([[1.0], [0.0], [1.0]])
  p = np.asarray(t.alpha / (t.alpha + t.beta))[[0, 2, 1]]
  a = np.array([1.0, 0.0, 1.0]) - p
  np.testing.assert_allclose(
    np.asarray(policy.spo_advantages(t, ids, r))[:, 0],
    (a - a.mean()) / (a.std(ddof=1) + 1e-8),
    rtol=1e-5,
  )
  kl = jnp.array([0.0, 0.06, 1.0])
  t2 = policy.spo_update(t, ids, r, kl)
  rho = np.clip(2.0 ** (-np.asarray(kl) / 0.06), 0.875, 0.96)
  np.testing.assert_allclose(
    np.asarray(t2.alpha)[[0, 2, 1]],
    rho * np.asarray(t.alpha)[[0, 2, 1]] + np.array([1, 0, 1]),
    rtol=1e-6,
  )
  w = np.asarray(policy.spo_sampling_weights(t2))
  assert abs(w.sum() - 1) < 1e-6


def test_bnpo_beta_parameters_by_method_of_moments():
  p = jnp.array([0.1, 0.2, 0.4, 0.9])
  prm = policy.bnpo_beta_params(p)
  mu, var = float(np.mean(p)), float(np.var(np.asarray(p), ddof=1))
  nu = mu * (1 - mu) / var - 1
  np.testing.assert_allclose(float(prm.alpha), max(1, 1 + nu * mu / 3), rtol=1e-5)
  np.testing.assert_allclose(float(prm.beta), max(1, 1 + nu * (1 - mu) / 3), rtol=1e-5)
  # alpha = beta = 3/2 gives GRPO's 1/sqrt(p(1-p)) shape: A ratio between prompts
  r = jnp.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
  a = policy.bnpo_advantages(r, params=policy.BNPOParams(jnp.array(1.5), jnp.array(1.5)))
  from scipy import stats

  for i, ph in enumerate((0.25, 0.5)):
    np.testing.assert_allclose(
      np.asarray(a[i]), (np.asarray(r[i]) - ph) / stats.beta.pdf(ph, 1.5, 1.5), rtol=1e-5
    )


def test_gvm_allocation_is_neyman_and_sums_to_the_budget():
  p = jnp.array([0.05, 0.2, 0.5, 0.9, 0.0])
  g = jnp.array([1.0, 2.0, 1.0, 3.0, 1.0])
  n = np.asarray(policy.gvm_allocation(p, g, 100))
  assert n.sum() == 100 and n[4] == 0
  shares = np.asarray(g[:4]) / np.sqrt(np.asarray(p[:4]) + 1e-3 / np.asarray(p[:4]))
  assert np.all(np.abs(n[:4] - 100 * shares / shares.sum()) < 1.0)
  m = np.asarray(policy.gvm_allocation(p, g, 100, minimum=2))
  assert m.sum() == 100 and m.min() >= 2


def test_reinforce_ada_balanced_selection_and_elimination():
  rewards = jnp.array([[1, 1, 1, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0], [0] * 8], jnp.float32)
  valid = jnp.ones(rewards.shape, bool)
  keep = np.asarray(policy.reinforce_ada_select(rewards, valid, keep=4))
  assert keep.sum(1).tolist() == [4, 4, 4]
  assert (np.asarray(rewards) * keep).sum(1).tolist() == [2, 3, 0]  # balanced where possible
  done = policy.reinforce_ada_done(jnp.array([2, 5, 0]), jnp.array([2, 0, 9]), keep=4)
  assert np.asarray(done).tolist() == [True, False, False]
  # the loop: a prompt that always succeeds never finishes "balanced"; others do
  rates = jnp.array([0.5, 1.0, 0.3])

  def sample(key, active):
    return (jax.random.uniform(key, (3, 8)) < rates[:, None]).astype(jnp.float32)

  r, v, kept, used = policy.reinforce_ada_sample(jax.random.key(0), sample, 3, max_rounds=3)
  assert r.shape == (3, 24) and int(used) <= 72
  assert np.asarray(v)[1].all() and not np.asarray(v)[0].all()  # prompt 1 used every round
  assert np.asarray(kept).sum(1).tolist() == [4, 4, 4]


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: policy.grpo_advantages(jnp.zeros((3, 0))), "empty group"),
    (lambda: policy.rloo_advantages(jnp.zeros((3, 1))), "at least 2"),
    (lambda: policy.grpo_advantages(jnp.zeros((3,))), "batch, group"),
    (lambda: policy.bnpo_advantages(jnp.array([[0.0, 2.0]])), "declared range"),
    (lambda: policy.weighted_reinforce_advantages(jnp.array([[0.0, -1.0]])), "declared range"),
    (lambda: policy.grpo_advantages(jnp.array([[0.0, jnp.nan]])), "finite"),
    (
      lambda: policy.ppo_clip_loss(
        jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 5)), jnp.zeros((2, 3)), jnp.ones((2, 3, 4))
      ),
      "old_logp",
    ),
    (
      lambda: policy.policy_gradient_loss(
        jnp.zeros((2, 3, 4)), jnp.zeros((2, 4)), jnp.ones((2, 3, 4))
      ),
      "advantages",
    ),
    (
      lambda: policy.policy_gradient_loss(
        jnp.zeros((2, 3, 4)), jnp.zeros((2, 3)), jnp.full((2, 3, 4), 0.5)
      ),
      "0 and 1",
    ),
    (lambda: policy.aggregate(jnp.zeros((2, 3, 4)), jnp.ones((2, 3, 4)), mode="mean"), "mode"),
    (
      lambda: policy.truncated_is_weights(
        jnp.zeros((1, 1, 2)), jnp.zeros((1, 1, 2)), jnp.ones((1, 1, 2)), level="word"
      ),
      "level",
    ),
    (lambda: policy.gvm_allocation(jnp.ones(3), jnp.ones(2), 10), "grad_norms"),
    (lambda: round_preserving_sum(jnp.ones(3), 2, minimum=1), "budget"),
  ],
)
def test_bad_input_gets_a_clear_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_estimators_and_losses_jit():
  logp, old, mask, _ = _tokens()
  rewards = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])

  @jax.jit
  def f(logp, old, mask, rewards):
    adv = policy.bnpo_advantages(rewards) + policy.grpo_advantages(rewards)
    return (
      policy.gppo_loss(logp, old, adv, mask)
      + policy.ppo_clip_loss(logp, old, adv, mask)
      + policy.policy_gradient_loss(logp, adv, mask, behaviour_logp=old, is_cap=2.0)
    )

  assert np.isfinite(float(f(logp, old, mask, rewards)))


def test_negative_clip_range_and_nan_success_rates_are_refused():
  mask = jnp.ones((1, 2, 3))
  logp = jnp.zeros((1, 2, 3))
  with pytest.raises(ValueError, match="eps_low: expected a number in \\[0, 1\\)"):
    policy.ppo_clip_loss(logp, logp, jnp.ones((1, 2)), mask, eps_low=-1.0)
  with pytest.raises(ValueError, match="eps_high: expected a finite value >= 0"):
    policy.gppo_loss(logp, logp, jnp.ones((1, 2)), mask, eps_high=-0.1)
  with pytest.raises(ValueError, match="accept_rates: expected probabilities in \\[0, 1\\]"):
    policy.gvm_allocation(jnp.array([0.5, jnp.nan]), jnp.ones(2), 8)
  with pytest.raises(ValueError, match="accept_rates: expected probabilities"):
    policy.gvm_allocation(jnp.array([0.5, 1.5]), jnp.ones(2), 8)
