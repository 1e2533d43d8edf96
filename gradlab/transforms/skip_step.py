r"""Skip the update on a loss or gradient-norm spike (OLMo's skip-step rule), as an optax wrapper.

Large-scale trainers guard against a bad batch outside the optimizer: the
step is dropped when the loss, or the global gradient norm, sits far above
its recent history. This follows OLMo-core's ``SkipStepOptimizer``
(``allenai/OLMo-core``, ``src/olmo_core/optim/skip_step_optimizer.py``:
the ``latest_loss`` / ``latest_grad_norm`` setters and ``get_step_factor``).
Per step, with ``x`` the current loss (or gradient norm) and ``\mu``,
``\sigma`` the mean and unbiased standard deviation of the last ``window``
values before it:

* every step's ``x`` enters the history (a skipped spike too, as there);
* once ``warmup`` values have been recorded, this step's included, the step
  is skipped when ``x - \mu > threshold \cdot \sigma`` for the loss or for the
  gradient norm (one-sided: a sudden drop is no reason to skip);
* a skipped step returns an all-zero update and leaves ``inner``'s state
  exactly as it was (its step counter too), so the spike neither moves the
  parameters nor enters any moment estimate.

The gradient norm is the global norm of the updates this wrapper receives:
put it outermost (``skip_spikes(optax.chain(clip, adam))``) to watch the raw
gradient, as OLMo does with the norm before clipping. Levanter's
``levanter.optim.skipstep`` (``stanford-crfm/levanter``) ports the same rule
to optax with a ring buffer, as here.

Deviations from OLMo-core: ``warmup`` defaults to its
``max(20, window // 2)`` but is capped at ``window + 1`` (the most values the
history holds; OLMo would never skip with a window under 19); the
statistics are float32; and the non-finite policy of
:mod:`gradlab.transforms.nonfinite` applies first: a step whose gradient or
loss holds a NaN or Inf is skipped and leaves the *whole* state, the
history included, untouched (in OLMo's history a NaN loss would make every
later comparison false, so every later step would be skipped).

References:
  Groeneveld et al., OLMo: Accelerating the Science of Language Models
  (2024), and OLMo 2 (2025, https://arxiv.org/abs/2501.00656); Chowdhery et
  al., PaLM (2022), section 5.1, which restarts before a spike and skips
  the batches around it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from gradlab import _checks
from gradlab.transforms import nonfinite


class SkipSpikesState(NamedTuple):
  inner_state: Any  # the wrapped transformation's state
  losses: jax.Array  # [window] float32: the most recent losses (a ring buffer)
  grad_norms: jax.Array  # [window] float32: the most recent global gradient norms
  count: jax.Array  # int32: values recorded so far (slot count % window is next)
  num_skipped: jax.Array  # int32: steps skipped as spikes
  last_skipped: jax.Array  # bool: whether the last (finite) step was skipped


def _mean_std(buffer: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and unbiased standard deviation of the first ``n`` entries (``n >= 2``)."""
  mask = jnp.arange(buffer.shape[0]) < n
  nf = n.astype(buffer.dtype)
  mean = jnp.sum(jnp.where(mask, buffer, 0.0)) / nf
  var = jnp.sum(jnp.where(mask, (buffer - mean) ** 2, 0.0)) / jnp.maximum(nf - 1.0, 1.0)
  return mean, jnp.sqrt(var)


def skip_spikes(
  inner: optax.GradientTransformation,
  *,
  window: int = 128,
  threshold: ArrayLike = 6.0,
  warmup: int | None = None,
  use_grad_norm: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Skips ``inner``'s update when the loss or the gradient norm spikes.

  Args:
    inner: the optimizer to guard (any optax transformation; it receives
      the extra arguments, ``value`` included).
    window: how many earlier values the statistics cover (static, >= 2;
      OLMo's ``rolling_interval_length``, default 128).
    threshold: how many standard deviations above the mean count as a spike
      (OLMo's ``sigma_factor``, default 6); may be traced.
    warmup: a step can be skipped once this many values, its own included,
      are recorded (static, in ``[3, window + 1]``); default
      ``min(max(20, window // 2), window + 1)``.
    use_grad_norm: also watch the global gradient norm (OLMo watches it when
      its gradient clipper reports one); False watches the loss alone.

  Returns:
    A ``GradientTransformationExtraArgs`` whose ``update`` needs the extra
    argument ``value``, this step's scalar loss (``gradlab.train.make_update``
    passes it); its state is :class:`SkipSpikesState`.
  """
  window = _checks.integer("window", window, minimum=2)
  _checks.positive("threshold", threshold, allow_zero=True)
  if warmup is None:
    warmup = min(max(20, window // 2), window + 1)
  warmup = _checks.integer("warmup", warmup, minimum=3)
  if warmup > window + 1:
    raise ValueError(
      f"warmup: expected at most window + 1 = {window + 1} (the values the history holds), "
      f"got {warmup}"
    )
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return SkipSpikesState(
      inner_state=inner.init(params),
      losses=jnp.zeros((window,), jnp.float32),
      grad_norms=jnp.zeros((window,), jnp.float32),
      count=jnp.zeros([], jnp.int32),
      num_skipped=jnp.zeros([], jnp.int32),
      last_skipped=jnp.zeros([], bool),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra):
    if value is None:
      raise ValueError(
        "value: skip_spikes needs this step's loss as the extra argument value "
        "(gradlab.train.make_update passes it)"
      )
    if jnp.ndim(value) != 0:
      raise ValueError(f"value: expected the scalar loss, got shape {jnp.shape(value)}")
    loss = jnp.asarray(value).astype(jnp.float32)
    norm = optax.tree.norm(updates).astype(jnp.float32)
    ok = nonfinite.all_finite(updates) & jnp.isfinite(loss)

    n = jnp.minimum(state.count, window)
    armed = state.count + 1 >= warmup
    mean, std = _mean_std(state.losses, n)
    spike = loss - mean > threshold * std
    if use_grad_norm:
      mean, std = _mean_std(state.grad_norms, n)
      spike = spike | (norm - mean > threshold * std)
    skip = armed & spike

    def step(_):
      return inner.update(updates, state.inner_state, params, value=value, **extra)

    def hold(_):
      shapes = jax.eval_shape(step, None)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[0])
      return zeros, state.inner_state

    new_updates, inner_state = jax.lax.cond(ok & ~skip, step, hold, None)
    slot = state.count % window
    keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
    return new_updates, SkipSpikesState(
      inner_state=inner_state,
      losses=keep(state.losses.at[slot].set(loss), state.losses),
      grad_norms=keep(state.grad_norms.at[slot].set(norm), state.grad_norms),
      count=keep(optax.safe_increment(state.count), state.count),
      num_skipped=keep(state.num_skipped + skip.astype(jnp.int32), state.num_skipped),
      last_skipped=keep(skip, state.last_skipped),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
