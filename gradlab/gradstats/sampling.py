r"""Which examples a minibatch holds: gradient-norm importance sampling, and
upsampling against upweighting of imbalanced domains.

Every sampler here draws a minibatch of B indices i.i.d. *with replacement*
from per-example probabilities ``q`` and returns per-draw ``weights`` c_i; the
minibatch gradient is ``g_hat = (1/B) sum_b c_{i_b} g_{i_b}`` (weight each
drawn example's loss by c_i). Its mean is ``sum_i q_i c_i g_i`` and its trace
variance ``(sum_i q_i c_i^2 |g_i|^2 - |sum_i q_i c_i g_i|^2) / B``
(:func:`sampling_moments`).

**Gradient-norm importance sampling** (the data half of PA&DA: Lu et al.,
"PA&DA: Jointly Sampling PAth and DAta for Consistent NAS", CVPR 2023). To
estimate the full gradient ``g_bar = (1/n) sum_i g_i``, draw i with
probability q_i and weight it by ``c_i = 1 / (n q_i)``: unbiased for any q with
q_i > 0 wherever g_i != 0, with per-draw trace variance

    V(q) = (1/n^2) sum_i |g_i|^2 / q_i - |g_bar|^2,

minimized over the simplex (Cauchy-Schwarz) by ``q_i = |g_i| / sum_j |g_j|``:
``V* = (mean_i |g_i|)^2 - |g_bar|^2 <= mean_i |g_i|^2 - |g_bar|^2 = V(uniform)``.
The norms are not known before the step, so PA&DA tracks them from the
batches already seen. Its official code (github.com/ShunLu91/PA-DA,
``nasbench201/train_panda_201.py``, ``train``) takes the norm of the gradient
with respect to the logits, ``|softmax(z_i) - onehot(y_i)|``
(:func:`logit_gradient_norms`; for a linear softmax model the parameter
gradient's norm is this times ``|(x_i, 1)|``), keeps per example the running
``mean(old, new)`` (an EMA of decay 1/2, the first observation taken as it is),
and samples the next epoch's indices from ``tau * norms / sum(norms) + (1 -
tau) / n`` with ``tau = epoch / epochs``. The state, the update and the
probabilities here are those (:func:`importance_init`,
:func:`importance_update`, :func:`importance_probabilities`, ``mix`` = tau).
One difference: the official code trains on the resampled indices with the
plain mean loss, *without* the ``1/(n q_i)`` weights, so its gradient is
biased toward large-norm examples; :func:`importance_sample` returns the
weights that make it unbiased (ignore them to reproduce the official run).

**Upsampling against upweighting** (e.g. "Upsample or Upweight? Balanced
Training on Heavily Imbalanced Datasets", 2024). Domains k = 1..K with n_k
examples; the target is the scalarized loss ``sum_k w_k L_k`` (L_k the mean
loss of domain k, w on the simplex), whose gradient is ``G = sum_k w_k
g_bar_k``. Draw domain k with probability pi_k, an example uniformly inside
it, and weight it by ``w_k / pi_k``:

* *upweighting*: pi_k = n_k / N (uniform over the pooled examples), weights
  ``w_k N / n_k`` on the loss;
* *upsampling* (temperature sampling): pi_k = w_k, no weights. Temperature
  sampling ``pi_k ∝ n_k^(1/T)`` (:func:`temperature_probabilities`) is
  upsampling for the target ``w = pi``; T = 1 is proportional, T -> inf uniform.

Both are unbiased for G, so their means are equal exactly; their per-draw
trace variances are

    V(pi) = sum_k (w_k^2 / pi_k) m_k - |G|^2,   m_k = mean_{i in k} |g_i|^2,

``sum_k w_k m_k - |G|^2`` for upsampling and ``sum_k w_k^2 (N / n_k) m_k -
|G|^2`` for upweighting (:func:`domain_sampling_moments`). Which is smaller
depends on the m_k: with equal m_k, upsampling's is the smaller whenever w
differs from n / N (Cauchy-Schwarz again, ``sum w^2 / p >= (sum w)^2 = 1``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks


class ImportanceState(NamedTuple):
  norms: jax.Array  # [n] running gradient norm per example (0 where unseen)
  seen: jax.Array  # [n] bool: whether example i has been observed


class ImportanceSample(NamedTuple):
  indices: jax.Array  # [B] drawn with replacement
  weights: jax.Array  # [B] c_i: multiply each drawn example's loss (or gradient)
  probabilities: jax.Array  # [n] the q the indices were drawn from


class SamplingMoments(NamedTuple):
  mean: jax.Array  # [d] the estimator's exact mean (flattened like ravel_pytree)
  trace_variance: jax.Array  # scalar E|g_hat - mean|^2 for the given batch size


def _flat_rows(grads: Any) -> jax.Array:
  """``[n, d]`` from a pytree of per-example gradients with a common leading axis n."""
  leaves = jax.tree.leaves(grads)
  if not leaves:
    raise ValueError("grads: expected a pytree of per-example gradients, got no leaves")
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"grads: expected leaves with one common leading axis n, got sizes {sizes}")
  n = sizes.pop()
  if n == 0:
    raise ValueError("grads: expected at least one example, got n = 0")
  return jnp.concatenate([jnp.reshape(x, (n, -1)) for x in leaves], axis=1)


def _check_probabilities(name: str, q: jax.Array, n: int) -> jax.Array:
  q = jnp.asarray(q)
  if q.shape != (n,):
    raise ValueError(f"{name}: expected shape ({n},), got {q.shape}")
  _checks.probabilities(name, q)
  v = _checks.concrete(q)
  if v is not None and abs(float(v.sum()) - 1) > 1e-4:
    raise ValueError(f"{name}: expected probabilities summing to 1, got sum {float(v.sum()):g}")
  return q


def importance_init(num_examples: int, *, norms: Any = None) -> ImportanceState:
  """The sampler's state: every example unseen, or ``norms`` [n] taken as observed."""
  n = _checks.integer("num_examples", num_examples, minimum=1)
  if norms is None:
    return ImportanceState(jnp.zeros((n,), jnp.float32), jnp.zeros((n,), bool))
  norms = jnp.asarray(norms, jnp.float32)
  if norms.shape != (n,):
    raise ValueError(f"norms: expected shape ({n},), got {norms.shape}")
  _checks.positive("norms", norms, allow_zero=True)
  return ImportanceState(norms, jnp.ones((n,), bool))


