"""SPSA / MeZO: two-point zeroth-order gradient estimates, and Sparse MeZO.

References: Spall (1992); Malladi et al., "Fine-Tuning Language Models with
Just Forward Passes" (MeZO, NeurIPS 2023; princeton-nlp/MeZO
``large_models/trainer.py``); Liu et al., "Sparse MeZO: Less Parameters for
Better Performance in Zeroth-Order LLM Fine-Tuning" (2024).

For a probe z ~ N(0, I) shaped like the params,

    g_hat = [L(theta + eps z) - L(theta - eps z)] / (2 eps) * z,

an unbiased estimate of the gradient of the Gaussian-smoothed loss (exactly
unbiased for a quadratic L). With n probes averaged, for a linear L,
E|g_hat - g|^2 = (d + 1)|g|^2 / n and the cosine with g is about
sqrt(n / (n + d + 1)).

MeZO's memory trick is that z is never stored: it is regenerated from its
seed. Here each probe's z is regenerated from its key, used for the two
evaluations, and regenerated again to accumulate ``c_k z_k``, so at most one
perturbation is alive at a time (probes run in a ``lax.scan``).

Sparse MeZO perturbs only the parameters of small magnitude: the mask keeps,
in each leaf, the ``fraction`` of entries with the smallest |theta|
(``sparse_mask``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab import _checks


class ZOEstimate(NamedTuple):
  grad: Any  # the averaged estimate, a pytree like params
  loss: jax.Array  # the mean of L(theta +- eps z) over probes (~ L(theta))
  projected: jax.Array  # [num_probes] the finite differences c_k


def perturbation(key: jax.Array, like: Any, mask: Any = None) -> Any:
  """z ~ N(0, I) shaped like ``like`` (times ``mask`` if given), from ``key``."""
  z = optax.tree.random_like(key, like, jax.random.normal)
  return z if mask is None else optax.tree.mul(z, mask)


def sparse_mask(params: Any, *, fraction: float) -> Any:
  """Per leaf, 1 for the ``fraction`` of entries of smallest magnitude, else 0."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction: expected a value in (0, 1], got {fraction}")

  def leaf(x):
    threshold = jnp.quantile(jnp.abs(x).ravel(), fraction)
    return (jnp.abs(x) <= threshold).astype(x.dtype)

  return jax.tree.map(leaf, params)


def spsa_gradient(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batch: Any,
  key: jax.Array,
  *,
  epsilon: float = 1e-3,
  num_probes: int = 1,
  mask: Any = None,
) -> ZOEstimate:
  """The two-point estimate averaged over ``num_probes`` Gaussian probes.

  Args:
    loss_fn: pure ``(params, batch) -> scalar``; only evaluated, never
      differentiated.
    epsilon: the perturbation scale (MeZO: 1e-3).
    num_probes: n >= 1 probes (2n loss evaluations).
    mask: optional 0/1 pytree restricting the perturbation (``sparse_mask``).
  """
  _checks.positive("epsilon", epsilon)
  num_probes = _checks.integer("num_probes", num_probes, minimum=1)
  keys = jax.random.split(key, num_probes)

  def probe(carry, k):
    z = perturbation(k, params, mask)
    plus = loss_fn(jax.tree.map(lambda p, d: p + epsilon * d, params, z), batch)
    minus = loss_fn(jax.tree.map(lambda p, d: p - epsilon * d, params, z), batch)
    return carry, ((plus - minus) / (2 * epsilon), (plus + minus) / 2)

  _, (projected, losses) = jax.lax.scan(probe, None, keys)

  def accumulate(acc, kc):
    k, c = kc
    return jax.tree.map(lambda a, d: a + c * d, acc, perturbation(k, params, mask)), None

  total, _ = jax.lax.scan(accumulate, optax.tree.zeros_like(params), (keys, projected))
  grad = optax.tree.scale(1.0 / num_probes, total)
  return ZOEstimate(grad, jnp.mean(losses), projected)


def zo_value_and_grad(
  train_loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]],
  *,
  epsilon: float = 1e-3,
  num_probes: int = 1,
  sparse_fraction: float | None = None,
):
  """A ``value_and_grad`` for ``make_train_step(value_and_grad_fn=...)``.

  Feeds the SPSA (or, with ``sparse_fraction``, Sparse MeZO) estimate to any
  optax chain in place of the backpropagated gradient. The loss's own ``rng``
  is the step key, shared by the 2n evaluations (so that dropout noise does
  not enter the finite differences); the probes use a key folded from it.
  """

  def value_and_grad(params, batch, key):
    loss = lambda p, b: train_loss_fn(p, b, key)[0]
    mask = None if sparse_fraction is None else sparse_mask(params, fraction=sparse_fraction)
    est = spsa_gradient(
      loss,
      params,
      batch,
      jax.random.fold_in(key, 0x5E50),
      epsilon=epsilon,
      num_probes=num_probes,
      mask=mask,
    )
    return (est.loss, {"zo/projected_abs": jnp.mean(jnp.abs(est.projected))}), est.grad

  return value_and_grad
