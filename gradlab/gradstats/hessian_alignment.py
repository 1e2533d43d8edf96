"""Hessian alignment penalties for domain generalization: HGP and Hutchinson.

Reference: Hemati, Zhang, Estiri, Chen, "Understanding Hessian Alignment for
Domain Generalization" (ICCV 2023). Official code read line by line:
``huawei-noah/Federated-Learning``, ``HessianAlignment/domainbed/algorithms.py``
(classes ``HGP`` and ``Hutchinson``) and ``HessianAlignment/domainbed/
hparams_registry.py``; ``HessianAlignment/cmnist/cmnist_Hutchinson.py`` for the
ColoredMNIST variant.

With ``L_e`` the mean loss of domain ``e`` (``loss_fn(params, batch_e)``), ``g_e``
its gradient, ``H_e`` its Hessian, and the bars the means over the ``E``
domains (``g_bar`` is the gradient and ``H_bar`` the Hessian of the mean loss
``mean_e L_e``), the two penalties are::

  HGP:         (1/E) sum_e  alpha |H_e g_e - sg(H_bar g_bar)|^2 + beta |g_e - sg(g_bar)|^2
  Hutchinson:  (1/E) sum_e  alpha |D_e - sg(D_bar)|^2           + beta |g_e - sg(g_bar)|^2

where ``D_e`` is Hutchinson's estimate ``mean_k z_k * (H_e z_k)`` of ``diag H_e``
and ``sg`` is a stop-gradient (the official code ``.detach()``-es both means).
Note that HGP's reference is ``H_bar g_bar``, the product of the *means*, not
the mean of the products ``H_e g_e`` (as in the official code). The penalty is
added to the mean loss: ``loss = mean_e L_e + penalty``.

Which parameters: the official code takes gradients and Hessians with respect
to the classifier head only (``self.classifier.parameters()``) while the
penalty's gradient trains the whole network (the head's gradient depends on
the features). Here the penalty is over whatever ``params`` ``loss_fn`` is given:
to match the official code, close over the feature extractor's parameters::

  def penalty(params, domain_batches, key):
    def head_loss(head, batch):
      feats = body.apply(params["body"], batch["x"])   # traced: gradients flow
      return cross_entropy(feats @ head["w"] + head["b"], batch["y"])
    return hgp_penalty(head_loss, params["head"], domain_batches)

and differentiate ``penalty`` with respect to all of ``params``.

Domain batches: a Python ``list`` of per-domain batches (the same pytree
structure and trailing shapes; the batch sizes may differ), or any other pytree
whose leaves are stacked along a leading domain axis (then the domains are
``vmap``-ped). At least two domains.

Deviations from the official code (every one documented here):

* ``H_e g_e`` is one Hessian-vector product (``gradlab.curvature.hvp``); the
  official code forms it as ``|g_e| * grad |g_e|`` with ``1e-16`` added to the
  gradient (and to ``|g_bar|``) to keep the norm differentiable at zero. The
  two agree exactly up to that ``1e-16``.
* Hutchinson: every domain uses the *same* probes (from one ``key``) and
  ``D_bar`` is the mean of the ``D_e``, which by linearity is the estimate of
  ``diag H_bar`` from those probes; the official code draws fresh probes for
  every domain and for the mean (``calc_hessian_diag``, ``repeat=300``). Common
  probes make the differences ``D_e - D_bar = mean_k z_k * ((H_e - H_bar) z_k)``
  an unbiased estimate of ``diag(H_e - H_bar)`` whose noise comes only from
  where the domains' Hessians differ: the penalty is exactly 0 for identical
  domains and exact (any number of probes) when the ``H_e - H_bar`` are
  diagonal. Its bias, for Rademacher probes, is
  ``alpha / (E m) sum_e (|A_e|_F^2 - |diag A_e|^2)`` with ``A_e = H_e - H_bar``
  and ``m = num_probes`` (the square of a noisy mean); the official estimator has
  that bias too, with the mean's own noise added. Because the deviations sum
  to zero over the domains, the stop-gradient on ``D_bar`` and on ``g_bar``
  changes no gradient here; only HGP's ``H_bar g_bar`` reference (not the mean
  of the ``H_e g_e``) makes ``stop_gradient_mean`` matter.
* The ColoredMNIST scripts (``cmnist_*.py``) sum over the two domains without
  the stop-gradients and weights, multiply by an annealed ``penalty_weight``
  and divide the whole loss by it; the DomainBed form is the one built here.
* The official defaults (``hparams_registry.py``): HGP ``alpha = 1e-4``,
  ``beta = 5e-3``; Hutchinson ``alpha = 1e-3``, ``beta = 5e-3``, 300 probes. The
  random search draws Hutchinson's from ``10^U(1, 4)`` and ``10^U(2, 6)``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.curvature import Sampler, hessian_diagonal, hvp, sampler_signs
from gradlab.curvature.products import check_scalar_loss

LossFn = Callable[[Any, Any], jax.Array]


def _domains(domain_batches: Any) -> tuple[int, Callable[[Callable[[Any], Any]], Any], Any]:
  """``(E, over, first)``: the number of domains, ``over(fn)`` stacking ``fn(batch_e)``
  over the domains, and one domain's batch (for the loss check)."""
  if isinstance(domain_batches, list):
    n = len(domain_batches)
    if n < 2:
      raise ValueError(f"domain_batches: expected at least 2 domains, got {n}")
    ref = jax.tree.structure(domain_batches[0])
    ref_leaves = jax.tree.leaves(domain_batches[0])
    for e, batch in enumerate(domain_batches[1:], start=1):
      structure = jax.tree.structure(batch)
      if structure != ref:
        raise ValueError(
          f"domain_batches: domain {e}'s batch has structure {structure}, expected domain 0's {ref}"
        )
      for a, b in zip(ref_leaves, jax.tree.leaves(batch)):
        if jnp.shape(a)[1:] != jnp.shape(b)[1:] or jnp.result_type(a) != jnp.result_type(b):
          raise ValueError(
            f"domain_batches: domain {e}'s batch has a leaf {jnp.result_type(b)}"
            f"{list(jnp.shape(b))} where domain 0's has {jnp.result_type(a)}"
            f"{list(jnp.shape(a))} (only the leading batch size may differ)"
          )

    def over(fn):
      return jax.tree.map(lambda *xs: jnp.stack(xs), *[fn(b) for b in domain_batches])

    return n, over, domain_batches[0]
  leaves = jax.tree.leaves(domain_batches)
  if not leaves or any(jnp.ndim(x) == 0 for x in leaves):
    raise ValueError(
      "domain_batches: expected a list of per-domain batches or a pytree stacked on a leading "
      "domain axis, got a pytree with " + ("no leaves" if not leaves else "a scalar leaf")
    )
  sizes = sorted({jnp.shape(x)[0] for x in leaves})
  if len(sizes) > 1:
    raise ValueError(
      f"domain_batches: expected every leaf stacked on one leading domain axis, got leading "
      f"sizes {sizes} (pass a list for domains of different batch sizes)"
    )
  if sizes[0] < 2:
    raise ValueError(f"domain_batches: expected at least 2 domains, got {sizes[0]}")
  return (
    sizes[0],
    lambda fn: jax.vmap(fn)(domain_batches),
    jax.tree.map(lambda x: x[0], domain_batches),
  )


