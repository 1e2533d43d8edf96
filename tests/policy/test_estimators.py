"""Policy-gradient estimators against the exact gradient of a tabular sequence policy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import policy

VOCAB, LENGTH = 3, 2
SEQS = jnp.asarray(policy.all_sequences(VOCAB, LENGTH))  # 9 sequences
REWARD = (SEQS.sum(-1) == 2).astype(jnp.float32)  # 3 of them correct
PARAMS = policy.init_tabular(jax.random.key(0), VOCAB, LENGTH)


def _exact():
  p, grad = jax.value_and_grad(policy.exact_objective)(PARAMS, SEQS, REWARD)
  return float(p), grad


def _group_gradient(adv_fn, loss="pg", aggregation="seq_mean_token_sum"):
  """idx [G] -> the estimator's ascent direction -grad(loss) for that group."""

  def estimate(idx):
    seqs = SEQS[idx][None]  # [1, G, T]
    rewards = REWARD[idx][None]  # [1, G]
    adv = adv_fn(rewards)
    mask = jnp.ones(seqs.shape, jnp.float32)

    def loss_fn(params):
      logp = policy.tabular_token_logp(params, seqs)
      if loss == "pg":
        return policy.policy_gradient_loss(logp, adv, mask, aggregation=aggregation)
      old = jax.lax.stop_gradient(logp)
      fn = policy.ppo_clip_loss if loss == "ppo" else policy.gppo_loss
      return fn(logp, old, adv, mask, aggregation=aggregation)

    return jax.tree.map(jnp.negative, jax.grad(loss_fn)(PARAMS))

  return estimate


def _expected(adv_fn, group, **kw):
  probs = jnp.exp(jnp.sum(policy.tabular_token_logp(PARAMS, SEQS), -1))
  return policy.expected_group_estimate(_group_gradient(adv_fn, **kw), SEQS.shape[0], probs, group)


def _assert_tree_close(a, b, scale=1.0, rtol=1e-5, atol=1e-7):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), scale * np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize(
  "name, adv_fn",
  [
    ("reinforce (no baseline)", functools.partial(policy.reinforce_advantages, baseline="none")),
    ("reinforce (leave-one-out batch baseline)", policy.reinforce_advantages),
    (
      "reinforce (constant baseline)",
      functools.partial(policy.reinforce_advantages, baseline="constant", constant=0.3),
    ),
    ("rloo", policy.rloo_advantages),
  ],
)
def test_unbiased_estimators_have_the_exact_gradient_as_expectation(name, adv_fn):
  """Enumerating all 9^4 groups: the expectation equals grad J to float precision."""
  _, truth = _exact()
  _assert_tree_close(_expected(adv_fn, 4), truth)


def test_biased_estimators_are_scaled_exactly_as_the_closed_form_says():
  p, truth = _exact()
  g = 4
  # Dr. GRPO (group mean): (G-1)/G; GRPO (std): c(p, G) from the binomial closed form
  _assert_tree_close(_expected(policy.dr_grpo_advantages, g), truth, scale=(g - 1) / g)
  c = policy.group_scale(policy.grpo_h(g), p, g)
  assert abs(c - 1) > 0.1  # the difficulty bias is real here: report it
  _assert_tree_close(_expected(policy.grpo_advantages, g), truth, scale=c, rtol=1e-4)
  # BNPO on a single prompt has nothing to fit: alpha = beta = 1, the group mean
  _assert_tree_close(_expected(policy.bnpo_advantages, g), truth, scale=(g - 1) / g)
  # W-REINFORCE: (1 + lambda) x REINFORCE with baseline 1 / (1 + lambda): scale 1 + lambda
  _assert_tree_close(_expected(policy.weighted_reinforce_advantages, g), truth, scale=1.1)
  _assert_tree_close(_expected(policy.nsr_advantages, g), truth)
  _assert_tree_close(_expected(policy.psr_advantages, g), truth)


def test_on_policy_ppo_and_gppo_equal_the_policy_gradient():
  """At ratio 1 nothing is clipped: both are REINFORCE, token-mean scaled by 1/T."""
  _, truth = _exact()
  for loss in ("ppo", "gppo"):
    _assert_tree_close(
      _expected(policy.rloo_advantages, 3, loss=loss, aggregation="token_mean"),
      truth,
      scale=1 / LENGTH,
    )


