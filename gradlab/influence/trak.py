"""TRAK (Park et al. 2023): projected output gradients, a kernel inverse, the Q re-weighting.

For each model m of an ensemble (independently trained models, or
checkpoints of one run) with parameters ``theta_m``:

* features ``phi(z) = P^T grad_theta f(z; theta_m)``, with f the model output
  (for classification, TRAK's margin ``logit_y - logsumexp_{c != y} logit_c``)
  and P a ``d x k`` random projection (:func:`features.project`, one key per
  model as TRAK's ``model_id`` seeds);
* ``tau_m = phi(test) (Phi^T Phi + damping I)^-1 Phi^T``, ``Phi`` the ``[n, k]``
  train features;
* ``Q_m = 1 - p(z_j)``, the derivative of the loss with respect to the
  output, for the margin ``1 - sigmoid(f)``.

The score is ``mean_m(tau_m) * mean_m(Q_m)`` (the official
``TRAKer.finalize_scores``: features summed over models, multiplied by the
averaged out-to-loss gradient, then divided by the number of models).
Positive = the train example supports the test example's output.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.influence.features import gradient_features, map_examples
from gradlab.influence.functions import check_sets

OutputFn = Callable[[Any, Any], jax.Array]


def margin(logits: jax.Array, label: jax.Array) -> jax.Array:
  """TRAK's classification output: ``logit_y - logsumexp_{c != y} logit_c`` for one example."""
  others = jnp.where(jax.nn.one_hot(label, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return logits[label] - jax.nn.logsumexp(others)


def trak(
  output_fn: OutputFn,
  models: Sequence[Any],
  train: Any,
  test: Any,
  key: jax.Array,
  *,
  dim: int = 512,
  damping: Any = 0.0,
  kind: str = "rademacher",
  chunk_size: int | None = None,
  weight_fn: Callable[[Any, Any], jax.Array] | None = None,
) -> jax.Array:
  """``[t, n]`` TRAK scores over an ensemble.

  Args:
    output_fn: ``output_fn(params, example) -> scalar`` (e.g. the margin).
    models: parameter pytrees of the ensemble (at least one).
    key: projection key; model m uses ``fold_in(key, m)``.
    dim: projection dimension k (TRAK uses 512-20480).
    damping: added to ``Phi^T Phi`` (0 when it is invertible, n >= k).
    weight_fn: ``(params, example) -> Q``; default ``1 - sigmoid(output)``.
  """
  models = list(models)
  if not models:
    raise ValueError("models: expected at least one parameter pytree, got none")
  _checks.is_key("key", key)
  _checks.positive("damping", damping, allow_zero=True)
  n, _ = check_sets(train, test)  # one structure: train and test rows share one program
  both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), train, test)
  q_fn = weight_fn or (lambda p, e: 1.0 - jax.nn.sigmoid(output_fn(p, e)))
  taus, qs = [], []
  for m, params in enumerate(models):
    k = jax.random.fold_in(key, m)
    kw = dict(key=k, dim=dim, kind=kind, chunk_size=chunk_size)
    feats = gradient_features(output_fn, params, both, **kw)  # one program for both sets
    phi, phi_test = feats[:n], feats[n:]
    kernel = phi.T @ phi + damping * jnp.eye(dim, dtype=phi.dtype)
    taus.append(phi_test @ jnp.linalg.solve(kernel, phi.T))
    qs.append(map_examples(lambda e, p=params: q_fn(p, e), train, chunk_size))
  return jnp.mean(jnp.stack(taus), 0) * jnp.mean(jnp.stack(qs), 0)[None, :]
