"""Influence functions: ``(1/n) g_test^T (H + damping I)^-1 g_train`` by five inverse solves.

Convention (every score in ``gradlab.influence``): entry ``[i, j]`` is the
effect on test example i of *removing* train example j, so a positive score
means j helps i (removing it raises the test loss). For ``params`` that
minimize the mean training loss ``L(p) = (1/n) sum_j loss_fn(p, train_j)``
(any L2 term inside ``loss_fn`` included), a first-order expansion gives

    L(test_i; p without j) - L(test_i; p)  ~=  (1/n) g_test_i^T H^-1 g_train_j

with H the Hessian of L: Koh and Liang's up-weighting influence with the
opposite sign, divided by n. The inverse-Hessian product is applied to the
(few) test gradients and dotted with every train gradient, so the solve count
is ``len(test)``, never ``len(train)``.

Methods:

* ``"explicit"``: the dense Hessian (``d`` Hessian-vector products) and one
  linear solve; exact, for models with up to a few thousand parameters.
* ``"cg"``: conjugate gradient on ``v -> (H + damping I) v`` (linearized once),
  all test gradients at once under ``vmap``. Needs H + damping I positive
  definite; ``max_iterations`` bounds the products.
* ``"lissa"``: Agarwal et al.'s stochastic Neumann series
  ``x <- v + (I - (H_b + damping I) / scale) x``, result ``x / scale``, with
  ``H_b`` the Hessian on a random ``batch_size`` train examples per step (all
  of them by default). ``scale`` must exceed the top eigenvalue of H + damping
  (default: 1.5x the Lanczos estimate of it); the error after J steps falls as
  ``(1 - (lambda_min + damping) / scale)^J``.
* ``"arnoldi"``: Schioppa et al. (2022): H restricted to its top ``rank``
  eigenpairs (Lanczos with full reorthogonalization, ``curvature.lanczos``),
  ``H^-1 v ~= sum_k u_k u_k^T v / (lambda_k + damping)``. With ``rank = d`` it
  is exact; the error falls as ``rank`` grows.
* ``"ekfac"``: ``gradlab.curvature.ekfac``'s EK-FAC of the empirical Fisher (the
  per-example gradient covariance), for models whose parameters all sit in
  flax Dense, DenseGeneral, Embed or Conv layers called inside ``loss_fn``
  (tokens and convolutions included; an L2 term belongs in ``damping``, not
  in ``loss_fn``). Pass ``factors`` (from ``curvature.ekfac``, e.g. restored
  from a checkpoint) to reuse a fit across queries.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gradlab import _checks
from gradlab.curvature.kronecker import KroneckerFactors, ekfac
from gradlab.curvature.lanczos import top_eigenvalues
from gradlab.influence.features import num_examples, per_example_gradients

ExampleLoss = Callable[[Any, Any], jax.Array]
METHODS = ("explicit", "cg", "lissa", "arnoldi", "ekfac")


def check_example_loss(loss_fn: ExampleLoss, params: Any, examples: Any, name: str) -> None:
  """``loss_fn(params, one example)`` must be a real scalar."""
  first = jax.tree.map(lambda x: x[0], examples)
  try:
    out = jax.eval_shape(loss_fn, params, first)
  except Exception as e:  # noqa: BLE001 - report the caller's mistake in one line
    raise ValueError(
      f"loss_fn: calling it on one example of {name} failed: {type(e).__name__}: {e}".split("\n")[0]
    ) from e
  if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(
      f"loss_fn: expected a real scalar per example (loss_fn(params, example)), got "
      f"{getattr(out, 'shape', type(out).__name__)}"
    )


def check_sets(train: Any, test: Any) -> tuple[int, int]:
  """Sizes of two example sets with the same pytree structure and example shapes."""
  n = num_examples("train", train)
  t = num_examples("test", test)
  if jax.tree.structure(train) != jax.tree.structure(test):
    raise ValueError(
      f"test: expected the pytree structure of train {jax.tree.structure(train)}, "
      f"got {jax.tree.structure(test)}"
    )
  for a, b in zip(jax.tree.leaves(train), jax.tree.leaves(test)):
    if jnp.shape(a)[1:] != jnp.shape(b)[1:]:
      raise ValueError(
        f"test: expected examples shaped like train's {jnp.shape(a)[1:]}, got {jnp.shape(b)[1:]}"
      )
  return n, t


def mean_loss(loss_fn: ExampleLoss, examples: Any) -> Callable[[Any], jax.Array]:
  """``p -> (1/n) sum_j loss_fn(p, example_j)``."""
  return lambda p: jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0))(p, examples))


def flat_hvp(loss_fn: ExampleLoss, params: Any, examples: Any) -> Callable[[jax.Array], jax.Array]:
  """``v -> H v`` on flat vectors for the mean loss over ``examples``, linearized once."""
  flat, unravel = ravel_pytree(params)
  loss = mean_loss(loss_fn, examples)
  grad = lambda f: ravel_pytree(jax.grad(loss)(unravel(f)))[0]
  _, matvec = jax.linearize(grad, flat)
  return matvec


def dense_hessian(loss_fn: ExampleLoss, params: Any, examples: Any) -> jax.Array:
  """``[d, d]``: the Hessian of the mean loss, one Hessian-vector product per column."""
  flat, _ = ravel_pytree(params)
  matvec = flat_hvp(loss_fn, params, examples)
  return jax.lax.map(matvec, jnp.eye(flat.shape[0], dtype=flat.dtype))


def _cg(matvec, b: jax.Array, max_iterations: int, tol: float) -> jax.Array:
  x, _ = jax.scipy.sparse.linalg.cg(matvec, b, tol=tol, maxiter=max_iterations)
  return x


def _lissa(
  loss_fn, params, train, v: jax.Array, *, damping, scale, depth, batch_size, key
) -> jax.Array:
  flat, unravel = ravel_pytree(params)
  n = num_examples("train", train)

  def hvp_on(idx, x):
    batch = jax.tree.map(lambda a: a[idx], train)
    loss = mean_loss(loss_fn, batch)
    grad = lambda f: ravel_pytree(jax.grad(loss)(unravel(f)))[0]
    return jax.jvp(grad, (flat,), (x,))[1]

  full_matvec = None if batch_size is not None else flat_hvp(loss_fn, params, train)

  def step(x, k):
    if full_matvec is None:
      idx = jax.random.choice(k, n, (batch_size,), replace=False)
      hx = jax.vmap(lambda xi: hvp_on(idx, xi))(x)
    else:
      hx = jax.vmap(full_matvec)(x)
    return v + x - (hx + damping * x) / scale, None

  keys = jax.random.split(key, depth)
  x, _ = jax.lax.scan(step, v, keys)
  return x / scale


def inverse_hvp(
  loss_fn: ExampleLoss,
  params: Any,
  train: Any,
  vectors: jax.Array,
  *,
  method: str = "cg",
  damping: Any = 0.0,
  max_iterations: int | None = None,
  tol: float = 1e-7,
  rank: int | None = None,
  scale: Any = None,
  batch_size: int | None = None,
  key: jax.Array | None = None,
  factors: KroneckerFactors | None = None,
) -> jax.Array:
  """``[m, d]``: rows ``(H + damping I)^-1 v`` for the rows v of ``vectors`` (flat, like
  ``ravel_pytree(params)``), H the Hessian of the mean loss over ``train``.

  See the module docstring for the methods and their options.
  """
  _checks.one_of("method", method, METHODS)
  _checks.positive("damping", damping, allow_zero=True)
  flat, unravel = ravel_pytree(params)
  d = flat.shape[0]
  vectors = jnp.asarray(vectors, flat.dtype)
  if method == "explicit":
    h = dense_hessian(loss_fn, params, train) + damping * jnp.eye(d, dtype=flat.dtype)
    return jnp.linalg.solve(h, vectors.T).T
  if method == "cg":
    iters = (
      d if max_iterations is None else _checks.integer("max_iterations", max_iterations, minimum=1)
    )
    matvec = flat_hvp(loss_fn, params, train)
    damped = lambda v: matvec(v) + damping * v
    return jax.vmap(lambda b: _cg(damped, b, iters, tol))(vectors)
  if method == "lissa":
    depth = (
      1000
      if max_iterations is None
      else _checks.integer("max_iterations", max_iterations, minimum=1)
    )
    n = num_examples("train", train)
    if batch_size is not None:
      batch_size = _checks.integer("batch_size", batch_size, minimum=1)
      if batch_size > n:
        raise ValueError(f"batch_size: {batch_size} exceeds the {n} train examples")
    k = jax.random.key(0) if key is None else key
    _checks.is_key("key", k)
    if scale is None:
      top = top_eigenvalues(
        lambda v: unravel(flat_hvp(loss_fn, params, train)(ravel_pytree(v)[0])),
        params,
        jax.random.fold_in(k, 1),
        k=1,
        num_iterations=min(d, 30),
      ).eigenvalues[0]
      scale = 1.5 * (top + damping)
    else:
      _checks.positive("scale", scale)
    return _lissa(
      loss_fn,
      params,
      train,
      vectors,
      damping=damping,
      scale=scale,
      depth=depth,
      batch_size=batch_size,
      key=k,
    )
  if method == "arnoldi":
    r = min(d, 50) if rank is None else _checks.integer("rank", rank, minimum=1)
    if r > d:
      raise ValueError(f"rank: {r} exceeds the number of parameters {d}")
    m = (
      r if max_iterations is None else _checks.integer("max_iterations", max_iterations, minimum=1)
    )
    if not r <= m <= d:
      raise ValueError(f"max_iterations: expected rank={r} <= it <= {d}, got {m}")
    k = jax.random.key(0) if key is None else key
    _checks.is_key("key", k)
    matvec = flat_hvp(loss_fn, params, train)
    eig = top_eigenvalues(
      lambda v: unravel(matvec(ravel_pytree(v)[0])), params, k, k=r, num_iterations=m
    )
    u = jax.vmap(lambda v: ravel_pytree(v)[0])(eig.eigenvectors)  # [r, d]
    return ((vectors @ u.T) / (eig.eigenvalues + damping)) @ u
  if factors is None:
    factors = ekfac(loss_fn, params, train)
  elif not isinstance(factors, KroneckerFactors):
    raise ValueError(
      f"factors: expected curvature.KroneckerFactors from curvature.ekfac, got "
      f"{type(factors).__name__}"
    )
  inverse = factors.inverse(damping)
  return jax.vmap(lambda v: ravel_pytree(inverse(unravel(v)))[0])(vectors)


def influence(
  loss_fn: ExampleLoss,
  params: Any,
  train: Any,
  test: Any,
  *,
  method: str = "cg",
  damping: Any = 0.0,
  chunk_size: int | None = None,
  max_iterations: int | None = None,
  tol: float = 1e-7,
  rank: int | None = None,
  scale: Any = None,
  batch_size: int | None = None,
  key: jax.Array | None = None,
  factors: KroneckerFactors | None = None,
) -> jax.Array:
  """``[len(test), len(train)]`` removal effects ``(1/n) g_test^T (H + damping I)^-1 g_train``.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar``, the per-example loss
      (an L2 term inside it is part of H).
    params: the trained parameters (a minimizer of the mean training loss).
    train, test: pytrees of stacked examples (leading axis = examples), with
      one structure and example shape.
    method: ``"explicit"``, ``"cg"``, ``"lissa"``, ``"arnoldi"`` or ``"ekfac"``.
    damping: lambda >= 0 added to H; 0 is valid where H is positive definite.
    chunk_size: examples per ``vmap`` for the per-example gradients.
    max_iterations: CG iterations (default d), LiSSA depth (default 1000),
      Lanczos steps for Arnoldi (default ``rank``).
    tol: CG's relative residual tolerance.
    rank: Arnoldi's number of eigenpairs (<= d; default min(d, 50)).
    scale: LiSSA's scale (default 1.5x the top eigenvalue of H + damping).
    batch_size: LiSSA's Hessian batch (default all train examples).
    key: PRNG key for LiSSA's batches and Lanczos' start (default key 0).
    factors: EK-FAC's fitted factors to reuse (default: fitted on ``train``).
  """
  _checks.one_of("method", method, METHODS)
  _checks.positive("damping", damping, allow_zero=True)
  n, _ = check_sets(train, test)
  check_example_loss(loss_fn, params, train, "train")
  g_train = per_example_gradients(loss_fn, params, train, chunk_size=chunk_size)
  g_test = per_example_gradients(loss_fn, params, test, chunk_size=chunk_size)
  x = inverse_hvp(
    loss_fn,
    params,
    train,
    g_test,
    method=method,
    damping=damping,
    max_iterations=max_iterations,
    tol=tol,
    rank=rank,
    scale=scale,
    batch_size=batch_size,
    key=key,
    factors=factors,
  )
  return (x @ g_train.T) / n


def self_influence(
  loss_fn: ExampleLoss,
  params: Any,
  train: Any,
  *,
  method: str = "cg",
  damping: Any = 0.0,
  chunk_size: int | None = None,
  **options: Any,
) -> jax.Array:
  """``[n]``: ``(1/n) g_j^T (H + damping I)^-1 g_j``, each train example on itself
  (large for examples the model fits only by memorizing them, e.g. mislabeled ones).

  ``options`` are :func:`inverse_hvp`'s.
  """
  n = num_examples("train", train)
  check_example_loss(loss_fn, params, train, "train")
  g = per_example_gradients(loss_fn, params, train, chunk_size=chunk_size)
  x = inverse_hvp(loss_fn, params, train, g, method=method, damping=damping, **options)
  return jnp.sum(x * g, axis=1) / n
