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
code's current default is 1.0, its README's ``None``), and the warmup
statistics are accumulated with Welford's update instead of a Python list.

Non-finite gradients: skipped (zero update, unchanged state); see
:mod:`gradlab.transforms._common`.

References:
  Kumar, Owen, Ashraf, Pritchard. ZClip: Adaptive Spike Mitigation for LLM
  Pre-Training. 2025. https://arxiv.org/abs/2504.02507
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab.transforms import _common


class SpikeClipState(NamedTuple):
  count: jax.Array      # steps seen (int32)
  mean: jax.Array       # EMA of the norm (the running mean during warmup)
  var: jax.Array        # EMA of its variance (Welford's M2 during warmup)
  last_norm: jax.Array  # the last step's norm before clipping, for logging
  last_spike: jax.Array  # whether the last step was clipped as a spike


def spike_clip(*, alpha: float = 0.97, z_thresh: float = 2.5, warmup_steps: int = 25,
               clip_option: str = "adaptive_scaling", clip_factor: float = 1.0,
               max_norm: float | None = None, eps: float = 1e-6,
               skip_update_on_spike: bool = False) -> optax.GradientTransformation:
  """Clips the global gradient norm when it is a z-score outlier. Defaults: ZClip's."""
  _common.check_unit_interval("alpha", alpha)
  _common.check_positive("z_thresh", z_thresh)
  _common.check_int("warmup_steps", warmup_steps, minimum=1)
  _common.check_positive("clip_factor", clip_factor)
  _common.check_positive("eps", eps, allow_zero=True)
  if clip_option not in ("adaptive_scaling", "mean"):
    raise ValueError(f"clip_option: expected 'adaptive_scaling' or 'mean', got {clip_option!r}")
  if max_norm is not None:
    _common.check_positive("max_norm", max_norm)

  def init_fn(params):
    del params
    z = jnp.zeros([], jnp.result_type(float))  # float64 under jax.enable_x64
    return SpikeClipState(jnp.zeros([], jnp.int32), z, z, z, jnp.array(False))

  def scale_to(updates, norm, limit):
    coef = jnp.where(norm > limit, limit / (norm + 1e-6), 1.0)
    return jax.tree.map(lambda u: (u * coef).astype(u.dtype), updates)

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates).astype(state.mean.dtype)
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
    return out, SpikeClipState(optax.safe_increment(state.count), mean, var, norm, spike)

  return optax.GradientTransformation(init_fn, _common.skip_nonfinite(update_fn))
