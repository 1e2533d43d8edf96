r"""Per-token estimators of the KL to a reference policy, and the KL-penalty loss term.

Tokens are sampled from ``\pi``; with ``r = \pi_{ref}/\pi`` and
``u = \log\pi - \log\pi_{ref} = -\log r`` per token (Schulman, "Approximating
KL divergence", 2020, http://joschu.net/blog/kl-approx.html):

==============  =========================  ===========================================
estimator       value                      ``E_\pi[value]`` (one token)
==============  =========================  ===========================================
``"k1"``        ``u``                      ``KL(\pi\|\pi_{ref})``, unbiased
``"k2"``        ``u^2/2``                  ``(Var_\pi(u) + KL^2)/2``, biased
``"k3"``        ``(r - 1) - \log r``       ``KL(\pi\|\pi_{ref})``, unbiased, ``\ge 0``
``"abs"``       ``|u|``                    (no closed form)
==============  =========================  ===========================================

verl's names are accepted too: ``"kl"`` = k1, ``"mse"`` = k2, ``"low_var_kl"`` =
k3; a trailing ``"+"`` (``"k1+"``, ``"k3+"``, ``"abs+"``) keeps the value and
takes k2's gradient (straight-through), as verl's ``kl_penalty``. Over a
response the per-token sum of k1 or k3 is unbiased for the sequence
``KL(\pi\|\pi_{ref})`` (each token's ``E[r - 1] = 0``).

**What each one does as a loss.** The loss ``\sum_t k(y_t)`` is differentiated
through ``\log\pi(y_t)`` only, the sample ``y \sim \pi`` held fixed (no score
term). Its expected gradient, derived by hand (``\nabla k = k'(u)\nabla\log\pi``
and ``E_\pi[f\,\nabla\log\pi] = \sum_y f\,\nabla\pi``):

* k1: ``E[\nabla\log\pi] = 0``: no gradient at all in expectation. k1 gives
  ``\nabla KL`` only as a detached *reward*, through the score function:
  ``E[sg(\sum_t u_t)\nabla\log\pi(y)] = \nabla KL(\pi\|\pi_{ref})`` of the sequence.
* k2: ``E[u\nabla\log\pi] = \sum_y \nabla\pi\,u = \nabla KL(\pi\|\pi_{ref})`` for one
  token (``\sum\nabla\pi = 0``).
* k3: ``E[(1 - r)\nabla\log\pi] = -\sum_y \pi_{ref}\nabla\log\pi = \nabla KL(\pi_{ref}\|\pi)``:
  the gradient of the *reverse* KL, for one token.
* over ``T > 1`` tokens each token's term is the one-token gradient at its
  prefix, with the prefix distribution held fixed:
  ``\sum_t E_{y_{<t}\sim\pi}[\nabla KL_t(y_{<t})]`` (forward KL for k2, reverse
  for k3). This misses the term ``E[KL_t \nabla\log\pi(y_{<t})]`` and is *not*
  the gradient of the sequence KL.

k3 has a much lower variance than k1 when ``\pi`` is close to ``\pi_{ref}``
(Schulman's note; checked exactly by enumeration in the tests); far from it its
``r`` term can dominate.

Code: verl ``verl/trainer/ppo/core_algos.py`` (``kl_penalty``,
``kl_penalty_forward``: k3's log-ratio clamped to ``[-20, 20]`` and its value
to ``[-10, 10]``, which biases it low where ``\pi_{ref}/\pi > 13.6`` or
``< 1.7\cdot10^{-5}``; k1, k2 and abs unclamped), added to the actor loss as
``agg_loss(kld, response_mask, loss_agg_mode) * kl_loss_coef`` in
``verl/workers/actor/dp_actor.py``; TRL's ``GRPOTrainer`` uses k3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.policy.objectives import AGGREGATIONS, aggregate

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}


def _parse(estimator: str) -> tuple[str, bool]:
  straight_through = isinstance(estimator, str) and estimator.endswith("+")
  base = estimator[:-1] if straight_through else estimator
  base = _ALIASES.get(base, base)
  if base not in KL_ESTIMATORS or (straight_through and base == "k2"):
    names = KL_ESTIMATORS + tuple(_ALIASES) + ("k1+", "k3+", "abs+", "kl+", "low_var_kl+")
    raise ValueError(f"estimator: expected one of {names}, got {estimator!r}")
  return base, straight_through


def kl_estimate(
  logp,
  ref_logp,
  mask,
  *,
  estimator: str = "k3",
  log_ratio_clamp: float | None = 20.0,
  value_clamp: float | None = 10.0,
) -> jax.Array:
  r"""Per-token KL estimates ``[batch, group, time]``, zero where ``mask`` is 0 (module table).

  ``logp`` is the sampling policy's token log-probability (differentiated),
  ``ref_logp`` the reference's. ``log_ratio_clamp`` and ``value_clamp`` apply
  to k3 only, as verl's ``kl_penalty_forward`` (``None`` turns one off).
  """
  m = _checks.token_mask("mask", mask, ("logp", logp), ("ref_logp", ref_logp))
  base, straight_through = _parse(estimator)
  for name, c in (("log_ratio_clamp", log_ratio_clamp), ("value_clamp", value_clamp)):
    if c is not None:
      _checks.positive(name, c)
  logp, ref_logp = jnp.asarray(logp), jnp.asarray(ref_logp)
  u = logp - ref_logp
  if base == "k1":
    k = u
  elif base == "k2":
    k = 0.5 * jnp.square(u)
  elif base == "abs":
    k = jnp.abs(u)
  else:
    log_r = -u
    if log_ratio_clamp is not None:
      log_r = jnp.clip(log_r, -log_ratio_clamp, log_ratio_clamp)
    k = jnp.exp(log_r) - log_r - 1.0
    if value_clamp is not None:
      k = jnp.clip(k, -value_clamp, value_clamp)
  if straight_through:
    backward = 0.5 * jnp.square(u)
    k = backward - jax.lax.stop_gradient(backward) + jax.lax.stop_gradient(k)
  return k * m


def kl_penalty_loss(
  logp,
  ref_logp,
  mask,
  *,
  estimator: str = "k3",
  aggregation: str = "token_mean",
  constant: float | None = None,
  log_ratio_clamp: float | None = 20.0,
  value_clamp: float | None = 10.0,
) -> jax.Array:
  r"""The KL-to-reference loss term ``aggregate(k(y_t))``, to add times a coefficient ``\beta``.

  verl's ``use_kl_loss`` (default ``kl_loss_type="low_var_kl"``, i.e. k3, with
  the policy loss's aggregation) and TRL's ``beta`` term. What its gradient
  estimates depends on the estimator (module docstring): k3's is the per-token
  reverse KL's, k2's the per-token forward KL's, k1's is zero in expectation.
  """
  _checks.one_of("aggregation", aggregation, AGGREGATIONS)
  k = kl_estimate(
    logp,
    ref_logp,
    mask,
    estimator=estimator,
    log_ratio_clamp=log_ratio_clamp,
    value_clamp=value_clamp,
  )
  return aggregate(k, mask, mode=aggregation, constant=constant)