def importance_update(
  state: ImportanceState, indices: Any, norms: Any, *, decay: Any = 0.5
) -> ImportanceState:
  """Folds a batch's per-example gradient norms into the running norms.

  In batch order, for each drawn ``i`` with norm ``r``: ``norms[i] = decay *
  norms[i] + (1 - decay) * r`` once i has been seen, ``norms[i] = r`` the first
  time (PA&DA's official ``np.mean([old, new])`` is ``decay = 0.5``). A
  repeated index is folded in twice, as the official loop does.

  Args:
    state: from :func:`importance_init`.
    indices: ``[B]`` the batch's example indices.
    norms: ``[B]`` their gradient norms (e.g. :func:`logit_gradient_norms`).
    decay: in [0, 1); 0 keeps only the latest norm.
  """
  indices = jnp.asarray(indices)
  norms = jnp.asarray(norms, state.norms.dtype)
  if indices.ndim != 1 or norms.shape != indices.shape:
    raise ValueError(
      f"indices, norms: expected two [B] vectors, got shapes {indices.shape}, {norms.shape}"
    )
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise ValueError(f"indices: expected an integer dtype, got {indices.dtype}")
  _checks.unit_interval("decay", decay)
  _checks.positive("norms", norms, allow_zero=True)

  def fold(carry, item):
    running, seen = carry
    i, r = item
    new = jnp.where(seen[i], decay * running[i] + (1 - decay) * r, r)
    return (running.at[i].set(new), seen.at[i].set(True)), None

  (running, seen), _ = jax.lax.scan(fold, (state.norms, state.seen), (indices, norms))
  return ImportanceState(running, seen)


def importance_probabilities(state: ImportanceState, *, mix: Any = 1.0) -> jax.Array:
  """``q = mix * norms / sum(norms) + (1 - mix) / n`` (uniform while no norm is positive).

  ``mix < 1`` keeps every ``q_i >= (1 - mix) / n > 0``, which the unbiased
  weights ``1 / (n q_i)`` need for an example whose running norm is 0 (unseen,
  or seen with a zero gradient that has since grown). PA&DA ramps ``mix =
  epoch / epochs``.
  """
  _checks.unit_interval("mix", mix, closed=True)
  n = state.norms.shape[0]
  total = jnp.sum(state.norms)
  by_norm = jnp.where(total > 0, state.norms / jnp.where(total > 0, total, 1.0), 1.0 / n)
  return mix * by_norm + (1 - mix) / n


