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

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gradlab import _checks
from gradlab.curvature.kronecker import KroneckerFactors, ekfac, key_path
from gradlab.curvature.lanczos import top_eigenvalues
from gradlab.influence import stream
from gradlab.influence.features import flat_grad_fn, num_examples, per_example_gradients

ExampleLoss = Callable[[Any, Any], jax.Array]
METHODS = ("explicit", "cg", "lissa", "arnoldi", "ekfac")


def check_example_loss(
  loss_fn: ExampleLoss, params: Any, examples: Any, name: str, fn_name: str = "loss_fn"
) -> None:
  """``loss_fn(params, one example)`` must be a real scalar."""
  first = jax.tree.map(lambda x: x[0], examples)
  try:
    out = jax.eval_shape(loss_fn, params, first)
  except Exception as e:  # noqa: BLE001 - report the caller's mistake in one line
    raise ValueError(
      f"{fn_name}: calling it on one example of {name} failed: {type(e).__name__}: {e}".split("\n")[
        0
      ]
    ) from e
  if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(
      f"{fn_name}: expected a real scalar per example ({fn_name}(params, example)), got "
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


class Solver(NamedTuple):
  """An inverse-curvature solve set up once: ``apply(state, vectors [m, d]) -> [m, d]``,
  ``(H + damping I)^-1`` on the rows. ``state`` holds its arrays (a dense Hessian's LU
  factors, Arnoldi's eigenpairs, EK-FAC's factors, CG's parameters and data), so
  one compiled program can apply it to every chunk; ``apply`` is pure."""

  method: str
  state: Any
  apply: Callable[[Any, jax.Array], jax.Array]


def _check_damping(method: str, damping: Any) -> None:
  if damping is None:
    if method != "ekfac":
      raise ValueError(
        f"damping: None (0.1 x each layer's mean eigenvalue) applies to method='ekfac' only, "
        f"not {method!r}; give a number >= 0"
      )
    return
  _checks.positive("damping", damping, allow_zero=True)


def solver(
  loss_fn: ExampleLoss,
  params: Any,
  train: Any,
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
) -> Solver:
  """The :class:`Solver` of ``(H + damping I)^-1``, H the Hessian of the mean loss over
  ``train`` (EK-FAC: its Kronecker-factored empirical Fisher). See the module docstring
  for the methods and their options."""
  _checks.one_of("method", method, METHODS)
  _check_damping(method, damping)
  flat, unravel = ravel_pytree(params)
  d = flat.shape[0]
  if method == "explicit":
    h = dense_hessian(loss_fn, params, train) + damping * jnp.eye(d, dtype=flat.dtype)
    lu = jax.scipy.linalg.lu_factor(h)
    return Solver(method, lu, lambda s, v: jax.scipy.linalg.lu_solve(s, v.T).T)
  if method == "cg":
    iters = (
      d if max_iterations is None else _checks.integer("max_iterations", max_iterations, minimum=1)
    )

    def cg(state, v):
      p, data, lam = state
      matvec = flat_hvp(loss_fn, p, data)
      return jax.vmap(lambda b: _cg(lambda x: matvec(x) + lam * x, b, iters, tol))(v)

    return Solver(method, (params, train, jnp.asarray(damping, flat.dtype)), cg)
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

    def lissa(state, v):
      p, data, lam, sc, kk = state
      return _lissa(
        loss_fn, p, data, v, damping=lam, scale=sc, depth=depth, batch_size=batch_size, key=kk
      )

    state = (params, train, jnp.asarray(damping, flat.dtype), jnp.asarray(scale, flat.dtype), k)
    return Solver(method, state, lissa)
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
    state = (u, eig.eigenvalues + damping)
    return Solver(method, state, lambda s, v: ((v @ s[0].T) / s[1]) @ s[0])
  if factors is None:
    factors = ekfac(loss_fn, params, train)
  elif not isinstance(factors, KroneckerFactors):
    raise ValueError(
      f"factors: expected curvature.KroneckerFactors from curvature.ekfac, got "
      f"{type(factors).__name__}"
    )

  def ek(state, v):
    f, lam = state
    inverse = f.inverse(lam)
    return jax.vmap(lambda x: ravel_pytree(inverse(unravel(x)))[0])(v)

  return Solver(method, (factors, damping), ek)


def inverse_hvp(
  loss_fn: ExampleLoss, params: Any, train: Any, vectors: jax.Array, **options: Any
) -> jax.Array:
  """``[m, d]``: rows ``(H + damping I)^-1 v`` for the rows v of ``vectors`` (flat, like
  ``ravel_pytree(params)``), H the Hessian of the mean loss over ``train``.

  ``options`` are :func:`solver`'s (``method``, ``damping``, ...); see the module
  docstring for the methods.
  """
  s = solver(loss_fn, params, train, **options)
  flat, _ = ravel_pytree(params)
  return s.apply(s.state, jnp.asarray(vectors, flat.dtype))


def module_name(path: tuple[str, ...]) -> str:
  """A parameter leaf's module: its path without the leaf's own name, a leading
  ``"params"`` collection dropped (``params/block_0/mlp_in/kernel`` -> ``block_0/mlp_in``,
  the module path flax layer capture names it by); a top-level leaf is its own module."""
  parts = path[1:] if len(path) > 1 and path[0] == "params" else path
  return "/".join(parts[:-1]) or "/".join(parts)


def modules(params: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """The module names in first-seen order, and each leaf's module index."""
  paths = [key_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  names: list[str] = []
  index = []
  for p in paths:
    m = module_name(p)
    if m not in names:
      names.append(m)
    index.append(names.index(m))
  return tuple(names), tuple(index)


def check_token_loss(
  token_loss_fn: Callable[[Any, Any], jax.Array], loss_fn: ExampleLoss, params: Any, train: Any
) -> None:
  """``token_loss_fn(params, example)`` must be a vector summing to ``loss_fn``."""
  first = jax.tree.map(lambda x: x[0], train)
  out = jax.eval_shape(token_loss_fn, params, first)
  if getattr(out, "ndim", None) != 1:
    raise ValueError(
      f"token_loss_fn: expected one loss per token, a vector [T], got "
      f"{getattr(out, 'shape', type(out).__name__)}"
    )
  total, whole = float(jnp.sum(token_loss_fn(params, first))), float(loss_fn(params, first))
  if abs(total - whole) > 1e-4 * max(1.0, abs(whole)):
    raise ValueError(
      f"token_loss_fn: its tokens sum to {total:.6g} on the first train example, loss_fn gives "
      f"{whole:.6g}; the per-token losses must sum to the example's loss"
    )


def gradient_block(
  loss_fn: ExampleLoss,
  params: Any,
  queries: jax.Array,
  chunk: Any,
  *,
  scale: Any = 1.0,
  per_module: bool = False,
  token_loss_fn: Callable[[Any, Any], jax.Array] | None = None,
) -> Any:
  """One chunk's rows ``scale * g_j . q_i`` against the flat ``queries [m, d]``: ``[c, m]``;
  ``{module: [c, m]}`` with ``per_module``; ``[c, m, T]`` with ``token_loss_fn`` (the
  directional derivatives of the per-token losses along each query, one linearization
  per example, no ``[T, d]`` Jacobian)."""
  _, unravel = ravel_pytree(params)
  if token_loss_fn is not None:
    q_trees = jax.vmap(unravel)(queries)

    def tokens(example):
      _, lin = jax.linearize(lambda p: token_loss_fn(p, example), params)
      return jax.vmap(lin)(q_trees)  # [m, T]

    return scale * jax.vmap(tokens)(chunk)
  g = jax.grad(loss_fn)
  if not per_module:
    rows = jax.vmap(lambda e: ravel_pytree(g(params, e))[0])(chunk)
    return scale * (rows @ queries.T)
  names, index = modules(params)
  q_leaves = jax.tree.leaves(jax.vmap(unravel)(queries))
  g_leaves = jax.tree.leaves(jax.vmap(lambda e: g(params, e))(chunk))
  out = {name: 0.0 for name in names}
  for i, (gl, ql) in zip(index, zip(g_leaves, q_leaves)):
    c, m = gl.shape[0], ql.shape[0]
    out[names[i]] = out[names[i]] + gl.reshape(c, -1) @ ql.reshape(m, -1).T
  return {k: scale * v for k, v in out.items()}


def _options_tag(method: str, options: dict) -> str:
  shown = {k: v for k, v in sorted(options.items()) if k != "factors" and k != "key"}
  return f"{method}|{shown!r}"


def influence(
  loss_fn: ExampleLoss,
  params: Any,
  train: Any,
  test: Any,
  *,
  method: str = "cg",
  damping: Any = 0.0,
  chunk_size: int | None = None,
  measurement_fn: ExampleLoss | None = None,
  per_module: bool = False,
  token_loss_fn: Callable[[Any, Any], jax.Array] | None = None,
  query_rank: int | None = None,
  path: Any = None,
  callback: Callable[[int, int], None] | None = None,
  max_iterations: int | None = None,
  tol: float = 1e-7,
  rank: int | None = None,
  scale: Any = None,
  batch_size: int | None = None,
  key: jax.Array | None = None,
  factors: KroneckerFactors | None = None,
) -> Any:
  """``[len(test), len(train)]`` removal effects ``(1/n) m_test^T (H + damping I)^-1 g_train``.

  The inverse is applied once, to the test side (``m`` measurement gradients,
  ``m`` solves); the train set is then streamed ``chunk_size`` examples at a
  time (:mod:`gradlab.influence.stream`), so no ``[n, d]`` array of train
  gradients is held. With ``method="ekfac"`` the train side is the factored
  per-layer contraction (:mod:`gradlab.influence.factored`): no per-example
  gradient is formed at all.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar``, the per-example training
      loss (an L2 term inside it is part of H; for EK-FAC it belongs in ``damping``).
    params: the trained parameters (a minimizer of the mean training loss).
    train, test: pytrees of stacked examples (leading axis = examples), with
      one structure and example shape. NumPy (or memory-mapped) train arrays
      are sliced chunk by chunk on the host when ``path`` is given.
    method: ``"explicit"``, ``"cg"``, ``"lissa"``, ``"arnoldi"`` or ``"ekfac"``.
    damping: lambda >= 0 added to H; 0 is valid where H is positive definite.
      For EK-FAC, ``None`` is 0.1 x each layer's mean eigenvalue.
    chunk_size: train (and test) examples per ``vmap``; at most the set's size
      (default all at once).
    measurement_fn: the function of the test examples whose change is scored
      (``f(params, example) -> scalar``, e.g. a completion's log-probability
      or a margin); default ``loss_fn``. Score signs follow the measurement:
      positive means removing the train example raises it.
    per_module: scores split by module (``{name: [m, n]}``, the names of
      :func:`module_name`), summing to the total.
    token_loss_fn: ``(params, example) -> [T]``, the train example's loss per
      token (summing to ``loss_fn``): scores ``[m, n, T]``, the effect of
      removing token t's loss term of train sequence j; they sum over t to the
      sequence's score.
    query_rank: EK-FAC only: each layer's preconditioned query truncated to
      rank r by SVD (:func:`factored.low_rank_queries` gives the truncation
      error); default exact.
    path: write the scores to this ``.npy`` file block by block (resumable,
      see :mod:`gradlab.influence.stream`) and return it memory-mapped.
    callback: ``callback(blocks_done, blocks)`` after each block written to ``path``.
    max_iterations: CG iterations (default d), LiSSA depth (default 1000),
      Lanczos steps for Arnoldi (default ``rank``).
    tol: CG's relative residual tolerance.
    rank: Arnoldi's number of eigenpairs (<= d; default min(d, 50)).
    scale: LiSSA's scale (default 1.5x the top eigenvalue of H + damping).
    batch_size: LiSSA's Hessian batch (default all train examples).
    key: PRNG key for LiSSA's batches and Lanczos' start (default key 0).
    factors: EK-FAC's fitted factors to reuse (default: fitted on ``train``).
  """
  from gradlab.influence import factored

  _checks.one_of("method", method, METHODS)
  _check_damping(method, damping)
  n, t = check_sets(train, test)
  check_example_loss(loss_fn, params, train, "train")
  measure = loss_fn if measurement_fn is None else measurement_fn
  if measurement_fn is not None:
    check_example_loss(measurement_fn, params, test, "test", "measurement_fn")
  if token_loss_fn is not None:
    check_token_loss(token_loss_fn, loss_fn, params, train)
  if token_loss_fn is not None and per_module:
    raise ValueError("per_module: per-token scores are not split by module; ask for one of them")
  if query_rank is not None:
    if method != "ekfac":
      raise ValueError(f"query_rank: applies to method='ekfac' only, not {method!r}")
    query_rank = _checks.integer("query_rank", query_rank, minimum=1)
  c = stream.check_chunk(chunk_size, n)
  ct = None if chunk_size is None else min(c, t)
  options = dict(max_iterations=max_iterations, tol=tol, rank=rank, scale=scale,
                 batch_size=batch_size, key=key, factors=factors)  # fmt: skip
  s = solver(loss_fn, params, train, method=method, damping=damping, **options)

  @jax.jit  # called eagerly, one program rather than one per op (its arguments, not constants)
  def solve_queries(p, examples, state):
    return s.apply(state, per_example_gradients(measure, p, examples, chunk_size=ct))

  queries = lambda: solve_queries(params, test, s.state)  # noqa: E731

  if method == "ekfac" and token_loss_fn is None:
    return factored.influence(
      loss_fn, params, train, s.state[0], queries, n=n, chunk_size=c, per_module=per_module,
      query_rank=query_rank, path=path, callback=callback,
      tag=_options_tag(method, dict(options, damping=damping, per_module=per_module)),
      identity=(test, s.state),
    )  # fmt: skip

  def block(args, chunk):
    p, q = args
    return gradient_block(
      loss_fn, p, q, chunk, scale=1.0 / n, per_module=per_module, token_loss_fn=token_loss_fn
    )

  tag = _options_tag(method, dict(options, damping=damping, tokens=token_loss_fn is not None))
  return stream.run(
    block, params, queries, train, c, path, tag, identity=(test, s.state), callback=callback
  )


def self_influence(
  loss_fn: ExampleLoss,
  params: Any,
  train: Any,
  *,
  method: str = "cg",
  damping: Any = 0.0,
  chunk_size: int | None = None,
  path: Any = None,
  callback: Callable[[int, int], None] | None = None,
  **options: Any,
) -> Any:
  """``[n]``: ``(1/n) g_j^T (H + damping I)^-1 g_j``, each train example on itself
  (large for examples the model fits only by memorizing them, e.g. mislabeled ones).

  Streamed like :func:`influence`: each chunk's gradients are solved and dotted
  with themselves, so no ``[n, d]`` array is held. ``options`` are :func:`solver`'s;
  ``path`` and ``callback`` as :func:`influence`'s.
  """
  n = num_examples("train", train)
  check_example_loss(loss_fn, params, train, "train")
  c = stream.check_chunk(chunk_size, n)
  s = solver(loss_fn, params, train, method=method, damping=damping, **options)
  g = flat_grad_fn(loss_fn)

  def block(args, chunk):
    (p, state), _ = args
    rows = jax.vmap(lambda e: g(p, e))(chunk)
    return jnp.sum(s.apply(state, rows) * rows, axis=1) / n

  tag = _options_tag(f"self:{method}", dict(options, damping=damping))
  return stream.run(block, (params, s.state), lambda: (), train, c, path, tag, callback=callback)
