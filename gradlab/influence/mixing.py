r"""Online data mixing by gradient alignment: DoGE and DGA domain weights.

Training minimizes the mixture ``sum_k w_k L_k(theta)`` of K domain losses
while the weights w (on the simplex) are moved by exponentiated-gradient
mirror descent toward the domains whose gradients align with a target's:

    s_k     = sum_t <g_k, g_t>                  (g_k = grad L_k, g_t = grad L_target_t)
    w_new   = softmax(log w + eta * s)
    theta  <- theta - lr * sum_k w_new_k g_k

A step on the mixture lowers the target loss, to first order, by ``lr sum_k
w_k <g_k, g_t>``; raising the weight of an aligned domain is the mirror step
on the one-step look-ahead objective ``L_t(theta - lr sum_k w_k g_k)`` (the
bilevel view of both papers).

* DoGE (Fan, Pagliardini and Jaggi, "DoGE: Domain Reweighting with
  Generalization Estimation", 2023; official code github.com/Olivia-fsm/DoGE,
  ``src/trainer.py``, ``DoGETrainer.update_domain_weights``): ``scores =
  lr_t * sum_t <g_k, g_t>`` (minus ``<g_k, g_k>`` when the targets are the
  training domains themselves), divided by ``mean_k |g_k| + 1e-6``, clipped to
  ``[lr_t * dw_min, lr_t * dw_max]`` (defaults 0 and 5), ``log w += scores /
  mu`` (mu = 0.05), softmax, then smoothing ``(1 - eps) w + eps / K``; the
  model's gradient is the mixture with the *new* weights, and the run's
  answer is the average of the weights over the updates. Here: ``step_size =
  lr_t / mu``, ``normalize=True``, ``score_range=(dw_min, dw_max)``,
  ``smoothing=eps``, ``exclude_self=True`` (the clip commutes with the
  positive factor lr_t).
* DGA (Fan, Grangier and Ablin, "Dynamic Gradient Alignment for Online Data
  Mixing", 2024): the same mirror step on the raw alignment against the
  specialized (target) set's gradient, every few model steps; the paper
  stabilizes the weights by an exponential moving average, here ``ema``:
  ``w <- ema * w_prev + (1 - ema) * w_new`` (its official code was not in the
  stored corpus, so this form is our reading of the paper's description).

**Fixed point on quadratic domains** (the tests' truth). Let ``L_k(theta) =
(1/2) |theta - c_k|^2`` and the target ``L_t = (1/2) |theta - c_t|^2`` with
``c_t = sum_k alpha_k c_k``, alpha interior to the simplex and the c_k
affinely independent. For fixed w, gradient descent on the mixture goes to
``theta(w) = sum_k w_k c_k``. The weights stop moving when every score is the
same; at ``theta(w)``, ``s_k = <theta - c_k, theta - c_t>`` and ``sum_k w_k s_k
= <theta(w) - sum_k w_k c_k, .> = 0``, so equal scores are all 0. Then
``theta - c_t = sum_k (w_k - alpha_k) c_k`` is orthogonal to every ``c_j -
c_k``; it lies in their span (the coefficients sum to 0), so it is 0, and
affine independence gives ``w = alpha``. The unique interior fixed point is
``(w, theta) = (alpha, c_t)``; with clipping at 0 (DoGE) it is the same (a
score vector of weighted mean 0 with a positive entry still moves w).
Linearized around it (theta at theta(w)), ``delta = w - alpha`` evolves as
``delta <- (I - eta diag(alpha) D^T D) delta`` with columns ``D_k = c_k -
c_t``, which contracts for small eta.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks


class MixingState(NamedTuple):
  weights: jax.Array  # [K] the current domain weights (a point of the simplex)
  average: jax.Array  # [K] the mean of the weights after each update (DoGE's answer)
  count: jax.Array  # int32: updates made


def mixing_init(num_domains: int, *, weights: Any = None) -> MixingState:
  """Uniform weights (DoGE's start), or the given ``weights`` [K] (all > 0)."""
  k = _checks.integer("num_domains", num_domains, minimum=1)
  if weights is None:
    w = jnp.full((k,), 1.0 / k, jnp.float32)
  else:
    w = jnp.asarray(weights, jnp.float32)
    if w.shape != (k,):
      raise ValueError(f"weights: expected shape ({k},), got {w.shape}")
    v = _checks.concrete(w)
    if v is not None and (not (v > 0).all() or abs(float(v.sum()) - 1) > 1e-4):
      raise ValueError(f"weights: expected positive weights summing to 1, got {v.tolist()}")
  return MixingState(w, jnp.zeros_like(w), jnp.zeros((), jnp.int32))


def _rows(name: str, grads: Any) -> jax.Array:
  leaves = jax.tree.leaves(grads)
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if not leaves or len(sizes) != 1 or None in sizes:
    raise ValueError(
      f"{name}: expected a pytree of stacked gradients with one leading axis, got sizes {sizes}"
    )
  m = sizes.pop()
  return jnp.concatenate([jnp.reshape(x, (m, -1)) for x in leaves], axis=1)


def alignment_scores(domain_grads: Any, target_grads: Any, *, exclude_self: bool = False):
  """``[K]`` ``s_k = sum_t <g_k, g_t>``, minus ``<g_k, g_k>`` with ``exclude_self``.

  Args:
    domain_grads: the K domains' gradients, a pytree like the params with a
      leading axis K on every leaf.
    target_grads: the T targets' gradients, the same pytree with leading axis T
      (one target: add the axis, ``jax.tree.map(lambda g: g[None], grad)``).
    exclude_self: the targets are the K domains themselves (T = K, in the same
      order); DoGE's generalization score then leaves each domain's own term out.
  """
  if jax.tree.structure(domain_grads) != jax.tree.structure(target_grads):
    raise ValueError("target_grads: expected the pytree structure of domain_grads")
  g = _rows("domain_grads", domain_grads)
  t = _rows("target_grads", target_grads)
  if t.shape[1] != g.shape[1]:
    raise ValueError(
      f"target_grads: expected {g.shape[1]} entries per gradient like domain_grads, "
      f"got {t.shape[1]}"
    )
  scores = jnp.sum(g @ t.T, axis=1)
  if exclude_self:
    if t.shape[0] != g.shape[0]:
      raise ValueError(
        f"exclude_self: needs the K = {g.shape[0]} domains as targets, got {t.shape[0]}"
      )
    scores = scores - jnp.sum(g * t, axis=1)
  return scores


def dga_update(
  state: MixingState,
  domain_grads: Any,
  target_grads: Any,
  *,
  step_size: Any,
  normalize: bool = False,
  score_range: tuple[float, float] | None = None,
  smoothing: Any = 0.0,
  exclude_self: bool = False,
  ema: Any = 0.0,
) -> MixingState:
  """One exponentiated-gradient step of the domain weights on gradient alignment.

  ``s = alignment_scores(...)``; with ``normalize``, ``s /= mean_k |g_k| +
  1e-6``; with ``score_range=(lo, hi)``, ``s = clip(s, lo, hi)``; ``w =
  softmax(log w + step_size * s)``; ``w = (1 - smoothing) w + smoothing / K``;
  ``w = ema * w_prev + (1 - ema) * w``. DoGE's official update is
  ``step_size = lr_t / mu``, ``normalize=True``, ``score_range=(0, 5)``,
  ``exclude_self=True`` when the targets are the training domains; DGA's the
  defaults with its ``ema`` (module docstring).

  Args:
    state: from :func:`mixing_init`.
    domain_grads, target_grads, exclude_self: as in :func:`alignment_scores`.
    step_size: eta > 0.
    normalize: divide by the domains' mean gradient norm (DoGE).
    score_range: clip the (normalized) scores to ``[lo, hi]`` (DoGE).
    smoothing: in [0, 1), mixes the new weights with the uniform.
    ema: in [0, 1), the previous weights' share in the new ones.

  Returns:
    The new ``MixingState``; ``mixed_gradient(state.weights, domain_grads)`` is
    the model's gradient.
  """
  _checks.positive("step_size", step_size)
  _checks.unit_interval("smoothing", smoothing)
  _checks.unit_interval("ema", ema)
  k = state.weights.shape[0]
  g = _rows("domain_grads", domain_grads)
  if g.shape[0] != k:
    raise ValueError(f"domain_grads: expected K = {k} domains like the state, got {g.shape[0]}")
  s = alignment_scores(domain_grads, target_grads, exclude_self=exclude_self)
  if normalize:
    s = s / (jnp.mean(jnp.linalg.norm(g, axis=1)) + 1e-6)
  if score_range is not None:
    lo, hi = score_range
    if not lo <= hi:
      raise ValueError(f"score_range: expected (lo, hi) with lo <= hi, got {score_range}")
    s = jnp.clip(s, lo, hi)
  w = jax.nn.softmax(jnp.log(state.weights) + step_size * s)
  w = (1 - smoothing) * w + smoothing / k
  w = ema * state.weights + (1 - ema) * w
  count = state.count + 1
  average = state.average + (w - state.average) / count
  return MixingState(w, average, count)


def mixed_gradient(weights: Any, domain_grads: Any) -> Any:
  """``sum_k w_k g_k``: a pytree like one domain's gradient."""
  w = jnp.asarray(weights)
  k = {jnp.shape(x)[0] for x in jax.tree.leaves(domain_grads)}
  if w.ndim != 1 or k != {w.shape[0]}:
    raise ValueError(
      f"weights: expected [K] matching domain_grads' leading axis {k}, got {w.shape}"
    )
  return jax.tree.map(lambda x: jnp.tensordot(w, x, axes=1), domain_grads)