def test_rloo_and_reinforce_are_unbiased_within_their_monte_carlo_error():
  """A bigger policy (4^3 sequences, G = 8) where enumeration is out of reach:
  the mean of M groups is within 5 standard errors of grad J, per coordinate."""
  vocab, length, group, m = 4, 3, 8, 4000
  seqs = jnp.asarray(policy.all_sequences(vocab, length))
  reward = (seqs.sum(-1) % 3 == 0).astype(jnp.float32)
  params = policy.init_tabular(jax.random.key(1), vocab, length, scale=0.5)
  truth = jnp.concatenate(
    [x.ravel() for x in jax.grad(policy.exact_objective)(params, seqs, reward)]
  )
  keys = jax.random.split(jax.random.key(2), m)
  for adv_fn in (
    policy.rloo_advantages,
    functools.partial(policy.reinforce_advantages, baseline="none"),
  ):

    def one(key, adv_fn=adv_fn):
      y = policy.sample_sequences(key, params, (1, group))
      r = reward[jnp.sum(y * vocab ** jnp.arange(length - 1, -1, -1), -1)]
      adv = adv_fn(r)
      g = jax.grad(
        lambda p: policy.policy_gradient_loss(
          policy.tabular_token_logp(p, y), adv, jnp.ones(y.shape)
        )
      )(params)
      return -jnp.concatenate([x.ravel() for x in g])

    samples = jax.jit(jax.vmap(one))(keys)
    mean, se = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(m)
    z = np.abs(np.asarray(mean - truth)) / np.maximum(np.asarray(se), 1e-12)
    # 84 coordinates; 5 standard errors bounds a false alarm below 1e-4
    assert np.max(z[np.asarray(se) > 0]) < 5.0, np.max(z)


def _bandit_population(num_prompts=19, a=0.5, b=2.0):
  """Tabular 4-outcome prompts (outcomes 0, 1 correct) with success rates at Beta(a, b) quantiles."""
  from scipy import stats

  p = stats.beta.ppf((np.arange(num_prompts) + 0.5) / num_prompts, a, b)
  probs = np.stack([p / 2, p / 2, (1 - p) / 2, (1 - p) / 2], 1)
  return jnp.asarray(np.log(probs), jnp.float32), jnp.asarray(p)


def _relative_variance(adv_fn, logits, group, keys):
  """tr Cov / ||mean||^2 of the batch gradient estimate (softmax-logit gradients), from samples."""
  probs = jax.nn.softmax(logits)

  def one(key):
    y = jax.random.categorical(key, logits, shape=(group, logits.shape[0])).T  # [P, G]
    r = (y < 2).astype(jnp.float32)
    adv = adv_fn(r)
    onehot = jax.nn.one_hot(y, 4)
    return jnp.einsum("pg,pgk->pk", adv, onehot - probs[:, None]).ravel() / r.size

  s = jax.jit(jax.vmap(one))(keys)
  return s


def test_bnpo_has_lower_relative_variance_than_grpo_on_binary_rewards():
  """BNPO's claim (its Theorem on variance) on a skewed prompt mix: paired Monte
  Carlo, with the difference required to exceed 4 standard errors (from 20 chunks)."""
  logits, _ = _bandit_population()
  keys = jax.random.split(jax.random.key(3), 40_000)
  stats = {}
  for name, fn in (("bnpo", policy.bnpo_advantages), ("grpo", policy.grpo_advantages)):
    s = np.asarray(_relative_variance(fn, logits, 8, keys)).reshape(20, -1, 19 * 4)
    per_chunk = [c.var(0, ddof=1).sum() / np.sum(c.mean(0) ** 2) for c in s]
    stats[name] = np.array(per_chunk)
  diff = stats["grpo"] - stats["bnpo"]
  assert diff.mean() > 4 * diff.std(ddof=1) / np.sqrt(len(diff)), (
    stats["bnpo"].mean(),
    stats["grpo"].mean(),
  )
