r"""Variance-reduced updates: STORM, MARS and SVRG, fed by the train step's ``grad_fn``.

Each needs a gradient the ordinary step does not compute: the gradient of the
*current* batch at *other* parameters (the previous iterate for STORM and
exact MARS, the snapshot for SVRG). They take it as the extra argument
``grad_fn``, ``params -> gradient`` on the step's batch and key; with
:func:`gradlab.train.make_train_step` pass
``extra_args_fn=grad_fn_extra_args`` (or a function that returns ``grad_fn``
among other extras). These transforms keep the parameters they need in their
state and call it; each call costs one more backward pass.

Non-finite gradients: skipped (zero update, unchanged state), whether the NaN or
Inf is in the step's gradient or in one that ``grad_fn`` / ``full_grad_fn``
returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from gradlab import _checks
from gradlab.transforms import nonfinite, torch_adam


def grad_fn_extra_args(params, batch, key, grad_fn) -> dict:
  """``extra_args_fn`` for ``make_train_step`` that hands the optimizer ``grad_fn``."""
  del params, batch, key
  return {"grad_fn": grad_fn}


def _need(name: str, value: Any, who: str) -> None:
  if value is None:
    raise ValueError(
      f"{name}: {who} needs the extra argument {name} (with gradlab.train."
      "make_train_step: extra_args_fn=gradlab.transforms.grad_fn_extra_args) "
      "and params"
    )


class StormState(NamedTuple):
  count: jax.Array
  d: optax.Updates  # the estimator d_t
  prev_params: optax.Params  # x_t, where d_t was formed
  sum_sq: jax.Array  # sum_i ||g_i||^2, for the step size


def storm(
  k: ArrayLike = 0.1, w: ArrayLike = 0.1, c: ArrayLike = 100.0
) -> optax.GradientTransformationExtraArgs:
  r"""STORM (Cutkosky & Orabona, NeurIPS 2019), Algorithm 1, including its step size.

  .. math::
    d_t = g(x_t, \xi_t) + (1 - a_t)\big(d_{t-1} - g(x_{t-1}, \xi_t)\big),\quad
    \eta_t = k / (w + \textstyle\sum_{i \le t} \|g(x_i, \xi_i)\|^2)^{1/3},\quad
    a_{t+1} = \min(1, c\,\eta_t^2),

  and the update is ``-\eta_t d_t`` (so no learning rate follows it); the
  first step uses ``d_1 = g(x_1, \xi_1)``. The norms are global (the
  algorithm box's); ``a`` is capped at 1 as the analysis requires. The state
  keeps the parameters' dtypes (also under ``jax_enable_x64``).

  References:
    Cutkosky, Orabona. Momentum-Based Variance Reduction in Non-Convex SGD.
    NeurIPS 2019. https://arxiv.org/abs/1905.10018
  """
  for name, v in (("k", k), ("w", w), ("c", c)):
    _checks.positive(name, v)

  def init_fn(params):
    return StormState(
      jnp.zeros([], jnp.int32),
      optax.tree.zeros_like(params),
      optax.tree.cast(params, None),
      jnp.zeros([], optax.tree.dtype(params, "highest")),
    )

  def prepare(updates, state, params=None, *, grad_fn=None, **extra):
    del updates, extra
    _need("grad_fn", grad_fn, "storm")
    _need("params", params, "storm")
    return grad_fn(state.prev_params)

  def update_fn(updates, state, params=None, *, prepared, **extra):
    del extra
    g_prev = prepared
    first = state.count == 0
    eta_prev = k / (w + state.sum_sq) ** (1.0 / 3.0)
    a = jnp.minimum(1.0, c * eta_prev**2)
    d = jax.tree.map(
      lambda g, dd, gp: jnp.where(first, g, g + (1 - a) * (dd - gp)).astype(g.dtype),
      updates,
      state.d,
      g_prev,
    )
    sum_sq = state.sum_sq + optax.tree.norm(updates, squared=True).astype(state.sum_sq.dtype)
    eta = k / (w + sum_sq) ** (1.0 / 3.0)
    out = jax.tree.map(lambda x: (-eta * x).astype(x.dtype), d)
    return out, StormState(
      optax.safe_increment(state.count), d, params, sum_sq.astype(state.sum_sq.dtype)
    )

  return optax.GradientTransformationExtraArgs(
    init_fn, nonfinite.skip_nonfinite(update_fn, prepare)
  )


class ScaleByMarsState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  last_grad: optax.Updates  # approximate version: the previous step's gradient
  prev_params: optax.Params  # exact version: x_{t-1}


def _mars_direction(b1, b2, eps, gamma, exact):
  scale = gamma * b1 / (1.0 - b1)

  def init_fn(params):
    z = optax.tree.zeros_like(params)
    # Only the version in use keeps its reference: the previous gradient, or
    # the previous iterate.
    return ScaleByMarsState(
      jnp.zeros([], jnp.int32),
      z,
      z,
      () if exact else z,
      optax.tree.cast(params, None) if exact else (),
    )

  def prepare(updates, state, params=None, *, grad_fn=None, **extra):
    del extra
    if not exact:
      return state.last_grad
    _need("grad_fn", grad_fn, "scale_by_mars(exact=True)")
    _need("params", params, "scale_by_mars(exact=True)")
    prev = jax.tree.map(lambda p, q: jnp.where(state.count == 0, q, p), state.prev_params, params)
    return grad_fn(prev)

  def update_fn(updates, state, params=None, *, prepared, **extra):
    del extra
    c = optax.safe_increment(state.count)

    def correct(g, r):
      ct = g + scale * (g - r)
      n = jnp.sqrt(jnp.sum(jnp.square(ct)))
      return jnp.where(n > 1.0, ct / n, ct).astype(g.dtype)

    ct = jax.tree.map(correct, updates, prepared)
    mu = optax.tree.update_moment(ct, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(ct, state.nu, b2, 2)
    mu_hat = optax.tree.bias_correction(mu, b1, c)
    nu_hat = optax.tree.bias_correction(nu, b2, c)
    out = jax.tree.map(lambda m, v: (m / (jnp.sqrt(v) + eps)).astype(m.dtype), mu_hat, nu_hat)
    return out, ScaleByMarsState(c, mu, nu, () if exact else updates, params if exact else ())

  return init_fn, update_fn, prepare


def _check_mars(b1, b2, eps, gamma, exact):
  torch_adam.check_adam(b1, b2, eps)
  _checks.positive("gamma", gamma, allow_zero=True)
  if not isinstance(exact, bool):
    raise ValueError(f"exact: expected a bool, got {exact!r}")


def scale_by_mars(
  b1: ArrayLike = 0.95,
  b2: ArrayLike = 0.99,
  eps: ArrayLike = 1e-8,
  *,
  gamma: ArrayLike = 0.025,
  exact: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""MARS-AdamW's direction (Yuan et al. 2024), as the official ``mars.py`` computes it.

  Per leaf (the official code applies it to every tensor with
  ``optimize_1d=True``; route 1-D leaves to AdamW with ``optax.partition``
  for its default):

  .. math::
    c_t = g_t + \gamma \frac{\beta_1}{1 - \beta_1}(g_t - \tilde g_{t-1}),\quad
    c_t \leftarrow c_t / \|c_t\| \text{ if } \|c_t\| > 1,\\
    m_t = \beta_1 m_{t-1} + (1-\beta_1) c_t,\quad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) c_t^2,\quad
    \Delta_t = \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}.

  ``\tilde g_{t-1}`` is the previous step's gradient (``exact=False``, the
  official default ``is_approx=True``; zero at the first step) or the
  gradient of the *current* batch at the previous iterate (``exact=True``,
  from the ``grad_fn`` extra argument; at the first step the current
  iterate, so ``c_1 = g_1``).

  References:
    Yuan, Liu, Wu, Zhou, Gu. MARS: Unleashing the Power of Variance Reduction
    for Training Large Models. 2024. https://arxiv.org/abs/2411.10438
    Official code: https://github.com/AGI-Arena/MARS (``MARS/optimizers/mars.py``).
  """
  _check_mars(b1, b2, eps, gamma, exact)
  init_fn, update_fn, prepare = _mars_direction(b1, b2, eps, gamma, exact)
  return optax.GradientTransformationExtraArgs(
    init_fn, nonfinite.skip_nonfinite(update_fn, prepare)
  )


def mars(
  learning_rate: optax.ScalarOrSchedule,
  b1: ArrayLike = 0.95,
  b2: ArrayLike = 0.99,
  eps: ArrayLike = 1e-8,
  weight_decay: ArrayLike = 0.0,
  *,
  gamma: ArrayLike = 0.025,
  exact: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """MARS-AdamW: :func:`scale_by_mars` + decoupled weight decay + learning rate.

  The non-finite policy guards the whole chain once (its check includes the
  gradient ``grad_fn`` returns, with ``exact=True``).
  """
  _check_mars(b1, b2, eps, gamma, exact)
  init_fn, update_fn, prepare = _mars_direction(b1, b2, eps, gamma, exact)
  # The direction's prepare runs outside the chain's cond so that a
  # non-finite grad_fn result skips the whole chain.
  chain = optax.chain(
    optax.GradientTransformationExtraArgs(
      init_fn, lambda u, s, p=None, *, prepared=None, **e: update_fn(u, s, p, prepared=prepared)
    ),
    optax.add_decayed_weights(weight_decay),
    optax.scale_by_learning_rate(learning_rate),
  )

  def chain_prepare(updates, state, params=None, **extra):
    return prepare(updates, state[0], params, **extra)

  return optax.GradientTransformationExtraArgs(
    chain.init, nonfinite.skip_nonfinite(chain.update, chain_prepare)
  )


class SVRGState(NamedTuple):
  count: jax.Array
  snapshot: optax.Params
  full_grad: optax.Updates


def svrg(snapshot_every: int) -> optax.GradientTransformationExtraArgs:
  r"""SVRG's gradient (Johnson & Zhang, NeurIPS 2013): ``g(x) - g(\tilde x) + \mu``.

  Every ``snapshot_every`` steps (starting with the first) the current
  parameters become the snapshot ``\tilde x`` and ``\mu`` their full
  gradient, from the extra argument ``full_grad_fn(params)`` (evaluated under
  ``lax.cond`` only on those steps). On every step ``g(\tilde x)`` on the
  current batch comes from ``grad_fn``. Chain a learning rate (or any
  optimizer) after it: ``optax.chain(svrg(m), optax.sgd(lr))``.

  References:
    Johnson, Zhang. Accelerating Stochastic Gradient Descent using Predictive
    Variance Reduction. NeurIPS 2013.
  """
  snapshot_every = _checks.integer("snapshot_every", snapshot_every, minimum=1)

  def init_fn(params):
    return SVRGState(
      jnp.zeros([], jnp.int32), optax.tree.cast(params, None), optax.tree.zeros_like(params)
    )

  def prepare(
    updates, state, params=None, *, grad_fn=None, full_grad_fn: Callable | None = None, **extra
  ):
    del updates, extra
    _need("grad_fn", grad_fn, "svrg")
    _need("full_grad_fn", full_grad_fn, "svrg")
    _need("params", params, "svrg")
    take = state.count % snapshot_every == 0
    snapshot = jax.tree.map(lambda p, s: jnp.where(take, p, s), params, state.snapshot)
    full = jax.lax.cond(take, lambda: full_grad_fn(params), lambda: state.full_grad)
    return snapshot, full, grad_fn(snapshot)

  def update_fn(updates, state, params=None, *, prepared, **extra):
    del params, extra
    snapshot, full, at_snapshot = prepared
    out = jax.tree.map(lambda g, gs, mu: g - gs + mu, updates, at_snapshot, full)
    return out, SVRGState(optax.safe_increment(state.count), snapshot, full)

  return optax.GradientTransformationExtraArgs(
    init_fn, nonfinite.skip_nonfinite(update_fn, prepare)
  )