def importance_sample(
  state: ImportanceState, key: jax.Array, *, batch_size: int, mix: Any = 1.0
) -> ImportanceSample:
  """B indices drawn with replacement from :func:`importance_probabilities`, with
  the weights ``1 / (n q_i)`` that make ``(1/B) sum_b w_b g_{i_b}`` unbiased for
  the mean gradient."""
  b = _checks.integer("batch_size", batch_size, minimum=1)
  _checks.is_key("key", key)
  q = importance_probabilities(state, mix=mix)
  n = q.shape[0]
  idx = jax.random.choice(key, n, (b,), replace=True, p=q)
  return ImportanceSample(idx, 1.0 / (n * q[idx]), q)


def logit_gradient_norms(logits: Any, labels: Any) -> jax.Array:
  """``[B]`` norms of the cross-entropy's gradient in the logits, ``|softmax(z) -
  onehot(y)|``: PA&DA's per-example proxy (official ``train``, ``grad_norm``)."""
  z = _checks.logits("logits", logits)
  y = jnp.asarray(labels)
  if y.shape != z.shape[:-1]:
    raise ValueError(f"labels: expected shape {z.shape[:-1]}, got {y.shape}")
  p = jax.nn.softmax(z, axis=-1)
  return jnp.linalg.norm(p - jax.nn.one_hot(y, z.shape[-1], dtype=p.dtype), axis=-1)


def sampling_moments(
  grads: Any, probabilities: Any, *, weights: Any = None, batch_size: int = 1
) -> SamplingMoments:
  """Exact mean and trace variance of ``(1/B) sum_b c_{i_b} g_{i_b}``, i ~ q i.i.d.

  ``mean = sum_i q_i c_i g_i``; ``trace_variance = (sum_i q_i c_i^2 |g_i|^2 -
  |mean|^2) / B``.

  Args:
    grads: per-example gradients, a pytree with leading axis n (e.g.
      ``gradstats.per_example_grads``).
    probabilities: ``[n]`` the draw probabilities q.
    weights: ``[n]`` the per-example weights c; default ``1 / (n q_i)``
      (importance sampling of the mean gradient; an example with q_i = 0 then
      contributes nothing).
    batch_size: B.
  """
  rows = _flat_rows(grads)
  n = rows.shape[0]
  q = _check_probabilities("probabilities", probabilities, n)
  b = _checks.integer("batch_size", batch_size, minimum=1)
  if weights is None:
    c = jnp.where(q > 0, 1.0 / (n * jnp.where(q > 0, q, 1.0)), 0.0)
  else:
    c = jnp.asarray(weights, rows.dtype)
    if c.shape != (n,):
      raise ValueError(f"weights: expected shape ({n},), got {c.shape}")
    _checks.finite("weights", c)
  mean = (q * c) @ rows
  second = jnp.sum(q * c**2 * jnp.sum(rows**2, axis=1))
  return SamplingMoments(mean, (second - jnp.sum(mean**2)) / b)


def importance_variance(grads: Any, probabilities: Any, *, batch_size: int = 1) -> jax.Array:
  """``V(q) / B = ((1/n^2) sum_i |g_i|^2 / q_i - |g_bar|^2) / B``: the trace variance of
  importance sampling the mean gradient with weights ``1 / (n q_i)`` (every q_i > 0)."""
  rows = _flat_rows(grads)
  n = rows.shape[0]
  q = _check_probabilities("probabilities", probabilities, n)
  b = _checks.integer("batch_size", batch_size, minimum=1)
  v = _checks.concrete(q)
  if v is not None and not (v > 0).all():
    raise ValueError(f"probabilities: expected every q_i > 0, got {int((v <= 0).sum())} zeros")
  gbar = rows.mean(0)
  return (jnp.sum(jnp.sum(rows**2, axis=1) / q) / n**2 - jnp.sum(gbar**2)) / b


def temperature_probabilities(counts: Any, *, temperature: Any) -> jax.Array:
  """``[K]`` domain probabilities ``pi_k ∝ n_k^(1/T)``: T = 1 proportional, large T uniform."""
  n = jnp.asarray(counts, jnp.float32)
  if n.ndim != 1 or n.shape[0] == 0:
    raise ValueError(f"counts: expected a non-empty [K] vector, got shape {n.shape}")
  _checks.positive("counts", n)
  _checks.positive("temperature", temperature)
  logits = jnp.log(n) / temperature
  return jax.nn.softmax(logits)


def _domain_counts(domains: jax.Array, num_domains: int) -> jax.Array:
  return jax.ops.segment_sum(jnp.ones_like(domains, jnp.float32), domains, num_domains)


