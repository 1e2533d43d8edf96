r"""AdaHessian: Adam with the Hessian's diagonal in place of the squared gradient (Yao et al. 2021).

Follows the official PyTorch optimizer, ``amirgholami/adahessian``,
``image_classification/optim_adahessian.py`` (class ``Adahessian``, methods
``get_trace`` and ``step``). Per step ``t``, on the current batch's loss ``f``:

1. **Hutchinson's diagonal.** One Rademacher probe ``v`` (entries +-1) and the
   Hessian-vector product ``Hv``; the diagonal estimate is ``D = |v * Hv|``
   entrywise (the official code writes it ``|Hv|``, the same thing since
   ``|v| = 1``).
2. **Spatial averaging.** For a convolution kernel ``D`` is replaced by its
   mean over the kernel window, broadcast back: the official code averages a
   4-D torch kernel ``[out, in, kh, kw]`` over ``(kh, kw)``; here a leaf of
   rank ``r >= 3`` is taken for a flax kernel ``[*window, in, out]`` and
   averaged over its leading ``r - 2`` axes. Rank <= 2 leaves (biases, dense
   kernels) are not averaged.
3. **Moments.** ``m = b1 m + (1 - b1) g`` and ``v = b2 v + (1 - b2) D^2``.
4. **Step.** With ``c1 = 1 - b1^t``, ``c2 = 1 - b2^t`` and the Hessian power
   ``k`` in ``[0, 1]``:
   ``p <- p - lr (m / c1 / (\sqrt{v}^k / \sqrt{c2}^k + eps) + wd p)``.

The weight decay ``wd p`` is decoupled, as in AdamW (the official CIFAR main
divides its ``--weight-decay`` by the learning rate before passing it, to
keep the product fixed; :func:`adahessian` takes the optimizer's own
``weight_decay``); ``optax.add_decayed_weights`` reproduces it exactly.

Where the Hessian comes from: the extra argument ``obj_fn`` (``params ->
loss`` on the current batch, what ``optax.contrib.sophia``'s estimator takes
too), which ``gradlab.train.make_update`` passes to every optimizer;
``gradlab.curvature.hessian_diagonal`` computes ``mean_i v_i * H v_i`` from it
by forward-over-reverse differentiation. One Hessian-vector product costs
about two gradients. Under ``jit`` with the batch sharded over a mesh the
product is the global batch's (XLA reduces it) and the probe, drawn from the
key in the state, is the same on every device: what the official code's
``single_gpu=False`` path does by all-reducing ``v`` and the estimate.

Deviations from the official code:

* ``num_probes > 1`` averages ``v * Hv`` over that many probes *before* the
  absolute value (a lower-variance estimate of ``|diag H|``); with the
  default 1 it is the official estimate.
* Leaves of rank 3 (a 1-D convolution; the newer ``instruction/adahessian.py``
  averages those over the window too) and rank >= 5 are averaged over their
  window axes; the CIFAR optimizer handles only ranks <= 2 and 4.
  ``spatial_average=False`` averages nothing (e.g. for a rank-3 flax
  ``DenseGeneral`` kernel, which is not a convolution).
* The official code has no Hessian refresh interval (every step computes a
  product), and neither has this.

Non-finite gradients, or a non-finite Hessian estimate: the step is skipped
(zero update, the state and its key unchanged, so weight decay does not move
the parameters either); see :mod:`gradlab.transforms.nonfinite`.

References:
  Yao, Gholami, Shen, Mustafa, Keutzer, Mahoney. ADAHESSIAN: An Adaptive
  Second Order Optimizer for Machine Learning. AAAI 2021.
  https://arxiv.org/abs/2006.00719
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from gradlab import _checks, curvature
from gradlab.transforms import nonfinite


class ScaleByAdaHessianState(NamedTuple):
  count: jax.Array  # steps taken (int32)
  mu: optax.Updates  # EMA of the gradient
  nu: optax.Updates  # EMA of the squared (spatially averaged) |Hessian diagonal|
  key: jax.Array  # the probes' key, split once a step


def _check(b1, b2, eps, hessian_power, num_probes, key):
  _checks.unit_interval("b1", b1)
  _checks.unit_interval("b2", b2)
  _checks.positive("eps", eps)
  _checks.unit_interval("hessian_power", hessian_power, closed=True)
  _checks.integer("num_probes", num_probes, minimum=1)
  _checks.is_key("key", key)


def _spatial_average(d: jax.Array) -> jax.Array:
  """The mean over a flax kernel's window axes (all but the last two), broadcast back."""
  if d.ndim < 3:
    return d
  axes = tuple(range(d.ndim - 2))
  return jnp.broadcast_to(jnp.mean(d, axis=axes, keepdims=True), d.shape)


