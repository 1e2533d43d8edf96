"""KL estimators, GSPO, CISPO, DAPO shaping, batch scaling, entropy selection, against exact truths.

Tolerances: every check is float32 arithmetic on O(1) values. "A few ulps x
problem size": eps32 = 1.2e-7, so a sum or enumeration over n terms gets
atol ~ n * 1.2e-7 (9 sequences: 1e-6; 81 groups: 1e-5), and a closed form of a
few operations rtol 1e-5.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from gradlab import policy

V, T = 3, 2
SEQS = jnp.asarray(policy.all_sequences(V, T))  # 9 sequences
SEQS1 = jnp.asarray(policy.all_sequences(V, 1))  # 3 one-token sequences
TOL_9 = dict(rtol=1e-5, atol=1e-6)  # 9-term enumeration
TOL_81 = dict(rtol=1e-4, atol=1e-5)  # 81-group enumeration


def _flat(tree):
  return ravel_pytree(tree)[0]


def _tokens(seed=0, shape=(2, 3, 5), spread=0.5):
  """NumPy float32 arrays (no eager JAX ops): logp, old_logp, mask, advantages."""
  rng = np.random.default_rng(seed)
  logp = (-rng.random(shape) * 2).astype(np.float32)
  old = (logp + rng.normal(scale=spread, size=shape)).astype(np.float32)
  mask = np.asarray(rng.random(shape) < 0.8, np.float32)
  mask[..., 0] = 1.0  # every response has a token
  adv = rng.normal(size=shape[:2]).astype(np.float32)
  return logp, old, mask, adv


# ------------------------------------------------------------ KL estimators --


def _verl_kl_penalty_forward(logprob, ref_logprob, kind):
  """verl/trainer/ppo/core_algos.py kl_penalty_forward, line by line in NumPy."""
  if kind in ("kl", "k1"):
    return logprob - ref_logprob
  if kind == "abs":
    return np.abs(logprob - ref_logprob)
  if kind in ("mse", "k2"):
    return 0.5 * np.square(logprob - ref_logprob)
  kl = np.clip(ref_logprob - logprob, -20, 20)
  return np.clip(np.exp(kl) - kl - 1, -10, 10)


NAMES = ("k1", "k2", "k3", "abs", "kl", "mse", "low_var_kl", "k1+", "k3+", "abs+")


def test_kl_estimators_match_verl_line_by_line_with_clamps():
  rng = np.random.default_rng(3)
  shape = (2, 2, 6)
  logp = rng.normal(size=shape).astype(np.float32) * 2
  ref = logp + rng.normal(size=shape).astype(np.float32) * 2
  ref[0, 0, :3] = logp[0, 0, :3] + np.array([25.0, 3.0, -30.0], np.float32)  # both clamps act
  mask = (rng.random(shape) < 0.8).astype(np.float32)
  mask[0, 0, :3] = 1.0

  @jax.jit
  def values_and_grads(lp):
    out = {}
    for name in NAMES:
      f = lambda x, name=name: jnp.sum(policy.kl_estimate(x, ref, mask, estimator=name))
      out[name] = (policy.kl_estimate(lp, ref, mask, estimator=name), jax.grad(f)(lp))
    return out, policy.kl_estimate(lp, ref, mask, value_clamp=None)

  out, no_value_clamp = values_and_grads(logp)
  u = logp - ref
  for name in NAMES:
    value, grad = out[name]
    base = name.rstrip("+")
    np.testing.assert_allclose(
      np.asarray(value), _verl_kl_penalty_forward(logp, ref, base) * mask, rtol=1e-5, atol=1e-6
    )
    if name.endswith("+"):  # verl's straight-through: k2's gradient, u
      np.testing.assert_allclose(np.asarray(grad), u * mask, rtol=1e-5, atol=1e-6)
  k3 = np.asarray(out["k3"][0])[0, 0, :3]
  assert k3[0] == 10.0 and k3[2] == 10.0  # log r = 25 and -30: the value clamp
  # log r = -30 clamped to -20: e^-20 + 20 - 1 (unclamped it would be 29)
  np.testing.assert_allclose(float(no_value_clamp[0, 0, 2]), 19.0, rtol=1e-6)


def _tables(seed, length, scale=1.0):
  """Tabular logits (NumPy-drawn: no eager JAX ops) of shape [V ** t, V] for t < length."""
  rng = np.random.default_rng(seed)
  return [jnp.asarray(scale * rng.normal(size=(V**t, V)), jnp.float32) for t in range(length)]


def _prefix_kl(params, ref, *, reverse, freeze):
  """sum_t sum_prefix P_t(prefix) KL_t(prefix) from the tables; P_t held fixed if `freeze`."""
  prefix_p = jnp.ones((1,))
  total = 0.0
  for theta, rho in zip(params, ref):
    lp, lq = jax.nn.log_softmax(theta, -1), jax.nn.log_softmax(rho, -1)
    kl = jnp.sum(jnp.exp(lq) * (lq - lp), -1) if reverse else jnp.sum(jnp.exp(lp) * (lp - lq), -1)
    w = jax.lax.stop_gradient(prefix_p) if freeze else prefix_p
    total = total + jnp.sum(w * kl)
    prefix_p = (prefix_p[:, None] * jnp.exp(lp)).reshape(-1)
  return total


KL_LOSSES = ("k1", "k2", "k3", "k3+")


@jax.jit
def _kl_oracle(params, ref, seqs):
  """By enumeration of `seqs` (all sequences): for each estimator its per-sequence sums,
  E_{y~pi}[sum_t k_t] and the expected loss gradient (y fixed, no score term); the
  table-side truths (the KLs and their gradients, full and with frozen prefixes); and
  the score-function gradient of k1 used as a detached reward."""
  p = jax.lax.stop_gradient(jnp.exp(policy.tabular_token_logp(params, seqs).sum(-1)))
  ref_logp = policy.tabular_token_logp(ref, seqs)[None]
  mask = jnp.ones(ref_logp.shape)

  def per_sequence(prm, name):
    logp = policy.tabular_token_logp(prm, seqs)[None]
    # unclamped: verl's value clamp at 10 (tested above) biases k3 where pi_ref/pi > 13.6
    k = policy.kl_estimate(
      logp, ref_logp, mask, estimator=name, log_ratio_clamp=None, value_clamp=None
    )
    return k[0].sum(-1)

  out = {}
  for name in KL_LOSSES:
    value, grad = jax.value_and_grad(lambda q, n=name: jnp.sum(p * per_sequence(q, n)))(params)
    out[name] = (per_sequence(params, name), value, _flat(grad))
  for reverse in (False, True):
    for freeze in (False, True):
      f = functools.partial(_prefix_kl, ref=ref, reverse=reverse, freeze=freeze)
      value, grad = jax.value_and_grad(f)(params)
      out[("rev" if reverse else "fwd") + ("_frozen" if freeze else "")] = (value, _flat(grad))

  def score(prm):
    logp = policy.tabular_token_logp(prm, seqs).sum(-1)
    return jnp.sum(p * jax.lax.stop_gradient(per_sequence(params, "k1")) * logp)

  out["score"] = _flat(jax.grad(score)(params))
  out["p"] = p
  return out


@pytest.fixture(scope="module")
def kl_oracles():
  near = _tables(2, 1)
  return {
    "two": _kl_oracle(_tables(6, T), _tables(7, T), SEQS),
    "one": _kl_oracle(_tables(4, 1), _tables(5, 1), SEQS1),
    "near": _kl_oracle(near, [near[0] + 0.3 * _tables(3, 1)[0]], SEQS1),
  }


def test_kl_estimator_expectations_and_variances_by_enumeration(kl_oracles):
  two = kl_oracles["two"]
  p = np.asarray(two["p"], np.float64)
  kl_seq = np.sum(p * np.asarray(two["k1"][0], np.float64))  # sum_y pi(y) log(pi(y)/ref(y))
  np.testing.assert_allclose(float(two["fwd"][0]), kl_seq, **TOL_9)  # from the tables
  for name in ("k1", "k3"):  # unbiased for the sequence KL
    np.testing.assert_allclose(float(two[name][1]), kl_seq, **TOL_9)
  # one token: E[k2] = E[u^2]/2 = (Var(u) + KL^2)/2, u = log pi - log ref = k1
  for key in ("one", "near"):
    o = kl_oracles[key]
    pi = np.asarray(o["p"], np.float64)
    u = np.asarray(o["k1"][0], np.float64)
    kl, var_u = pi @ u, pi @ u**2 - (pi @ u) ** 2
    np.testing.assert_allclose(float(o["k2"][1]), (var_u + kl**2) / 2, **TOL_9)
  # near the reference, k3 (>= 0, unbiased) has several times less variance than k1: exact
  near = kl_oracles["near"]
  pi = np.asarray(near["p"], np.float64)
  k1, k3 = (np.asarray(near[n][0], np.float64) for n in ("k1", "k3"))
  assert np.all(k3 >= 0)
  np.testing.assert_allclose(pi @ k3, pi @ k1, **TOL_9)
  var1, var3 = pi @ k1**2 - (pi @ k1) ** 2, pi @ k3**2 - (pi @ k3) ** 2
  assert var3 < 0.2 * var1


def test_kl_loss_gradients_by_enumeration(kl_oracles):
  # one token: k1 -> 0, k2 (and k3+) -> grad KL(pi||ref), k3 -> grad KL(ref||pi)
  one = kl_oracles["one"]
  np.testing.assert_allclose(one["k1"][2], 0.0, atol=1e-6)
  np.testing.assert_allclose(one["k2"][2], one["fwd"][1], **TOL_9)
  np.testing.assert_allclose(one["k3+"][2], one["fwd"][1], **TOL_9)
  np.testing.assert_allclose(one["k3"][2], one["rev"][1], **TOL_9)
  # two tokens: the per-token gradient at each prefix, the prefix distribution held fixed
  two = kl_oracles["two"]
  np.testing.assert_allclose(two["k1"][2], 0.0, atol=1e-6)
  np.testing.assert_allclose(two["k2"][2], two["fwd_frozen"][1], **TOL_9)
  np.testing.assert_allclose(two["k3"][2], two["rev_frozen"][1], **TOL_9)
  # ... which is not the sequence KL's gradient
  assert np.max(np.abs(np.asarray(two["k2"][2] - two["fwd"][1]))) > 1e-2
  # k1 as a detached reward through the score function is the sequence KL's gradient
  np.testing.assert_allclose(two["score"], two["fwd"][1], **TOL_9)


# --------------------------------------------------------------- GSPO, CISPO --


def _verl_gspo_value(old, logp, adv, mask, el, eh):
  """verl compute_policy_loss_gspo (value), line by line in NumPy."""
  nkl = logp - old
  seq_len = np.maximum(mask.sum(-1), 1)
  nkl_seq = (nkl * mask).sum(-1) / seq_len
  log_s = np.minimum(logp - logp + nkl_seq[..., None], 10.0)
  s = np.exp(log_s)
  a = adv[..., None]
  losses = np.maximum(-a * s, -a * np.clip(s, 1 - el, 1 + eh))
  seq = (losses * mask).sum(-1) / (mask.sum(-1) + 1e-8)  # agg_loss seq-mean-token-mean
  return seq.mean()


def test_gspo_gradients_by_hand_and_the_token_form():
  logp, old, mask, adv = _tokens(seed=1, spread=0.3)
  el, eh = 0.1, 0.15
  n = 6
  m = np.asarray(mask)
  length = m.sum(-1, keepdims=True)
  s = np.exp((np.asarray(logp - old) * m).sum(-1, keepdims=True) / length)
  a = np.asarray(adv)[..., None]
  clipped = ((a > 0) & (s > 1 + eh)) | ((a < 0) & (s < 1 - el))
  assert clipped.any() and (~clipped).any()
  a_tok = np.random.default_rng(9).normal(size=m.shape).astype(np.float32)

  @jax.jit
  def run(logp, old):
    kw = dict(eps_low=el, eps_high=eh)
    out = {}
    for token_level in (False, True):
      for name, a_ in (("resp", adv), ("tok", a_tok)):
        f = lambda lp, tl=token_level, a_=a_: policy.gspo_loss(
          lp, old, a_, mask, token_level=tl, **kw
        )
        out[token_level, name] = jax.value_and_grad(f)(logp)
    on_policy = jax.grad(lambda lp: policy.gspo_loss(lp, jax.lax.stop_gradient(lp), adv, mask))
    pg = jax.grad(
      lambda lp: policy.policy_gradient_loss(lp, adv, mask, aggregation="seq_mean_token_mean")
    )
    return out, on_policy(logp), pg(logp)

  out, g_on, g_pg = run(logp, old)
  hand = np.where(clipped, 0.0, -a * s) * m / (n * length)
  np.testing.assert_allclose(np.asarray(out[False, "resp"][1]), hand, rtol=1e-5, atol=1e-7)
  # GSPO-token = GSPO when the advantage is the response's: same value and gradient
  np.testing.assert_allclose(float(out[True, "resp"][0]), float(out[False, "resp"][0]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out[True, "resp"][1]), hand, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
    float(out[False, "resp"][0]),
    _verl_gspo_value(np.asarray(old), np.asarray(logp), np.asarray(adv), m, el, eh),
    rtol=1e-5,
  )
  # per-token advantages: GSPO-token's gradient is -A_{i,t} s_i / (N |y_i|) where unclipped
  at = np.asarray(a_tok)
  clipped_t = ((at > 0) & (s > 1 + eh)) | ((at < 0) & (s < 1 - el))
  hand_t = np.where(clipped_t, 0.0, -at * s) * m / (n * length)
  np.testing.assert_allclose(np.asarray(out[True, "tok"][1]), hand_t, rtol=1e-5, atol=1e-7)
  assert np.max(np.abs(np.asarray(out[False, "tok"][1]) - hand_t)) > 1e-3  # the forms differ
  # at pi = pi_old: the sequence-mean policy gradient
  np.testing.assert_allclose(np.asarray(g_on), np.asarray(g_pg), rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(np.asarray(g_on), -a * m / (n * length), rtol=1e-6, atol=1e-8)


def test_cispo_clips_the_weight_and_is_truncated_is_reinforce():
  ratios = np.array([0.3, 0.79, 0.8, 1.0, 1.19, 1.2, 1.5, 4.0], np.float32)
  logp = -np.linspace(0.2, 2.0, 8, dtype=np.float32).reshape(1, 2, 4)
  old = logp - np.log(ratios).reshape(1, 2, 4)
  adv = np.asarray([[1.5, -0.7]], np.float32)
  mask = np.ones((1, 2, 4), np.float32)

  @jax.jit
  def grads(logp):
    g = lambda f: jax.grad(f)(logp)
    return (
      g(lambda lp: policy.cispo_loss(lp, old, adv, mask, eps_high=0.2)),
      g(lambda lp: policy.cispo_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.2)),
      g(
        lambda lp: policy.policy_gradient_loss(
          lp, adv, mask, behaviour_logp=old, is_cap=1.2, aggregation="token_mean"
        )
      ),
      policy.cispo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.2),
    )

  g_upper, g_both, g_tis, value = grads(logp)
  a = np.broadcast_to(np.asarray(adv)[..., None], (1, 2, 4))
  rho = ratios.reshape(1, 2, 4)
  np.testing.assert_allclose(np.asarray(g_upper), -np.minimum(rho, 1.2) * a / 8, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g_both), -np.clip(rho, 0.8, 1.2) * a / 8, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g_upper), np.asarray(g_tis), rtol=1e-5, atol=1e-8)
  # verl compute_policy_loss_cispo's value: token-mean of -sg(clip(ratio)) * A * log_prob
  expected = np.mean(-np.clip(rho, 0.8, 1.2) * a * np.asarray(logp))
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)


G = 2
REWARD = jnp.asarray(np.random.default_rng(0).random(V**T), jnp.float32)


@jax.jit
def _on_policy_group_gradients(params):
  """E[gradient] of GSPO and CISPO over all 81 ordered groups of G = 2, and grad J."""
  probs = jnp.exp(policy.tabular_token_logp(params, SEQS).sum(-1))

  def estimate(idx):
    y, r = SEQS[idx], REWARD[idx][None]
    adv = policy.rloo_advantages(r)
    mask = jnp.ones((1, G, T))

    def grad(loss):
      def f(prm):
        logp = policy.tabular_token_logp(prm, y)[None]
        return loss(logp, jax.lax.stop_gradient(logp), adv, mask)

      return _flat(jax.grad(f)(params))

    return jnp.stack([grad(policy.gspo_loss), grad(policy.cispo_loss)])

  truth = _flat(jax.grad(policy.exact_objective)(params, SEQS, REWARD))
  return policy.expected_group_estimate(estimate, V**T, probs, G), truth


def test_gspo_and_cispo_on_policy_expected_gradients_are_the_length_normalized_gradient():
  expected, truth = map(np.asarray, _on_policy_group_gradients(_tables(8, T)))
  # RLOO is unbiased; with |y| = T fixed both are -grad J / T in expectation (81 groups)
  for row in expected:
    np.testing.assert_allclose(-row, truth / T, **TOL_81)


def test_cispo_off_policy_one_token_is_unbiased_without_truncation():
  params, behaviour = _tables(10, 1), _tables(11, 1)
  reward = jnp.asarray([1.0, 0.2, -0.5])

  @jax.jit
  def expected_and_truth(prm):
    old = policy.tabular_token_logp(behaviour, SEQS1).T[None]  # [1, 1, 3]
    q = jnp.exp(old[0, 0])  # the samples come from pi_old

    # the 3 one-token samples side by side on the time axis, each weighted by its sampling
    # probability through the advantage: the loss is E_q[-sg(min(rho, C)) r log pi] exactly
    def loss(p_):
      logp = policy.tabular_token_logp(p_, SEQS1).T[None]
      weighted = (reward * q)[None, None, :]
      mask = jnp.ones(logp.shape)
      return policy.cispo_loss(
        logp, old, weighted, mask, eps_high=1e6, aggregation="constant", constant=1.0
      )

    truth = jax.grad(policy.exact_objective)(prm, SEQS1, reward)
    return _flat(jax.grad(loss)(prm)), _flat(truth)

  expected, truth = map(np.asarray, expected_and_truth(params))
  np.testing.assert_allclose(-expected, truth, **TOL_9)


# ------------------------------------------------------------------ DAPO ------


def test_overlong_penalty_matches_the_dapo_reward_manager():
  lengths = np.array([[0, 10, 12, 13], [16, 19, 20, 25]])
  max_len, buffer, factor = 20, 8, 0.5
  got = np.asarray(
    jax.jit(
      functools.partial(
        policy.overlong_penalty, max_length=max_len, cache_length=buffer, penalty_factor=factor
      )
    )(lengths)
  )
  # verl/workers/reward_manager/dapo.py, line by line
  expected_len = max_len - buffer
  verl = np.minimum(-(lengths - expected_len) / buffer * factor, 0)
  inside = lengths <= max_len
  np.testing.assert_allclose(got[inside], verl[inside], rtol=1e-6)
  np.testing.assert_allclose(got[~inside], -factor)  # DAPO eq. 13 beyond L_max
  assert got[0, 2] == 0.0 and got[1, 2] == -factor


def _verl_dynamic_sampling(rewards, size):
  """recipe/dapo/dapo_ray_trainer.py: keep std > 0 or len == 1, then the first `size` prompts."""
  kept = [i for i, g in enumerate(rewards) if np.std(g) > 0 or len(g) == 1]
  return kept, kept[:size]


def test_dynamic_sampling_truncation_mask_and_the_token_mean_rescale():
  rewards = np.asarray([[1, 1, 1], [0, 1, 0], [0, 0, 0], [1, 0, 1], [2, 2, 2]], np.float32)
  logp, _, mask, _ = _tokens(seed=4, shape=(5, 3, 4))
  truncated = np.zeros((5, 3), bool)
  truncated[0, 1] = truncated[3, 2] = True

  @jax.jit
  def run(rewards, logp, mask):
    ds = policy.dynamic_sampling(rewards, size=3)
    single = policy.dynamic_sampling(rewards[:, :1]).keep
    adv = policy.grpo_advantages(rewards)
    kept_mask = mask * ds.keep[:, None, None]
    loss = lambda lp, m: policy.policy_gradient_loss(lp, adv, m, aggregation="token_mean")
    g = jax.vmap(jax.grad(loss), in_axes=(None, 0))(logp, jnp.stack([mask, kept_mask]))
    return ds, single, g, jnp.sum(mask) / jnp.sum(kept_mask), policy.mask_truncated(mask, truncated)

  ds, single, g, scale, m2 = run(rewards, logp, mask)
  kept, first = _verl_dynamic_sampling(rewards, 3)
  assert np.flatnonzero(np.asarray(ds.keep)).tolist() == kept == [1, 3]
  assert np.asarray(ds.index)[np.asarray(ds.valid)].tolist() == first
  assert np.asarray(ds.valid).tolist() == [True, True, False]
  assert np.asarray(single).all()  # groups of one are kept
  # zero-variance groups have GRPO advantage 0, so under token_mean filtering them only rescales
  # the gradient by (all tokens) / (kept tokens)
  np.testing.assert_allclose(
    np.asarray(g[1]), float(scale) * np.asarray(g[0]), rtol=1e-5, atol=1e-7
  )
  # overlong filtering: truncated responses leave the mask, the others keep theirs
  m2 = np.asarray(m2)
  assert (m2[truncated] == 0).all() and (m2[~truncated] == mask[~truncated]).all()


# --------------------------------------------------- batch-level reward scale --


def _verl_masked_whiten(values, mask):
  """verl_F.masked_whiten (masked_mean, unbiased masked_var, rsqrt(var + 1e-8))."""
  mean = (values * mask).sum() / (mask.sum() + 1e-8)
  var = ((values - mean) ** 2 * mask).sum() / (mask.sum() + 1e-8)
  var = var * mask.sum() / (mask.sum() - 1)
  return (values - mean) / np.sqrt(var + 1e-8)


def test_batch_scaled_advantages_match_trl_and_verl():
  rng = np.random.default_rng(5)
  r = rng.random((4, 3)).astype(np.float32)
  r[1] = 0.5  # a zero-variance group
  _, _, m, _ = _tokens(seed=6, shape=(4, 3, 5))

  @jax.jit
  def run(r, m):
    return (
      policy.batch_std_advantages(r),
      policy.dr_grpo_advantages(r),
      {b: policy.reinforce_pp_advantages(r, m, baseline=b) for b in ("group", "none")},
      policy.reinforce_pp_advantages(r[:, :1], m[:, :1]),
    )

  got, dr, pp, one = jax.tree.map(np.asarray, run(r, m))
  # TRL GRPOTrainer(scale_rewards="batch"): (r - group mean) / (nanstd(r) + 1e-4), Bessel's std
  std = np.std(r, ddof=1)
  np.testing.assert_allclose(
    got, (r - r.mean(1, keepdims=True)) / (std + 1e-4), rtol=1e-5, atol=1e-7
  )
  # one batch-wide scale: Dr. GRPO's advantages up to a constant
  np.testing.assert_allclose(got, dr / (std + 1e-4), rtol=1e-5, atol=1e-7)
  n = m.sum()
  for baseline, x in (("group", r - r.mean(1, keepdims=True)), ("none", r)):
    ref = _verl_masked_whiten(np.broadcast_to(x[..., None], m.shape), m) * m
    np.testing.assert_allclose(pp[baseline], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pp[baseline].sum() / n, 0.0, atol=1e-6)
    np.testing.assert_allclose((pp[baseline] ** 2).sum() / (n - 1), 1.0, rtol=1e-5)  # unit var
  # groups of one: verl's baseline is 0, so the rewards themselves are whitened
  m1 = m[:, :1]
  ref1 = _verl_masked_whiten(np.broadcast_to(r[:, :1, None], m1.shape), m1) * m1
  np.testing.assert_allclose(one, ref1, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------- high-entropy selection --


def test_token_entropy_and_the_high_entropy_masks():
  rng = np.random.default_rng(7)
  logits = rng.normal(size=(2, 3, 5, 4)).astype(np.float32) * 2
  _, _, mask, adv = _tokens(seed=8, shape=(2, 3, 5))
  m = np.asarray(mask)

  # TRL's own unit test: 10 valid tokens, rho = 0.2 keeps 0.9 and 1.0 (1.1, 1.2 are padding)
  ent = np.asarray([[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]]], np.float32)
  pad = np.asarray([[[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]], np.float32)

  @jax.jit
  def run(logits):
    h = policy.token_entropy(logits, temperature=0.7)
    sel = policy.high_entropy_mask(h, mask, top_fraction=0.2)
    q = policy.high_entropy_mask(h, mask, top_fraction=0.2, method="quantile")
    lp = jax.nn.log_softmax(logits / 0.7)[..., 0]
    g = jax.grad(
      lambda x: policy.policy_gradient_loss(x, adv, mask * sel, aggregation="token_mean")
    )(lp)
    trl = [
      policy.high_entropy_mask(ent, pad, top_fraction=0.2, method=md)
      for md in ("top_k", "quantile")
    ]
    return h, sel, q, g, jnp.stack(trl)

  h, sel, q, g, trl = map(np.asarray, run(logits))
  p = np.exp(logits / 0.7) / np.exp(logits / 0.7).sum(-1, keepdims=True)
  np.testing.assert_allclose(h, -(p * np.log(p)).sum(-1), rtol=1e-5, atol=1e-6)
  # the official get_global_entropy_top_mask: topk with k = max(1, int(n * rho + 0.9999))
  flat = h.ravel()[m.ravel() > 0]
  k = max(1, int(len(flat) * 0.2 + 0.9999))
  top = np.zeros(h.size)
  top[np.flatnonzero(m.ravel() > 0)[np.argsort(-flat, kind="stable")[:k]]] = 1
  np.testing.assert_array_equal(sel, top.reshape(h.shape))
  # TRL's get_high_entropy_mask: entropy >= torch.quantile(valid, 1 - rho) (linear)
  np.testing.assert_array_equal(q, ((h * m >= np.quantile(flat, 0.8)) & (m > 0)).astype(np.float32))
  # the gradient lives on the selected tokens only: -A / (number selected)
  a = np.broadcast_to(np.asarray(adv)[..., None], h.shape)
  np.testing.assert_allclose(g, -a * sel / sel.sum(), rtol=1e-5, atol=1e-8)
  for kept in trl:
    assert kept.ravel().tolist() == [0] * 8 + [1, 1, 0, 0]


# --------------------------------------------------------- aggregation names --


def test_trainer_aggregations_map_onto_aggregate_modes():
  _, _, mask, _ = _tokens(seed=11, shape=(2, 3, 5))
  loss = np.random.default_rng(12).normal(size=mask.shape).astype(np.float32)
  l, m = np.asarray(loss), np.asarray(mask)
  n, length = 6, 5
  modes = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant")
  got = jax.jit(lambda x: [policy.aggregate(x, mask, mode=md) for md in modes])(loss)
  got = dict(zip(modes, map(float, got)))
  lm, lb = l.reshape(n, length), m.reshape(n, length)
  verl = {  # verl agg_loss (no fully masked rows, dp_size 1)
    "token-mean": (lm * lb).sum() / lb.sum(),
    "seq-mean-token-mean": ((lm * lb).sum(-1) / (lb.sum(-1) + 1e-8)).sum() / n,
    "seq-mean-token-sum": (lm * lb).sum(-1).sum() / n,
    "seq-mean-token-sum-norm": (lm * lb).sum(-1).sum() / length,
  }
  trl = {  # TRL GRPOTrainer loss types (one process, no accumulation)
    "grpo": ((lm * lb).sum(-1) / np.maximum(lb.sum(-1), 1)).mean(),
    "bnpo": (lm * lb).sum() / max(lb.sum(), 1),
    "dr_grpo": (lm * lb).sum() / (n * length),
    "dapo": (lm * lb).sum() / lb.sum(),
  }
  np.testing.assert_allclose(
    got["token_mean"], [verl["token-mean"], trl["bnpo"], trl["dapo"]], rtol=1e-5
  )
  np.testing.assert_allclose(
    got["seq_mean_token_mean"], [verl["seq-mean-token-mean"], trl["grpo"]], rtol=1e-5
  )
  np.testing.assert_allclose(got["seq_mean_token_sum"], verl["seq-mean-token-sum"], rtol=1e-5)
  np.testing.assert_allclose(got["constant"], trl["dr_grpo"], rtol=1e-5)
  np.testing.assert_allclose(n * got["constant"], verl["seq-mean-token-sum-norm"], rtol=1e-5)


# ------------------------------------------------------------ errors, jit ------


Z3, O3, Z2 = np.zeros((1, 2, 3), np.float32), np.ones((1, 2, 3), np.float32), np.zeros((1, 2))


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: policy.kl_estimate(Z3, Z3, O3, estimator="k4"), "estimator"),
    (lambda: policy.kl_estimate(Z3, Z3, O3, estimator="k2+"), "estimator"),
    (lambda: policy.kl_estimate(Z3, np.zeros((1, 2, 4), np.float32), O3), "ref_logp"),
    (lambda: policy.kl_estimate(Z3, Z3, O3, log_ratio_clamp=-1.0), "log_ratio_clamp"),
    (lambda: policy.kl_penalty_loss(Z3, Z3, O3, aggregation="sum"), "aggregation"),
    (lambda: policy.cispo_loss(Z3, Z3, Z2, O3, aggregation="mean"), "aggregation"),
    (lambda: policy.gspo_loss(Z3, Z3, Z2, O3, eps_low=1.5), "eps_low"),
    (lambda: policy.gspo_loss(Z3, Z3, np.zeros((2,)), O3), "advantages"),
    (lambda: policy.cispo_loss(Z3, Z3, Z2, O3, eps_high=-0.1), "eps_high"),
    (lambda: policy.overlong_penalty(Z2, max_length=4, cache_length=8), "cache_length"),
    (lambda: policy.overlong_penalty(Z2, max_length=4.0, cache_length=2), "max_length"),
    (lambda: policy.mask_truncated(O3, np.zeros((2,), bool)), "truncated"),
    (lambda: policy.dynamic_sampling(Z2, size=3), "size"),
    (lambda: policy.reinforce_pp_advantages(Z2, np.ones((1, 3, 3), np.float32)), "mask"),
    (lambda: policy.reinforce_pp_advantages(Z2, O3, baseline="batch"), "baseline"),
    (lambda: policy.token_entropy(np.zeros((2, 1), np.float32)), "logits"),
    (lambda: policy.high_entropy_mask(Z3, O3, top_fraction=1.5), "top_fraction"),
    (lambda: policy.high_entropy_mask(Z3, O3, method="median"), "method"),
  ],
)
def test_bad_input_gets_a_clear_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_everything_jits_and_vmaps():
  logp, old, mask, adv = _tokens(seed=13)
  rewards = np.asarray([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], np.float32)
  logits = np.random.default_rng(14).normal(size=(2, 3, 5, 4)).astype(np.float32)

  def step(logp, old, mask, rewards, logits):  # every piece composed in one traced program
    keep = policy.dynamic_sampling(rewards).keep
    m = policy.mask_truncated(mask, jnp.zeros((2, 3), bool)) * keep[:, None, None]
    m = m * policy.high_entropy_mask(policy.token_entropy(logits), m, top_fraction=0.5)
    a = policy.batch_std_advantages(
      rewards + policy.overlong_penalty(m.sum(-1), max_length=5, cache_length=2)
    )
    return (
      policy.gspo_loss(logp, old, a, m)
      + policy.gspo_loss(logp, old, a, m, token_level=True)
      + policy.cispo_loss(logp, old, a, m)
      + policy.kl_penalty_loss(logp, old, m)
      + policy.ppo_clip_loss(logp, old, policy.reinforce_pp_advantages(rewards, m), m)
    )

  @jax.jit
  def run(lps, olds):
    batched = jax.vmap(step, in_axes=(0, 0, None, None, None))(lps, olds, mask, rewards, logits)
    one_by_one = jnp.stack([step(lps[i], olds[i], mask, rewards, logits) for i in range(2)])
    return batched, one_by_one

  batched, one_by_one = map(np.asarray, run(np.stack([logp, old]), np.stack([old, logp])))
  assert np.isfinite(batched).all()
  np.testing.assert_allclose(batched, one_by_one, rtol=1e-6)