def _check_domains(domains: Any, n: int, num_domains: int) -> jax.Array:
  d = jnp.asarray(domains)
  if d.shape != (n,) or not jnp.issubdtype(d.dtype, jnp.integer):
    raise ValueError(f"domains: expected [{n}] integer domain ids, got {d.dtype}{list(d.shape)}")
  v = _checks.concrete(d)
  if v is not None:
    if v.min() < 0 or v.max() >= num_domains:
      raise ValueError(f"domains: expected ids in [0, {num_domains}), got [{v.min()}, {v.max()}]")
    if len(set(v.tolist())) != num_domains:
      raise ValueError(f"domains: every one of the {num_domains} domains needs an example")
  return d


def domain_example_probabilities(
  domains: Any, *, weights: Any, probabilities: Any, num_domains: int
) -> tuple[jax.Array, jax.Array]:
  """``(q, c)``, both ``[n]``: draw probability ``pi_k / n_k`` and weight ``w_k / pi_k``
  of each example of domain k, for the target ``sum_k w_k L_k``."""
  k = _checks.integer("num_domains", num_domains, minimum=1)
  d = jnp.asarray(domains)
  d = _check_domains(d, d.shape[0] if d.ndim == 1 else 0, k)
  w = _check_probabilities("weights", weights, k)
  pi = _check_probabilities("probabilities", probabilities, k)
  v = _checks.concrete(pi)
  if v is not None and not (v > 0).all():
    raise ValueError("probabilities: expected every domain probability > 0")
  counts = _domain_counts(d, k)
  return (pi / counts)[d], (w / pi)[d]


def domain_sample(
  key: jax.Array,
  domains: Any,
  *,
  weights: Any,
  probabilities: Any,
  num_domains: int,
  batch_size: int,
) -> ImportanceSample:
  """B examples drawn with replacement: domain k with probability ``pi_k``, an
  example uniformly inside it, weight ``w_k / pi_k``. ``probabilities = weights``
  is upsampling (weights 1); ``probabilities = n_k / N`` is upweighting."""
  _checks.is_key("key", key)
  b = _checks.integer("batch_size", batch_size, minimum=1)
  q, c = domain_example_probabilities(
    domains, weights=weights, probabilities=probabilities, num_domains=num_domains
  )
  idx = jax.random.choice(key, q.shape[0], (b,), replace=True, p=q)
  return ImportanceSample(idx, c[idx], q)


def domain_sampling_moments(
  grads: Any,
  domains: Any,
  *,
  weights: Any,
  probabilities: Any,
  num_domains: int,
  batch_size: int = 1,
) -> SamplingMoments:
  """Exact mean ``G = sum_k w_k g_bar_k`` and trace variance ``(sum_k (w_k^2 / pi_k)
  m_k - |G|^2) / B`` (``m_k`` the mean squared gradient norm of domain k) of the
  minibatch gradient of :func:`domain_sample`, from per-example gradients."""
  rows = _flat_rows(grads)
  k = _checks.integer("num_domains", num_domains, minimum=1)
  d = _check_domains(domains, rows.shape[0], k)
  w = _check_probabilities("weights", weights, k)
  pi = _check_probabilities("probabilities", probabilities, k)
  b = _checks.integer("batch_size", batch_size, minimum=1)
  counts = _domain_counts(d, k)
  gbar = jax.ops.segment_sum(rows, d, k) / counts[:, None]
  m = jax.ops.segment_sum(jnp.sum(rows**2, axis=1), d, k) / counts
  g = w @ gbar
  return SamplingMoments(g, (jnp.sum(w**2 / pi * m) - jnp.sum(g**2)) / b)


def upsampling_moments(
  grads: Any, domains: Any, *, weights: Any, num_domains: int, batch_size: int = 1
) -> SamplingMoments:
  """:func:`domain_sampling_moments` with ``pi = w``: variance ``(sum_k w_k m_k - |G|^2) / B``."""
  return domain_sampling_moments(
    grads, domains, weights=weights, probabilities=weights, num_domains=num_domains,
    batch_size=batch_size,
  )  # fmt: skip


def upweighting_moments(
  grads: Any, domains: Any, *, weights: Any, num_domains: int, batch_size: int = 1
) -> SamplingMoments:
  """:func:`domain_sampling_moments` with ``pi_k = n_k / N``: variance ``(sum_k w_k^2
  (N / n_k) m_k - |G|^2) / B``."""
  k = _checks.integer("num_domains", num_domains, minimum=1)
  d = jnp.asarray(domains)
  counts = _domain_counts(d, k)
  return domain_sampling_moments(
    grads, domains, weights=weights, probabilities=counts / jnp.sum(counts), num_domains=k,
    batch_size=batch_size,
  )  # fmt: skip