def _check_weights(alpha: Any, beta: Any) -> None:
  _checks.positive("alpha", alpha, allow_zero=True)
  _checks.positive("beta", beta, allow_zero=True)


def _mean_sq_distance(stacked: Any, reference: Any) -> jax.Array:
  """``(1/E) sum_e |stacked[e] - reference|^2`` over every leaf."""
  sq = jax.tree.map(
    lambda s, r: jnp.sum(jnp.reshape(jnp.square(s - r[None]), (s.shape[0], -1)), axis=1),
    stacked,
    reference,
  )
  return jnp.mean(sum(jax.tree.leaves(sq)))


def _mean(stacked: Any) -> Any:
  return jax.tree.map(lambda x: jnp.mean(x, axis=0), stacked)


def hgp_penalty(
  loss_fn: LossFn,
  params: Any,
  domain_batches: Any,
  *,
  alpha: jax.typing.ArrayLike = 1e-4,
  beta: jax.typing.ArrayLike = 5e-3,
  stop_gradient_mean: bool = True,
) -> jax.Array:
  """The Hessian-gradient-product (HGP) alignment penalty of Hemati et al. (2023).

  ``(1/E) sum_e alpha |H_e g_e - sg(H_bar g_bar)|^2 + beta |g_e - sg(g_bar)|^2``
  (see the module docstring): ``E`` gradients and ``2E`` Hessian-vector products.

  Args:
    loss_fn: pure ``(params, batch) -> scalar`` mean loss of one domain's batch.
    params: the pytree the gradients and Hessians are taken over (the
      classifier head in the official code; close over the rest).
    domain_batches: a list of per-domain batches, or a pytree stacked on a
      leading domain axis; at least 2 domains.
    alpha: weight >= 0 of the Hessian-gradient term (official default 1e-4).
    beta: weight >= 0 of the gradient term (official default 5e-3).
    stop_gradient_mean: treat ``H_bar g_bar`` and ``g_bar`` as constants in the
      penalty's gradient, as the official code does. (For the gradient term it
      makes no difference: the deviations sum to zero.)

  Returns:
    The penalty, a scalar, differentiable with respect to ``params`` and
    anything ``loss_fn`` closes over.
  """
  _, over, first = _domains(domain_batches)
  _check_weights(alpha, beta)
  check_scalar_loss(loss_fn, params, first)
  grad_fn = jax.grad(loss_fn)

  def grad_and_hg(batch):
    g = grad_fn(params, batch)
    return g, hvp(loss_fn, params, batch, g)

  grads, hgs = over(grad_and_hg)
  g_bar = _mean(grads)
  hg_bar = _mean(over(lambda b: hvp(loss_fn, params, b, g_bar)))  # H_bar g_bar
  if stop_gradient_mean:
    g_bar, hg_bar = jax.lax.stop_gradient((g_bar, hg_bar))
  return alpha * _mean_sq_distance(hgs, hg_bar) + beta * _mean_sq_distance(grads, g_bar)