def _hessian_estimate(
  params: Any,
  key: jax.Array,
  obj_fn: Callable[[Any], jax.Array] | None,
  num_probes: int,
  spatial_average: bool,
) -> Any:
  """``D``: ``|mean_i v_i * H v_i|``, spatially averaged, for the probes of ``key``."""
  if params is None:
    raise ValueError("params: adahessian's update needs the parameters (the Hessian's point)")
  if obj_fn is None:
    raise ValueError(
      "obj_fn: adahessian's update needs obj_fn(params) -> loss on the current batch "
      "(gradlab.train.make_update passes it)"
    )
  estimate = curvature.hessian_diagonal(
    lambda p, _: obj_fn(p), params, None, key, num_probes=num_probes
  ).estimate
  d = jax.tree.map(jnp.abs, estimate)
  if spatial_average:
    d = jax.tree.map(_spatial_average, d)
  return jax.tree.map(lambda x, p: x.astype(p.dtype), d, params)


def _adahessian_direction(b1, b2, eps, hessian_power, key):
  """``(init_fn, update_fn)``: the update takes the estimate as the keyword ``prepared``."""

  def init_fn(params):
    return ScaleByAdaHessianState(
      jnp.zeros([], jnp.int32),
      optax.tree.zeros_like(params),
      optax.tree.zeros_like(params),
      key,
    )

  def update_fn(updates, state, params=None, *, prepared, **extra):
    del params, extra
    c = optax.safe_increment(state.count)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(prepared, state.nu, b2, 2)

    def one(m, v):
      t = c.astype(m.dtype)
      c1, c2 = 1.0 - b1**t, 1.0 - b2**t
      denom = jnp.sqrt(v) ** hessian_power / jnp.sqrt(c2) ** hessian_power + eps
      return (m / c1 / denom).astype(m.dtype)

    new_key, _ = jax.random.split(state.key)
    return jax.tree.map(one, mu, nu), ScaleByAdaHessianState(c, mu, nu, new_key)

  return init_fn, update_fn


def _prepare(num_probes, spatial_average, pick_state):
  def prepare(updates, state, params=None, *, obj_fn=None, **extra):
    del updates, extra
    _, probe_key = jax.random.split(pick_state(state).key)
    return _hessian_estimate(params, probe_key, obj_fn, num_probes, spatial_average)

  return prepare


def scale_by_adahessian(
  b1: ArrayLike = 0.9,
  b2: ArrayLike = 0.999,
  eps: ArrayLike = 1e-4,
  hessian_power: ArrayLike = 1.0,
  *,
  key: jax.Array,
  num_probes: int = 1,
  spatial_average: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """AdaHessian's direction ``m_hat / (v_hat^{k/2} + eps)`` (no learning rate, no decay).

  Args:
    b1: decay of the gradient's moving average, in [0, 1).
    b2: decay of the squared Hessian diagonal's moving average, in [0, 1).
    eps: added to the denominator, > 0 (the official default 1e-4).
    hessian_power: ``k`` in [0, 1]: 1 is AdaHessian, 0 momentum SGD.
    key: typed key (``jax.random.key``) of the Rademacher probes; the state
      carries it, split once a step.
    num_probes: Hessian-vector products a step (static; 1 in the paper).
    spatial_average: average the estimate over convolution windows (leaves
      of rank >= 3, flax layout ``[*window, in, out]``).

  Returns:
    A ``GradientTransformationExtraArgs`` whose ``update`` needs ``params``
    and the extra argument ``obj_fn(params) -> loss`` on the current batch.
  """
  _check(b1, b2, eps, hessian_power, num_probes, key)
  init_fn, update_fn = _adahessian_direction(b1, b2, eps, hessian_power, key)
  prepare = _prepare(num_probes, spatial_average, lambda s: s)
  return optax.GradientTransformationExtraArgs(
    init_fn, nonfinite.skip_nonfinite(update_fn, prepare)
  )


def adahessian(
  learning_rate: optax.ScalarOrSchedule,
  b1: ArrayLike = 0.9,
  b2: ArrayLike = 0.999,
  eps: ArrayLike = 1e-4,
  weight_decay: ArrayLike = 0.0,
  hessian_power: ArrayLike = 1.0,
  *,
  key: jax.Array,
  num_probes: int = 1,
  spatial_average: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """AdaHessian as an optimizer: :func:`scale_by_adahessian` + decoupled weight decay + lr.

  The official defaults are ``lr=0.15, eps=1e-4`` (CIFAR ResNets). The
  non-finite policy guards the whole chain once (weight decay included). Under
  ``optax.inject_hyperparams`` list ``num_probes`` in ``static_args``.
  Requires the extra argument ``obj_fn`` (see :func:`scale_by_adahessian`).
  """
  _check(b1, b2, eps, hessian_power, num_probes, key)
  init_fn, update_fn = _adahessian_direction(b1, b2, eps, hessian_power, key)
  tx = optax.chain(
    optax.GradientTransformationExtraArgs(init_fn, update_fn),
    optax.add_decayed_weights(weight_decay),
    optax.scale_by_learning_rate(learning_rate),
  )
  prepare = _prepare(num_probes, spatial_average, lambda s: s[0])
  return optax.GradientTransformationExtraArgs(
    tx.init, nonfinite.skip_nonfinite(tx.update, prepare)
  )
