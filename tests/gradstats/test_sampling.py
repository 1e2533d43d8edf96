"""Minibatch sampling against enumeration of every draw.

Truths: for importance sampling of the mean gradient and for the domain
samplers (upsampling, upweighting, temperature), the exact mean and trace
variance of the weighted minibatch gradient by enumerating all n draws
(batch 1) and all n^2 ordered pairs (batch 2), in float64 NumPy from the same
per-example gradients; PA&DA's running norms against a line-by-line NumPy
replay of the official loop (github.com/ShunLu91/PA-DA,
``nasbench201/train_panda_201.py``); the sampler's draw frequencies against q.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import gradstats as gs

# float32 closed forms against float64 enumeration: sums of n <= 8 terms of
# size O(|g|^2) ~ 1-10, each rounded at ~1e-7 relative: 1e-5 relative is
# ~10 ulps x n with room; atol for entries that are sums cancelling to ~0.
RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def problem():
  """Per-example gradients of least squares ``(1/2)(x_i . w - y_i)^2`` at a fixed w."""
  rng = np.random.default_rng(0)
  n, d = 7, 3
  x = rng.normal(size=(n, d)).astype(np.float32)
  x[0] *= 3.0  # spread the norms so that q differs from uniform
  y = rng.normal(size=n).astype(np.float32)
  w = rng.normal(size=d).astype(np.float32)
  loss = lambda p, e: 0.5 * (e["x"] @ p["w"] - e["y"]) ** 2
  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))({"w": w}, {"x": x, "y": y})
  rows = np.asarray(grads["w"], np.float64)
  return grads, rows


def _enumerate(rows, q, c, batch):
  """Exact (mean, trace variance) of ``(1/B) sum_b c_{i_b} g_{i_b}`` over all n^B draws."""
  n = len(q)
  mean, second = np.zeros(rows.shape[1]), 0.0
  for draw in itertools.product(range(n), repeat=batch):
    p = np.prod([q[i] for i in draw])
    g = sum(c[i] * rows[i] for i in draw) / batch
    mean += p * g
    second += p * g @ g
  return mean, second - mean @ mean


@pytest.fixture(scope="module")
def closed_forms():
  """The closed forms, each jitted once."""
  moments = jax.jit(gs.sampling_moments, static_argnames="batch_size")
  variance = jax.jit(gs.importance_variance, static_argnames="batch_size")
  domain = jax.jit(gs.domain_sampling_moments, static_argnames=("num_domains", "batch_size"))
  return moments, variance, domain


@pytest.mark.parametrize("batch", [1, 2])
def test_gradient_norm_sampling_is_unbiased_and_reaches_the_minimum_variance(
  problem, closed_forms, batch
):
  grads, rows = problem
  moments, variance, _ = closed_forms
  n = len(rows)
  norms = np.linalg.norm(rows, axis=1)
  state = gs.importance_init(n, norms=norms)
  q = np.asarray(jax.jit(gs.importance_probabilities)(state), np.float64)
  np.testing.assert_allclose(q, norms / norms.sum(), rtol=RTOL)
  c = 1 / (n * q)
  mean, var = _enumerate(rows, q, c, batch)
  gbar = rows.mean(0)
  np.testing.assert_allclose(mean, gbar, rtol=RTOL, atol=ATOL)  # unbiased, exactly
  minimum = (norms.mean() ** 2 - gbar @ gbar) / batch
  uniform = ((norms**2).mean() - gbar @ gbar) / batch
  np.testing.assert_allclose(var, minimum, rtol=RTOL)
  assert minimum < uniform * (1 - 1e-3)  # strictly lower here: the norms differ
  m = moments(grads, jnp.asarray(q, jnp.float32), batch_size=batch)
  np.testing.assert_allclose(m.mean, gbar, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(m.trace_variance, minimum, rtol=RTOL)
  np.testing.assert_allclose(variance(grads, jnp.asarray(q), batch_size=batch), var, rtol=RTOL)
  # uniform sampling (weights 1) by enumeration, against the uniform closed form
  u = np.full(n, 1 / n)
  np.testing.assert_allclose(_enumerate(rows, u, np.ones(n), batch)[1], uniform, rtol=RTOL)
  np.testing.assert_allclose(variance(grads, jnp.asarray(u), batch_size=batch), uniform, rtol=RTOL)


def test_a_mixed_q_is_unbiased_with_the_variance_of_its_closed_form(problem, closed_forms):
  grads, rows = problem
  moments, variance, _ = closed_forms
  n = len(rows)
  norms = np.linalg.norm(rows, axis=1)
  q = np.asarray(gs.importance_probabilities(gs.importance_init(n, norms=norms), mix=0.3))
  np.testing.assert_allclose(q, 0.3 * norms / norms.sum() + 0.7 / n, rtol=RTOL)
  mean, var = _enumerate(rows, q.astype(np.float64), 1 / (n * q.astype(np.float64)), 1)
  np.testing.assert_allclose(mean, rows.mean(0), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(moments(grads, jnp.asarray(q), batch_size=1).trace_variance, var,
                             rtol=RTOL)  # fmt: skip
  assert var > (norms.mean() ** 2 - rows.mean(0) @ rows.mean(0)) * (1 + 1e-3)


def test_running_norms_replay_the_official_loop():
  """Three batches with repeats; official: ``mean(old, new)`` once seen, else ``new``,
  then ``q = tau * norms / sum + (1 - tau) / n``."""
  n, tau = 6, 0.4
  batches = [([0, 2, 2, 5], [1.0, 2.0, 4.0, 0.5]), ([2, 1], [3.0, 0.25]), ([0, 0], [7.0, 1.0])]
  ref = np.zeros(n)
  state = gs.importance_init(n)
  update = jax.jit(gs.importance_update)
  for idx, g in batches:
    for i, r in zip(idx, g):  # the official loop, line by line
      if ref[i] != 0:
        ref[i] = np.mean([ref[i], r])
      else:
        ref[i] = r
    state = update(state, jnp.asarray(idx), jnp.asarray(g))
  np.testing.assert_allclose(state.norms, ref, rtol=1e-6)  # exact dyadic arithmetic
  np.testing.assert_array_equal(state.seen, ref != 0)
  official = ref / ref.sum() * tau + (1 - tau) * np.ones(n) / n
  np.testing.assert_allclose(gs.importance_probabilities(state, mix=tau), official, rtol=1e-6)


def test_sampler_draws_with_q_and_returns_the_unbiasing_weights():
  norms = np.array([1.0, 2.0, 3.0, 0.5, 0.0, 1.5], np.float32)
  state = gs.importance_init(6, norms=norms)
  draws = 20_000
  s = jax.jit(gs.importance_sample, static_argnames="batch_size")(
    state, jax.random.key(1), batch_size=draws, mix=0.5
  )
  q = np.asarray(s.probabilities, np.float64)
  np.testing.assert_allclose(s.weights, 1 / (6 * q[np.asarray(s.indices)]), rtol=1e-6)
  counts = np.bincount(np.asarray(s.indices), minlength=6)
  # 4.5 binomial standard deviations per cell: each fails by chance ~7e-6, six cells ~4e-5
  sd = np.sqrt(draws * q * (1 - q))
  assert np.all(np.abs(counts - draws * q) <= 4.5 * sd), (counts, draws * q)


def test_logit_gradient_norms_are_the_linear_models_gradient_norms_over_the_input_norm():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(5, 4)).astype(np.float32)
  y = rng.integers(0, 3, 5)
  params = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}

  def loss(p, xi, yi):
    z = xi @ p["w"] + p["b"]
    return -jax.nn.log_softmax(z)[yi]

  @jax.jit
  def both(p):
    g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(p, x, y)
    full = jnp.sqrt(jnp.sum(g["w"] ** 2, (1, 2)) + jnp.sum(g["b"] ** 2, 1))
    return full, gs.logit_gradient_norms(x @ p["w"] + p["b"], y)

  full, proxy = both(params)
  # d loss / dW = x (p - e_y)^T, d / db = p - e_y: |grad| = |p - e_y| |(x, 1)|
  np.testing.assert_allclose(full, proxy * np.sqrt(1 + (x**2).sum(1)), rtol=1e-5)


@pytest.fixture(scope="module")
def domains():
  # 7 examples in 3 domains of 4, 2 and 1: heavily imbalanced
  return np.array([0, 0, 0, 0, 1, 1, 2])


@pytest.mark.parametrize("scheme", ["upsample", "upweight", "temperature"])
def test_domain_samplers_have_equal_means_and_their_closed_form_variances(
  problem, closed_forms, domains, scheme
):
  grads, rows = problem
  _, _, domain = closed_forms
  w = np.array([0.5, 0.3, 0.2])
  counts = np.bincount(domains)
  pi = {
    "upsample": w,
    "upweight": counts / counts.sum(),
    "temperature": np.asarray(gs.temperature_probabilities(counts, temperature=2.0), np.float64),
  }[scheme]
  if scheme == "temperature":
    np.testing.assert_allclose(pi, np.sqrt(counts) / np.sqrt(counts).sum(), rtol=1e-6)
  q = (pi / counts)[domains]
  c = (w / pi)[domains]
  jq, jc = gs.domain_example_probabilities(domains, weights=w, probabilities=pi, num_domains=3)
  np.testing.assert_allclose(jq, q, rtol=1e-6)
  np.testing.assert_allclose(jc, c, rtol=1e-6)
  target = sum(w[k] * rows[domains == k].mean(0) for k in range(3))
  m2 = np.array([(rows[domains == k] ** 2).sum(1).mean() for k in range(3)])
  for batch in (1, 2):
    mean, var = _enumerate(rows, q, c, batch)
    np.testing.assert_allclose(mean, target, rtol=RTOL, atol=ATOL)  # equal means, exactly
    closed = ((w**2 / pi * m2).sum() - target @ target) / batch
    np.testing.assert_allclose(var, closed, rtol=RTOL)
    m = domain(grads, domains, weights=w, probabilities=pi, num_domains=3, batch_size=batch)
    np.testing.assert_allclose(m.mean, target, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(m.trace_variance, closed, rtol=RTOL)
  named = {"upsample": gs.upsampling_moments, "upweight": gs.upweighting_moments}
  if scheme in named:
    np.testing.assert_allclose(
      named[scheme](grads, domains, weights=w, num_domains=3).trace_variance,
      ((w**2 / pi * m2).sum() - target @ target), rtol=RTOL,
    )  # fmt: skip


def test_domain_sample_draws_indices_with_their_weights(domains):
  w = np.array([0.5, 0.3, 0.2])
  s = gs.domain_sample(jax.random.key(3), domains, weights=w, probabilities=w, num_domains=3,
                       batch_size=64)  # fmt: skip
  np.testing.assert_allclose(s.weights, 1.0, rtol=1e-6)  # upsampling needs no weights
  np.testing.assert_allclose(np.asarray(s.probabilities).sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
  "call, name",
  [
    (lambda: gs.importance_init(0), "num_examples"),
    (lambda: gs.importance_init(3, norms=[1.0, -1.0, 2.0]), "norms"),
    (lambda: gs.importance_update(gs.importance_init(3), [0, 1], [1.0]), "indices, norms"),
    (lambda: gs.importance_update(gs.importance_init(3), [0], [1.0], decay=1.0), "decay"),
    (lambda: gs.importance_probabilities(gs.importance_init(3), mix=1.5), "mix"),
    (lambda: gs.importance_sample(gs.importance_init(3), jax.random.key(0), batch_size=0),
     "batch_size"),
    (lambda: gs.sampling_moments({"w": jnp.ones((3, 2))}, [0.5, 0.5]), "probabilities"),
    (lambda: gs.importance_variance({"w": jnp.ones((2, 2))}, [1.0, 0.0]), "probabilities"),
    (lambda: gs.temperature_probabilities([3, 1], temperature=0.0), "temperature"),
    (lambda: gs.domain_sampling_moments({"w": jnp.ones((3, 2))}, [0, 0, 0], weights=[0.5, 0.5],
                                        probabilities=[0.5, 0.5], num_domains=2), "domains"),
    (lambda: gs.logit_gradient_norms(jnp.ones((2, 3)), jnp.zeros(3, int)), "labels"),
  ],
)  # fmt: skip
def test_bad_input_names_the_argument(call, name):
  with pytest.raises(ValueError, match=f"^{name}"):
    call()
