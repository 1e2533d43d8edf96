r"""Adaptive spike clipping of the global gradient norm (ZClip, Kumar et al. 2025).

Follows the official ``bluorion-com/ZClip`` code (``zclip/zclip.py``, mode
``"zscore"``):

* **Warmup.** The first ``warmup_steps`` norms are only collected; on the
  ``warmup_steps``-th the statistics start at their mean ``\mu`` and
  population variance ``\sigma^2``. No adaptive clipping happens before.
* **Detection.** Afterwards ``z = (\|g\| - \mu) / (\sigma + \epsilon)``; the
  step is a spike when ``z > z_{thresh}``.
* **Clipping.** A spike's norm is clipped to
  ``(\mu + z_{thresh} \sigma / (z / z_{thresh})) \cdot`` ``clip_factor``
  (``clip_option="adaptive_scaling"``: bigger outliers are clipped harder)
  or to ``\mu`` (``"mean"``); the gradient is multiplied by
  ``threshold / (\|g\| + 10^{-6})`` when ``\|g\|`` exceeds it.
  An optional fixed ``max_norm`` caps the threshold (and, during warmup,
  clips as ``clip_by_global_norm`` does).
* **Statistics.** ``\mu \leftarrow \alpha \mu + (1-\alpha) x``, then
  ``\sigma^2 \leftarrow \alpha \sigma^2 + (1-\alpha)(x - \mu)^2`` with the new
  ``\mu``, where ``x`` is the clipped norm on a spike and the raw norm
  otherwise (with ``skip_update_on_spike`` a spike leaves them unchanged).

Differences from the official code: ``max_norm`` defaults to ``None`` (the
code's current default is 1.0, its README's ``None``); the warmup
statistics are accumulated with Welford's update instead of a Python list;
and a step whose gradient is exactly zero (no sample succeeded, in RLVR)
leaves the statistics alone and does not count towards the warmup. The
official code folds such zeros in: after an all-zero warmup its mean and
variance are 0, every later gradient is a spike clipped to norm 0, and the
statistics never leave 0 again.

Non-finite gradients: skipped (zero update, unchanged state); see
:mod:`gradlab.transforms.nonfinite`. The check is read off the gradient norm
the transform computes anyway, so a finite gradient whose norm overflows
(``> 1.8e19`` in float32) is skipped too.

References:
  Kumar, Owen, Ashraf, Pritchard. ZClip: Adaptive Spike Mitigation for LLM
  Pre-Training. 2025. https://arxiv.org/abs/2504.02507
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from gradlab import _checks


class SpikeClipState(NamedTuple):
  count: jax.Array  # steps with a non-zero gradient seen (int32)
  mean: jax.Array  # EMA of the norm (the running mean during warmup)
  var: jax.Array  # EMA of its variance (Welford's M2 during warmup)
  last_norm: jax.Array  # the last step's norm before clipping, for logging
  last_spike: jax.Array  # whether the last step was clipped as a spike


def spike_clip(
  *,
  alpha: ArrayLike = 0.97,
  z_thresh: ArrayLike = 2.5,
  warmup_steps: int = 25,
  clip_option: str = "adaptive_scaling",
  clip_factor: ArrayLike = 1.0,
  max_norm: ArrayLike | None = None,
  eps: ArrayLike = 1e-6,
  skip_update_on_spike: bool = False,
) -> optax.GradientTransformation:
  """Clips the global gradient norm when it is a z-score outlier. Defaults: ZClip's."""
  _checks.unit_interval("alpha", alpha)
  _checks.positive("z_thresh", z_thresh)
  _checks.count("warmup_steps", warmup_steps, minimum=1)
  _checks.positive("clip_factor", clip_factor)
  _checks.positive("eps", eps, allow_zero=True)
  _checks.one_of("clip_option", clip_option, ("adaptive_scaling", "mean"))
  if max_norm is not None:
    _checks.positive("max_norm", max_norm)

  def init_fn(params):
    # the parameters' float dtype: float32 params keep float32 statistics under x64
    leaves = [
      x for x in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(x), jnp.floating)
    ]
    z = jnp.zeros([], optax.tree.dtype(leaves, "highest") if leaves else jnp.float32)
    return SpikeClipState(jnp.zeros([], jnp.int32), z, z, z, jnp.array(False))

  def scale_to(updates, norm, limit):
    coef = jnp.where(norm > limit, limit / (norm + 1e-6), 1.0)
    return jax.tree.map(lambda u: (u * coef).astype(u.dtype), updates)

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates).astype(state.mean.dtype)
    # The non-finite policy, read off the norm this transform computes anyway (no
    # separate pass over the gradient) and selected inside the scaling pass. A
    # norm that overflows (a finite gradient with ||g|| > 1.8e19 in float32)
    # counts as non-finite too: its statistics would be poisoned for good.
    ok = jnp.isfinite(norm)
    warming = state.count < warmup_steps
    # Warmup: Welford's running mean and M2; the last warmup step turns M2
    # into the population variance.
    n = (state.count + 1).astype(state.mean.dtype)
    delta = norm - state.mean
    w_mean = state.mean + delta / n
    w_m2 = state.var + delta * (norm - w_mean)
    w_var = jnp.where(state.count + 1 == warmup_steps, w_m2 / n, w_m2)
    # After warmup: z-score test and clipping.
    std = jnp.sqrt(state.var)
    z = (norm - state.mean) / (std + eps)
    spike = (~warming) & (z > z_thresh)
    if clip_option == "adaptive_scaling":
      clip_val = (state.mean + z_thresh * std / (z / z_thresh)) * clip_factor
    else:
      clip_val = state.mean
    limit = jnp.where(spike, clip_val, norm)
    if max_norm is not None:
      limit = jnp.minimum(limit, max_norm)
    limit = jnp.where(warming, norm if max_norm is None else jnp.minimum(norm, max_norm), limit)
    out = scale_to(updates, norm, limit)
    x = jnp.where(spike, clip_val, norm)
    e_mean = alpha * state.mean + (1 - alpha) * x
    e_var = alpha * state.var + (1 - alpha) * (x - e_mean) ** 2
    if skip_update_on_spike:
      e_mean = jnp.where(spike, state.mean, e_mean)
      e_var = jnp.where(spike, state.var, e_var)
    mean = jnp.where(warming, w_mean, e_mean)
    var = jnp.where(warming, w_var, e_var)
    informative = norm > 0  # a zero gradient carries no information about the norms
    new_state = SpikeClipState(
      jnp.where(informative, optax.safe_increment(state.count), state.count),
      jnp.where(informative, mean, state.mean).astype(state.mean.dtype),
      jnp.where(informative, var, state.var).astype(state.var.dtype),
      norm,
      spike & informative,
    )
    out = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), out)
    return out, jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)

  return optax.GradientTransformation(init_fn, update_fn)
