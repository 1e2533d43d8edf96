r"""SPSA-GC: Spall's SPSA with decaying gains and a Nesterov-style gradient correction.

Oh et al., "BlackVIP: Black-Box Visual Prompting for Robust Transfer Learning"
(CVPR 2023, https://arxiv.org/abs/2303.14773); official code
``changdaeoh/BlackVIP: trainers/blackvip.py`` (``forward_backward`` and
``spsa_grad_estimate_bi``), defaults from ``configs/trainers/BLACKVIP/*.yaml``.

At step ``k = 1, 2, ...`` with gains ``a_k = a/(k + o)^\alpha`` and
``c_k = c/k^\gamma`` (Spall 1998), a perturbation ``\Delta`` with independent
symmetric entries bounded away from 0 gives Spall's estimate

.. math::  \hat g_i = \frac{L(w + c_k\Delta) - L(w - c_k\Delta)}{2 c_k \Delta_i},

averaged over ``num_probes`` perturbations. The official ``\Delta`` is
"segmented uniform": ``|\Delta_i| \sim U[1/2, 1]`` with a random sign
(``distribution="segmented"``); ``"rademacher"`` is ``\pm 1``. The gradient
correction keeps ``m_k = \beta m_{k-1} + \hat g_k`` (``m_1 = \hat g_1``) and steps

.. math::  w_{k+1} = w_k - a_k(\hat g_k + \beta m_k),

which is ``optax.trace(decay=beta, nesterov=True)`` followed by the gain
schedule (:func:`spsa_gc_optimizer`), and, for a constant gain, Nesterov's
accelerated gradient written in its look-ahead variable (Sutskever et al.
2013: ``v_{k+1} = \beta v_k - a\nabla L(\theta_k + \beta v_k)``, ``w = \theta + \beta v``).

For a quadratic ``L`` the central difference is exact, ``\hat g_i = g_i +
\sum_{j \ne i} g_j\Delta_j/\Delta_i``, so ``E\hat g = g`` and
``E|\hat g - g|^2 = E[\Delta^2]E[\Delta^{-2}](d-1)|g|^2`` per probe: ``(7/6)(d-1)|g|^2``
for the segmented uniform, ``(d-1)|g|^2`` for Rademacher.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab import _checks
from gradlab.zeroth_order.spsa import ZOEstimate

DISTRIBUTIONS = ("segmented", "rademacher")


class SPSAGCState(NamedTuple):
  count: jax.Array  # steps taken (k - 1 before step k)
  opt_state: Any  # the optax state of spsa_gc_optimizer


def spall_perturbation(key: jax.Array, like: Any, *, distribution: str = "segmented") -> Any:
  """``Delta`` shaped like ``like``: signs times ``U[1/2, 1]`` (``"segmented"``) or ``+-1``."""
  _checks.one_of("distribution", distribution, DISTRIBUTIONS)
  leaves, treedef = jax.tree.flatten(like)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, x in zip(keys, leaves):
    k_sign, k_mag = jax.random.split(k)
    sign = jax.random.rademacher(k_sign, jnp.shape(x), jnp.result_type(x))
    if distribution == "segmented":
      mag = jax.random.uniform(k_mag, jnp.shape(x), jnp.result_type(x), 0.5, 1.0)
      out.append(sign * mag)
    else:
      out.append(sign)
  return jax.tree.unflatten(treedef, out)


def spall_gradient(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batch: Any,
  key: jax.Array,
  *,
  epsilon: float,
  num_probes: int = 1,
  distribution: str = "segmented",
) -> ZOEstimate:
  """Spall's two-point estimate ``(L(w + eps D) - L(w - eps D)) / (2 eps D)``, averaged over probes.

  ``epsilon``: the perturbation size ``c_k``; ``loss_fn(params, batch)`` is
  only evaluated. Returns ``ZOEstimate(grad, mean loss, [num_probes] differences)``.
  """
  _checks.positive("epsilon", epsilon)
  num_probes = _checks.integer("num_probes", num_probes, minimum=1)
  _checks.one_of("distribution", distribution, DISTRIBUTIONS)

  def probe(k):
    d = spall_perturbation(k, params, distribution=distribution)
    plus = loss_fn(jax.tree.map(lambda p, u: p + epsilon * u, params, d), batch)
    minus = loss_fn(jax.tree.map(lambda p, u: p - epsilon * u, params, d), batch)
    diff = (plus - minus) / (2 * epsilon)
    return jax.tree.map(lambda u: diff / u, d), diff, (plus + minus) / 2

  grads, diffs, losses = jax.lax.map(probe, jax.random.split(key, num_probes))
  grad = jax.tree.map(lambda g: jnp.mean(g, 0), grads)
  return ZOEstimate(grad, jnp.mean(losses), diffs)


def spsa_gc_optimizer(
  *, a: float = 0.01, o: float = 1.0, alpha: float = 0.4, momentum: float = 0.9
) -> optax.GradientTransformation:
  r"""The update rule: ``optax.trace(momentum, nesterov=True)``, then ``-a_k`` with ``a_k = a/(k + o)^\alpha``."""
  _checks.positive("a", a)
  _checks.positive("o", o, allow_zero=True)
  _checks.positive("alpha", alpha, allow_zero=True)
  _checks.unit_interval("momentum", momentum)
  return optax.chain(
    optax.trace(decay=momentum, nesterov=True),
    optax.scale_by_schedule(lambda count: -a / (count + 1.0 + o) ** alpha),
  )


def spsa_gc_init(params: Any, **optimizer_kwargs) -> SPSAGCState:
  """The state before step 1 (``optimizer_kwargs`` as :func:`spsa_gc_optimizer`)."""
  return SPSAGCState(jnp.zeros([], jnp.int32), spsa_gc_optimizer(**optimizer_kwargs).init(params))


def spsa_gc_update(
  params: Any,
  state: SPSAGCState,
  grad: Any,
  *,
  a: float = 0.01,
  o: float = 1.0,
  alpha: float = 0.4,
  momentum: float = 0.9,
) -> tuple[Any, SPSAGCState]:
  """One SPSA-GC parameter update from a gradient estimate ``grad`` (any estimate: the update
  rule alone, e.g. fed the true gradient)."""
  opt = spsa_gc_optimizer(a=a, o=o, alpha=alpha, momentum=momentum)
  updates, opt_state = opt.update(grad, state.opt_state, params)
  return optax.apply_updates(params, updates), SPSAGCState(state.count + 1, opt_state)


def spsa_gc_step(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  state: SPSAGCState,
  batch: Any,
  key: jax.Array,
  *,
  a: float = 0.01,
  c: float = 0.01,
  o: float = 1.0,
  alpha: float = 0.4,
  gamma: float = 0.1,
  momentum: float = 0.9,
  num_probes: int = 5,
  distribution: str = "segmented",
) -> tuple[Any, SPSAGCState, ZOEstimate]:
  r"""One BlackVIP step: Spall's estimate at ``c_k = c/k^\gamma``, then :func:`spsa_gc_update`.

  Defaults are BlackVIP's ViT configs (``SPSA_PARAMS: [o, c, a, alpha, gamma] =
  [1.0, 0.01, 0.01, 0.4, 0.1]``, ``MOMS: 0.9``, ``SP_AVG: 5``). Returns
  ``(params, state, estimate)``.
  """
  _checks.positive("c", c)
  _checks.positive("gamma", gamma, allow_zero=True)
  k = (state.count + 1).astype(jnp.float32)
  est = spall_gradient(
    loss_fn,
    params,
    batch,
    key,
    epsilon=c / k**gamma,
    num_probes=num_probes,
    distribution=distribution,
  )
  params, state = spsa_gc_update(params, state, est.grad, a=a, o=o, alpha=alpha, momentum=momentum)
  return params, state, est