def hutchinson_penalty(
  loss_fn: LossFn,
  params: Any,
  domain_batches: Any,
  key: jax.Array,
  *,
  num_probes: int,
  alpha: jax.typing.ArrayLike = 1e-3,
  beta: jax.typing.ArrayLike = 5e-3,
  probe_batch: int = 1,
  sampler: Sampler = sampler_signs,
) -> jax.Array:
  """The Hutchinson Hessian-diagonal alignment penalty of Hemati et al. (2023).

  ``(1/E) sum_e alpha |D_e - D_bar|^2 + beta |g_e - g_bar|^2`` with ``D_e`` the
  Hutchinson estimate of ``diag H_e`` from ``num_probes`` probes shared by every
  domain (``gradlab.curvature.hessian_diagonal``), ``D_bar`` their mean; see
  the module docstring for its bias and the deviations from the official code.

  Args:
    loss_fn, params, domain_batches: as :func:`hgp_penalty`.
    key: PRNG key of the probes (the same probes for every domain).
    num_probes: Hessian-vector products per domain (official: 300).
    alpha: weight >= 0 of the Hessian-diagonal term (official default 1e-3).
    beta: weight >= 0 of the gradient term (official default 5e-3).
    probe_batch: probes evaluated at once with ``vmap`` (memory grows with it).
    sampler: ``(key, like) -> probe``; Rademacher signs (default, the
      official choice) are exact on diagonal Hessians.

  Returns:
    The penalty estimate, a scalar, differentiable with respect to ``params``
    and anything ``loss_fn`` closes over.
  """
  _checks.is_key("key", key)
  num_probes = _checks.integer("num_probes", num_probes, minimum=1)
  probe_batch = _checks.integer("probe_batch", probe_batch, minimum=1)
  _, over, first = _domains(domain_batches)
  _check_weights(alpha, beta)
  check_scalar_loss(loss_fn, params, first)
  grad_fn = jax.grad(loss_fn)
  grads = over(lambda b: grad_fn(params, b))
  diags = over(
    lambda b: (
      hessian_diagonal(
        loss_fn, params, b, key, num_probes=num_probes, probe_batch=probe_batch, sampler=sampler
      ).estimate
    )
  )
  # D_bar and g_bar are the means of what they are compared with, so their
  # stop-gradient (the official code's .detach()) changes no gradient.
  g_bar, d_bar = jax.lax.stop_gradient((_mean(grads), _mean(diags)))
  return alpha * _mean_sq_distance(diags, d_bar) + beta * _mean_sq_distance(grads, g_bar)
