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
from gradlab.curvature.dataset import accumulate
from gradlab.influence.features import check_projection, gradient_features, map_examples
from gradlab.influence.functions import check_sets
from gradlab.influence.projectors import logra_features
from gradlab.influence.stream import check_chunk, run

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
  rank: Any = 16,
  uncovered: str = "error",
  path: Any = None,
  callback: Callable[[int, int], None] | None = None,
) -> Any:
  """``[t, n]`` TRAK scores over an ensemble.

  Memory: in memory (``path=None``) the projected train features ``[n, dim]`` of
  one model at a time are held (``dim`` numbers per example, as TRAK stores them;
  never the ``[n, d]`` gradients: they are projected chunk by chunk). With
  ``path`` the train set is read twice instead (one pass for each model's
  kernel ``Phi^T Phi``, one for the scores, written block by block, resumably),
  so nothing of size n is held but the file.

  Args:
    output_fn: ``output_fn(params, example) -> scalar`` (e.g. the margin).
    models: parameter pytrees of the ensemble (at least one).
    key: projection key; model m uses ``fold_in(key, m)``.
    dim: projection dimension k (TRAK uses 512-20480).
    damping: added to ``Phi^T Phi`` (0 when it is invertible, n >= k).
    kind: the projection: ``"rademacher"`` or ``"normal"`` (a dense ``d x dim``
      JL matrix, TRAK's), or ``"logra"``: per flax layer, LoGra's Kronecker
      projection ``P_in^T G P_out`` of the layer's gradient (``projectors.logra_features``,
      ``rank`` per side; ``dim`` is then the layers' ``sum r_in r_out``), which never
      forms the per-example gradient: ``r (d_in + d_out)`` work per token instead
      of ``d_in d_out dim``.
    rank, uncovered: LoGra's rank and its treatment of parameters outside the
      layers (``"error"`` or ``"ignore"``), for ``kind="logra"``.
    chunk_size: examples per chunk (at most the train set's size).
    weight_fn: ``(params, example) -> Q``; default ``1 - sigmoid(output)``.
    path, callback: write the scores to this ``.npy`` file block by block,
      resumably (see :func:`gradlab.influence.influence`).
  """
  models = list(models)
  if not models:
    raise ValueError("models: expected at least one parameter pytree, got none")
  _checks.is_key("key", key)
  _checks.positive("damping", damping, allow_zero=True)
  if kind != "logra":
    check_projection(dim, kind, None)
  n, t = check_sets(train, test)
  c = check_chunk(chunk_size, n)
  ct = None if chunk_size is None else min(c, t)
  q_fn = weight_fn or (lambda p, e: 1.0 - jax.nn.sigmoid(output_fn(p, e)))
  keys = [jax.random.fold_in(key, m) for m in range(len(models))]
  if kind == "logra":
    feats = lambda p, k, ex, cs: logra_features(
      output_fn, p, ex, k, rank=rank, chunk_size=cs, uncovered=uncovered
    )
  else:
    feats = lambda p, k, ex, cs: gradient_features(
      output_fn, p, ex, key=k, dim=dim, kind=kind, chunk_size=cs
    )

  def solve(kernel, phi_test):
    eye = jnp.eye(kernel.shape[0], dtype=kernel.dtype)
    return jnp.linalg.solve(kernel + damping * eye, phi_test.T).T  # [t, k]

  if path is None:
    taus, qs = [], []
    for params, k in zip(models, keys):
      phi = feats(params, k, train, c)
      taus.append(solve(phi.T @ phi, feats(params, k, test, ct)) @ phi.T)
      qs.append(map_examples(lambda e, p=params: q_fn(p, e), train, c))
    return jnp.mean(jnp.stack(taus), 0) * jnp.mean(jnp.stack(qs), 0)[None, :]

  def queries():
    out = []
    for params, k in zip(models, keys):
      gram = lambda b, _, p=params, k=k: (lambda f: f.T @ f)(feats(p, k, b, None))
      kernel, _ = accumulate(gram, train, micro_batch=c, name="train")
      out.append(solve(kernel, feats(params, k, test, ct)))
    return jnp.stack(out)  # [M, t, k]

  def block(args, chunk):
    ps, q = args
    tau = sum(feats(p, k, chunk, None) @ q[i].T for i, (p, k) in enumerate(zip(ps, keys)))
    w = sum(jax.vmap(lambda e, p=p: q_fn(p, e))(chunk) for p in ps)
    return (tau / len(ps)) * (w / len(ps))[:, None]

  seeds = [jax.random.key_data(k) for k in keys]
  tag = f"trak|{dim}|{kind}|{rank}|{uncovered}|{weight_fn is not None}|{float(damping)}"
  return run(block, models, queries, train, c, path, tag, identity=(test, seeds), callback=callback)
