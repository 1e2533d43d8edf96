r"""DIFF2: a differentially private gradient estimate built from clipped gradient *differences*.

Murata & Suzuki (ICML 2023), Algorithm 1, with one worker (``P = 1``) and
the GD routine (Algorithm 3): at round ``t = 0, 1, ...`` on the examples
``z_1..z_n`` of the step's batch,

.. math::
  d_t = \begin{cases}
    \mathrm{ClippedMean}\big(\{\nabla\ell(x_t, z_i)\}_i, C_1\big) + \xi_t,
      & \xi_t \sim N(0, \sigma_1^2 I), & t \bmod T = 0 \text{ (restart)},\\
    \mathrm{ClippedMean}\big(\{\nabla\ell(x_t, z_i) - \nabla\ell(x_{t-1}, z_i)\}_i, C_2\big)
      + \xi_t, & \xi_t \sim N(0, \sigma_2^2 I), & \text{otherwise},
  \end{cases}\\
  v_t = d_t \text{ (restart)}, \qquad v_t = v_{t-1} + d_t \text{ (otherwise)},

where ``ClippedMean({a_i}, C) = (1/n) \sum_i \min(1, C / \|a_i\|) a_i``
(Algorithm 2; the norm is each example's global norm over the whole parameter
tree, optax's ``per_example_global_norm_clip``). The transform returns
``v_t``; chain a learning rate after it (``optax.chain(diff2(...),
optax.sgd(eta))`` is the GD routine ``x_{t+1} = x_t - \eta v_t``, any optax
optimizer may take its place).

The paper states the noise as absolute standard deviations ``\sigma_1,
\sigma_2``; here, as in DP-SGD, they are ``noise_multiplier * C / n``: the
Gaussian mechanism on a mean of ``n`` terms of norm at most ``C`` (the
differences' sensitivity is ``C_2``: for an ``L``-smooth ``\ell`` a difference
has norm at most ``L \|x_t - x_{t-1}\|``, far below a gradient's, which is
why a small ``C_2``, and so little noise, suffices). The privacy accounting (the
``(\varepsilon, \delta)`` of ``R/T`` restarts and ``R - R/T`` difference
rounds, composed) is the user's. With ``P`` workers of ``n`` examples each the
algorithm averages ``P`` such estimates: the same clipped mean over all ``Pn``
examples and the noise's standard deviation divided by ``\sqrt P``.

Inputs: ``updates`` are the **per-example** gradients at the current
parameters (every leaf with a leading batch axis ``n``, e.g. from
``gradlab.gradstats.per_example_grads``), and the extra argument
``per_example_grad_fn(params)`` returns the per-example gradients of the same
batch at other parameters (called, under ``lax.cond``, on difference rounds
only, at the previous iterate kept in the state). Like
``dp_per_layer_aggregate`` it must come first in a chain.

Non-finite gradients (in ``updates`` or from ``per_example_grad_fn``): the
step is skipped (zero update, state untouched: no noise is drawn and the round
counter does not advance).

No official code was found (none is linked from the paper or its pages, and
none turned up on GitHub). The update is derived from the paper's description:
Algorithm 1 ``DIFF2(x_0, sigma_1, sigma_2, C_1, C_2, T, R, args)``,
Algorithm 2's clipped mean and Algorithm 3's GD routine, as the equations above
state them.

References:
  Murata, Suzuki. DIFF2: Differential Private Optimization via Gradient
  Differences for Nonconvex Distributed Learning. ICML 2023.
  https://arxiv.org/abs/2302.03884
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab import _checks
from gradlab.transforms import nonfinite


class Diff2State(NamedTuple):
  count: jax.Array  # rounds taken, t
  v: optax.Updates  # the estimate v_{t-1}
  prev_params: optax.Params  # x_{t-1}
  key: jax.Array


def _check_clip(name: str, clip, noise_name: str, noise) -> None:
  if clip is not None:
    _checks.positive(name, clip)
  _checks.positive(noise_name, noise, allow_zero=True)
  z = _checks.concrete(noise)
  if clip is None and (z is None or float(z) != 0.0):
    raise ValueError(
      f"{noise_name}: noise is calibrated to {name} and needs it; with {name}=None "
      "(no clipping) it must be 0"
    )


def _check_per_example(updates, params) -> int:
  leaves = jax.tree.leaves(updates)
  if not leaves or any(jnp.ndim(x) == 0 for x in leaves):
    raise ValueError(
      "updates: diff2 expects per-example gradients, every leaf with a leading batch axis"
    )
  sizes = {x.shape[0] for x in leaves}
  if len(sizes) != 1:
    raise ValueError(f"updates: every leaf needs the same leading batch size, got {sorted(sizes)}")
  if params is not None:
    for g, p in zip(leaves, jax.tree.leaves(params)):
      if g.shape[1:] != jnp.shape(p):
        raise ValueError(
          f"updates: expected per-example gradients [n, *param.shape], got {g.shape} "
          f"for a parameter of shape {jnp.shape(p)}"
        )
  return sizes.pop()


def diff2(
  *,
  restart_every: int,
  l2_norm_clip: float | None,
  diff_norm_clip: float | None,
  noise_multiplier: float,
  diff_noise_multiplier: float,
  key: jax.Array,
) -> optax.GradientTransformationExtraArgs:
  r"""DIFF2's private gradient estimate ``v_t`` (see the module docstring).

  Args:
    restart_every: ``T >= 1``: a full (clipped, noised) gradient at rounds
      ``0, T, 2T, ...``; ``T = 1`` is DP-GD.
    l2_norm_clip: ``C_1``, the per-example clip of the gradients at a restart;
      None: no clipping (then ``noise_multiplier`` must be 0).
    diff_norm_clip: ``C_2``, the per-example clip of the gradient differences;
      None: no clipping (then ``diff_noise_multiplier`` must be 0).
    noise_multiplier: ``z_1 >= 0``; the restart noise has standard deviation
      ``\sigma_1 = z_1 C_1 / n``.
    diff_noise_multiplier: ``z_2 >= 0``; ``\sigma_2 = z_2 C_2 / n``.
    key: a ``jax.random.key``; kept in the state. Each round takes
      ``key, sub = split(key)`` and one standard normal draw per leaf (in
      ``jax.tree.leaves`` order) from ``split(sub, num_leaves)``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose update takes the
    per-example gradients and the extra argument ``per_example_grad_fn``.
    Without clipping and noise ``v_t`` is the batch's mean gradient at every
    round (the differences telescope).

  Example (full-batch DIFF2-GD)::

    pe = lambda p: gradstats.per_example_grads(loss_fn, p, batch)
    tx = optax.chain(diff2(restart_every=10, l2_norm_clip=1.0, diff_norm_clip=0.1,
                           noise_multiplier=1.0, diff_noise_multiplier=1.0, key=key),
                     optax.sgd(0.1))
    updates, state = tx.update(pe(params), state, params, per_example_grad_fn=pe)
  """
  restart_every = _checks.integer("restart_every", restart_every, minimum=1)
  _check_clip("l2_norm_clip", l2_norm_clip, "noise_multiplier", noise_multiplier)
  _check_clip("diff_norm_clip", diff_norm_clip, "diff_noise_multiplier", diff_noise_multiplier)
  _checks.is_key("key", key)
  c1 = jnp.inf if l2_norm_clip is None else l2_norm_clip
  c2 = jnp.inf if diff_norm_clip is None else diff_norm_clip
  # the noise's scale per round, before the 1/n of the mean (0 without clipping)
  s1 = 0.0 if l2_norm_clip is None else noise_multiplier * l2_norm_clip
  s2 = 0.0 if diff_norm_clip is None else diff_noise_multiplier * diff_norm_clip

  def init_fn(params):
    return Diff2State(
      jnp.zeros([], jnp.int32),
      optax.tree.zeros_like(params),
      optax.tree.cast(params, None),
      key,
    )

  def prepare(updates, state, params=None, *, per_example_grad_fn: Callable | None = None, **extra):
    del extra
    if per_example_grad_fn is None or params is None:
      raise ValueError(
        "per_example_grad_fn: diff2 needs the extra argument per_example_grad_fn "
        "(params -> per-example gradients of the step's batch) and params"
      )
    _check_per_example(updates, params)
    restart = state.count % restart_every == 0
    return jax.lax.cond(
      restart,
      lambda: jax.tree.map(jnp.zeros_like, updates),
      lambda: per_example_grad_fn(state.prev_params),
    )

  def update_fn(updates, state, params=None, *, prepared, **extra):
    del extra
    n = jax.tree.leaves(updates)[0].shape[0]
    restart = state.count % restart_every == 0
    diffs = jax.tree.map(lambda g, h: g - h, updates, prepared)
    # both clipped means are cheap next to the gradients; the select keeps one program
    full_sum, _ = optax.per_example_global_norm_clip(updates, c1)
    diff_sum, _ = optax.per_example_global_norm_clip(diffs, c2)
    scale = jnp.where(restart, s1, s2) / n
    new_key, sub = jax.random.split(state.key)
    leaves, treedef = jax.tree.flatten(full_sum)
    keys = jax.random.split(sub, len(leaves))
    noise = jax.tree.unflatten(
      treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )

    def estimate(full, diff, xi, v):
      d = jnp.where(restart, full, diff) / n + scale * xi
      return jnp.where(restart, d, v + d).astype(v.dtype)

    v = jax.tree.map(estimate, full_sum, diff_sum, noise, state.v)
    return v, Diff2State(optax.safe_increment(state.count), v, params, new_key)

  return optax.GradientTransformationExtraArgs(
    init_fn, nonfinite.skip_nonfinite(update_fn, prepare)
  )
