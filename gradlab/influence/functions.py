"""Influence functions: ``(1/n) g_test^T (H + damping I)^-1 g_train`` by any inverse solver.

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

**Solvers are values.** The inverse is chosen by passing ``solver=`` a
:class:`SolverSpec`, made by one small function that takes the method's own
options (keyword-only, checked when the value is made) and nothing else, in
matfree's ``lsmr(**options)`` form; ``damping`` stays a separate argument of
every function, since every method uses it::

    influence(loss_fn, params, train, test, solver=cg(tol=1e-10), damping=0.01)
    inverse_hvp(loss_fn, params, train, vectors, solver=arnoldi(rank=20))

A value's ``build(loss_fn, params, train, damping)`` sets the solve up once
and returns a :class:`Solver` (its arrays in ``state``, a pure ``apply``), so
one value serves :func:`inverse_hvp`, :func:`influence`, :func:`self_influence`
and :func:`gradlab.influence.hypergradient`, and a new method is one new
function returning a :class:`SolverSpec` (:func:`gradlab.influence.neumann`
in ``bilevel.py`` is one). The solvers:

* :func:`explicit`: the dense Hessian (``d`` Hessian-vector products) and one
  LU factorization; exact, for models with up to a few thousand parameters.
* :func:`cg` ``(tol, max_iterations)``: conjugate gradient on
  ``v -> (H + damping I) v`` (linearized once), all test gradients at once
  under ``vmap``. Needs H + damping I positive definite; it stops at relative
  residual ``tol`` or after ``max_iterations`` products (default d).
* :func:`lissa` ``(depth, scale, batch_size, key)``: Agarwal et al.'s
  stochastic Neumann series ``x <- v + (I - (H_b + damping I) / scale) x``,
  ``depth`` steps, result ``x / scale``, with ``H_b`` the Hessian on a random
  ``batch_size`` train examples per step (all of them by default). ``scale``
  must exceed the top eigenvalue of H + damping (default: 1.5x the Lanczos
  estimate of it); the error after J steps falls as
  ``(1 - (lambda_min + damping) / scale)^J``.
* :func:`arnoldi` ``(rank, max_iterations, key)``: Schioppa et al. (2022): H
  restricted to its top ``rank`` eigenpairs (``max_iterations`` Lanczos steps
  with full reorthogonalization, ``curvature.lanczos``),
  ``H^-1 v ~= sum_k u_k u_k^T v / (lambda_k + damping)``. With ``rank = d`` it
  is exact; the error falls as ``rank`` grows.
* :func:`ekfac_solver` ``(factors)``: ``gradlab.curvature.ekfac``'s EK-FAC of
  the empirical Fisher (the per-example gradient covariance), for models whose
  parameters all sit in flax Dense, DenseGeneral, Embed or Conv layers called
  inside ``loss_fn`` (tokens and convolutions included; an L2 term belongs in
  ``damping``, not in ``loss_fn``). Pass ``factors`` (from ``curvature.ekfac``,
  e.g. restored from a checkpoint) to reuse a fit across queries. Named
  ``ekfac_solver`` so that it never shadows ``curvature.ekfac``, the fit.
* :func:`gradlab.influence.neumann` ``(num_terms, scale, key)``: the truncated
  Neumann series of Lorraine et al. (2020), LiSSA's full-batch series counted
  in terms.

Each build compiles its set-up as one program (the dense Hessian and its LU
factors; the Lanczos eigenpairs), and every solve and train chunk is one
compiled program with the arrays as its arguments, so eager calls cost a few
compilations, not one per operation.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gradlab import _checks
from gradlab.curvature import kronecker
from gradlab.curvature.kronecker import KroneckerFactors, key_path
from gradlab.curvature.lanczos import top_eigenvalues
from gradlab.influence import stream
from gradlab.influence.features import flat_grad_fn, num_examples, per_example_gradients

ExampleLoss = Callable[[Any, Any], jax.Array]


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
  """``v -> H v`` on flat vectors for the mean loss over ``examples``, linearized once
  (call it inside ``jit``: eagerly, the linearization runs op by op)."""
  flat, unravel = ravel_pytree(params)
  loss = mean_loss(loss_fn, examples)
  grad = lambda f: ravel_pytree(jax.grad(loss)(unravel(f)))[0]
  _, matvec = jax.linearize(grad, flat)
  return matvec


def _dense_hessian(loss_fn: ExampleLoss, params: Any, examples: Any) -> jax.Array:
  flat, _ = ravel_pytree(params)
  matvec = flat_hvp(loss_fn, params, examples)
  return jax.lax.map(matvec, jnp.eye(flat.shape[0], dtype=flat.dtype))


def dense_hessian(loss_fn: ExampleLoss, params: Any, examples: Any) -> jax.Array:
  """``[d, d]``: the Hessian of the mean loss, one Hessian-vector product per column
  (one compiled program, the parameters and examples its arguments)."""
  return jax.jit(lambda p, e: _dense_hessian(loss_fn, p, e))(params, examples)


def hessian_top(loss_fn, params, train, key, k: int, m: int) -> tuple[jax.Array, jax.Array]:
  """The top ``k`` eigenvalues ``[k]`` and flat eigenvectors ``[k, d]`` of the mean loss's
  Hessian by ``m`` Lanczos steps, one compiled program."""

  def top(p, data, kk):
    _, unravel = ravel_pytree(p)
    matvec = flat_hvp(loss_fn, p, data)
    eig = top_eigenvalues(
      lambda v: unravel(matvec(ravel_pytree(v)[0])), p, kk, k=k, num_iterations=m
    )
    return eig.eigenvalues, jax.vmap(lambda v: ravel_pytree(v)[0])(eig.eigenvectors)

  return jax.jit(top)(params, train, key)


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
  one compiled program can apply it to every chunk; ``apply`` is pure. ``factors``:
  the Kronecker factors whose layers :func:`influence` contracts the train side
  through (EK-FAC's; ``None`` for the others)."""

  method: str
  state: Any
  apply: Callable[[Any, jax.Array], jax.Array]
  factors: KroneckerFactors | None = None


class SolverSpec(NamedTuple):
  """A solver as a value: the method's name, its checked options, and
  ``build(loss_fn, params, train, damping) -> Solver`` for H the Hessian of the mean
  loss over ``train`` (EK-FAC: its Kronecker-factored empirical Fisher). Made by
  :func:`explicit`, :func:`cg`, :func:`lissa`, :func:`arnoldi`, :func:`ekfac_solver`,
  :func:`gradlab.influence.neumann`, or any function of one's own that returns one.
  Pass it as ``solver=``; close over it (it is not an array argument of ``jit``)."""

  method: str
  options: dict[str, Any]
  build: Callable[[ExampleLoss, Any, Any, Any], Solver]


_SOLVER_NAMES = "explicit(), cg(), lissa(), arnoldi(), ekfac_solver() or neumann()"


def check_solver(solver: Any) -> SolverSpec:
  """``solver=`` as a :class:`SolverSpec` (``None``: :func:`cg`'s defaults)."""
  if solver is None:
    return cg()
  if isinstance(solver, SolverSpec):
    return solver
  if isinstance(solver, str):
    raise ValueError(
      f"solver: expected a solver value, influence.{_SOLVER_NAMES}, got the string {solver!r}"
    )
  raise ValueError(
    f"solver: expected a solver value, influence.{_SOLVER_NAMES}, got {type(solver).__name__}"
  )


def check_damping(method: str, damping: Any) -> None:
  """A number >= 0; ``None`` (EK-FAC's per-layer default) for the ``ekfac`` solver only."""
  if damping is None:
    if method != "ekfac":
      raise ValueError(
        f"damping: None (0.1 x each layer's mean eigenvalue) applies to solver=ekfac_solver() "
        f"only, not {method}(); give a number >= 0"
      )
    return
  _checks.positive("damping", damping, allow_zero=True)


def build_solver(
  solver: Any, loss_fn: ExampleLoss, params: Any, train: Any, damping: Any
) -> Solver:
  """``solver`` checked (:func:`check_solver`) and built on ``train``."""
  spec = check_solver(solver)
  check_damping(spec.method, damping)
  return spec.build(loss_fn, params, train, damping)


def _optional_key(name: str, key: Any) -> jax.Array:
  k = jax.random.key(0) if key is None else key
  _checks.is_key(name, k)
  return k


def explicit() -> SolverSpec:
  """The exact solve: the dense ``[d, d]`` Hessian (d Hessian-vector products, one
  compiled program) plus ``damping I``, LU-factored once; each solve is a pair of
  triangular solves. For up to a few thousand parameters."""

  def build(loss_fn, params, train, damping) -> Solver:
    check_damping("explicit", damping)
    num_examples("train", train)
    flat, _ = ravel_pytree(params)
    eye = jnp.eye(flat.shape[0], dtype=flat.dtype)

    def factor(p, data, lam):
      return jax.scipy.linalg.lu_factor(_dense_hessian(loss_fn, p, data) + lam * eye)

    lu = jax.jit(factor)(params, train, jnp.asarray(damping, flat.dtype))
    return Solver("explicit", lu, lambda s, v: jax.scipy.linalg.lu_solve(s, v.T).T)

  return SolverSpec("explicit", {}, build)


def cg(*, tol: float = 1e-7, max_iterations: int | None = None) -> SolverSpec:
  """Conjugate gradient on ``v -> (H + damping I) v`` (H linearized once per solve), every
  right-hand side at once under ``vmap``; no set-up. Needs ``H + damping I`` positive
  definite.

  Args:
    tol: relative residual at which CG stops (>= 0): the solution's relative error
      is at most ``cond(H + damping I) tol``.
    max_iterations: the most products per right-hand side (>= 1; default d).
  """
  _checks.positive("tol", tol, allow_zero=True)
  if max_iterations is not None:
    max_iterations = _checks.integer("max_iterations", max_iterations, minimum=1)

  def build(loss_fn, params, train, damping) -> Solver:
    check_damping("cg", damping)
    num_examples("train", train)
    flat, _ = ravel_pytree(params)
    iters = flat.shape[0] if max_iterations is None else max_iterations

    def apply(state, v):
      p, data, lam = state
      matvec = flat_hvp(loss_fn, p, data)
      return jax.vmap(lambda b: _cg(lambda x: matvec(x) + lam * x, b, iters, tol))(v)

    return Solver("cg", (params, train, jnp.asarray(damping, flat.dtype)), apply)

  return SolverSpec("cg", {"tol": tol, "max_iterations": max_iterations}, build)


def lissa(
  *,
  depth: int = 1000,
  scale: Any = None,
  batch_size: int | None = None,
  key: jax.Array | None = None,
) -> SolverSpec:
  """LiSSA (Agarwal, Bullins and Hazan, 2017): ``depth`` steps of
  ``x <- v + (I - (H_b + damping I) / scale) x``, result ``x / scale``.

  Args:
    depth: the steps J (>= 1); the error falls as ``(1 - (mu + damping) / scale)^J``.
    scale: above the top eigenvalue of ``H + damping I`` (> 0); default 1.5x its
      Lanczos estimate (30 steps, at build).
    batch_size: train examples per step's Hessian ``H_b``, drawn without
      replacement (>= 1, at most the train set); default all of them (the exact
      series).
    key: PRNG key of the batches and the Lanczos start (default key 0).
  """
  depth = _checks.integer("depth", depth, minimum=1)
  if scale is not None:
    _checks.positive("scale", scale)
  if batch_size is not None:
    batch_size = _checks.integer("batch_size", batch_size, minimum=1)
  k = _optional_key("key", key)

  def build(loss_fn, params, train, damping) -> Solver:
    check_damping("lissa", damping)
    n = num_examples("train", train)
    if batch_size is not None and batch_size > n:
      raise ValueError(f"batch_size: {batch_size} exceeds the {n} train examples")
    flat, _ = ravel_pytree(params)
    sc = scale
    if sc is None:
      m = min(flat.shape[0], 30)
      top = hessian_top(loss_fn, params, train, jax.random.fold_in(k, 1), 1, m)[0][0]
      sc = 1.5 * (top + damping)

    def apply(state, v):
      p, data, lam, s, kk = state
      return _lissa(
        loss_fn, p, data, v, damping=lam, scale=s, depth=depth, batch_size=batch_size, key=kk
      )

    state = (params, train, jnp.asarray(damping, flat.dtype), jnp.asarray(sc, flat.dtype), k)
    return Solver("lissa", state, apply)

  options = {"depth": depth, "scale": scale, "batch_size": batch_size, "key": key}
  return SolverSpec("lissa", options, build)


def arnoldi(
  *, rank: int | None = None, max_iterations: int | None = None, key: jax.Array | None = None
) -> SolverSpec:
  """Arnoldi influence (Schioppa et al., 2022): H restricted to its top ``rank``
  eigenpairs, ``H^-1 v ~= sum_k u_k u_k^T v / (lambda_k + damping)``.

  Args:
    rank: the eigenpairs kept (1 <= rank <= d; default min(d, 50)); exact at d.
    max_iterations: Lanczos steps (rank <= it <= d; default ``rank``).
    key: PRNG key of the Lanczos start (default key 0).
  """
  if rank is not None:
    rank = _checks.integer("rank", rank, minimum=1)
  if max_iterations is not None:
    max_iterations = _checks.integer("max_iterations", max_iterations, minimum=1)
    if rank is not None and max_iterations < rank:
      raise ValueError(f"max_iterations: expected rank={rank} <= it, got {max_iterations}")
  k = _optional_key("key", key)

  def build(loss_fn, params, train, damping) -> Solver:
    check_damping("arnoldi", damping)
    num_examples("train", train)
    d = ravel_pytree(params)[0].shape[0]
    r = min(d, 50) if rank is None else rank
    if r > d:
      raise ValueError(f"rank: {r} exceeds the number of parameters {d}")
    m = r if max_iterations is None else max_iterations
    if not r <= m <= d:
      raise ValueError(f"max_iterations: expected rank={r} <= it <= {d}, got {m}")
    values, u = hessian_top(loss_fn, params, train, k, r, m)  # [r], [r, d]
    state = (u, values + damping)
    return Solver("arnoldi", state, lambda s, v: ((v @ s[0].T) / s[1]) @ s[0])

  options = {"rank": rank, "max_iterations": max_iterations, "key": key}
  return SolverSpec("arnoldi", options, build)


def ekfac_solver(*, factors: KroneckerFactors | None = None) -> SolverSpec:
  """EK-FAC (George et al., 2018; Grosse et al., 2023): the inverse of
  ``gradlab.curvature.ekfac``'s eigenvalue-corrected Kronecker factors of the empirical
  Fisher, layer by layer. ``damping=None`` is 0.1 x each layer's mean eigenvalue.

  Args:
    factors: factors fitted by ``curvature.ekfac`` to reuse (e.g. restored from a
      checkpoint); default: fitted on ``train`` at build.
  """
  if factors is not None and not isinstance(factors, KroneckerFactors):
    raise ValueError(
      f"factors: expected curvature.KroneckerFactors from curvature.ekfac, got "
      f"{type(factors).__name__}"
    )

  def build(loss_fn, params, train, damping) -> Solver:
    check_damping("ekfac", damping)
    num_examples("train", train)
    f = kronecker.ekfac(loss_fn, params, train) if factors is None else factors
    _, unravel = ravel_pytree(params)

    def apply(state, v):
      ff, lam = state
      inverse = ff.inverse(lam)
      return jax.vmap(lambda x: ravel_pytree(inverse(unravel(x)))[0])(v)

    return Solver("ekfac", (f, damping), apply, factors=f)

  return SolverSpec("ekfac", {"factors": factors}, build)


def inverse_hvp(
  loss_fn: ExampleLoss,
  params: Any,
  train: Any,
  vectors: jax.Array,
  *,
  solver: SolverSpec | None = None,
  damping: Any = 0.0,
) -> jax.Array:
  """``[m, d]``: rows ``(H + damping I)^-1 v`` for the rows v of ``vectors`` (flat, like
  ``ravel_pytree(params)``), H the Hessian of the mean loss over ``train``, by
  ``solver`` (a :class:`SolverSpec`; default :func:`cg`). One compiled solve.
  """
  s = build_solver(solver, loss_fn, params, train, damping)
  flat, _ = ravel_pytree(params)
  return jax.jit(s.apply)(s.state, jnp.asarray(vectors, flat.dtype))


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
  both = jax.jit(lambda p, e: (jnp.sum(token_loss_fn(p, e)), loss_fn(p, e)))  # one program
  total, whole = (float(x) for x in both(params, first))
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


def _options_tag(spec: SolverSpec, extra: dict) -> str:
  # arrays (a key, fitted factors) are in the run's identity, not its tag
  shown = {
    k: v for k, v in sorted({**spec.options, **extra}.items()) if k not in ("factors", "key")
  }
  return f"{spec.method}|{shown!r}"


def influence(
  loss_fn: ExampleLoss,
  params: Any,
  train: Any,
  test: Any,
  *,
  solver: SolverSpec | None = None,
  damping: Any = 0.0,
  chunk_size: int | None = None,
  measurement_fn: ExampleLoss | None = None,
  per_module: bool = False,
  token_loss_fn: Callable[[Any, Any], jax.Array] | None = None,
  query_rank: int | None = None,
  path: Any = None,
  callback: Callable[[int, int], None] | None = None,
) -> Any:
  """``[len(test), len(train)]`` removal effects ``(1/n) m_test^T (H + damping I)^-1 g_train``.

  The inverse is applied once, to the test side (``m`` measurement gradients,
  ``m`` solves); the train set is then streamed ``chunk_size`` examples at a
  time (:mod:`gradlab.influence.stream`), so no ``[n, d]`` array of train
  gradients is held. With :func:`ekfac_solver` the train side is the factored
  per-layer contraction (:mod:`gradlab.influence.factored`): no per-example
  gradient is formed at all.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar``, the per-example training
      loss (an L2 term inside it is part of H; for EK-FAC it belongs in ``damping``).
    params: the trained parameters (a minimizer of the mean training loss).
    train, test: pytrees of stacked examples (leading axis = examples), with
      one structure and example shape. NumPy (or memory-mapped) train arrays
      are sliced chunk by chunk on the host when ``path`` is given.
    solver: the inverse, a :class:`SolverSpec`: :func:`explicit`, :func:`cg`
      (the default, ``cg()``), :func:`lissa`, :func:`arnoldi`,
      :func:`ekfac_solver`, :func:`gradlab.influence.neumann`, with their options.
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
  """
  from gradlab.influence import factored

  spec = check_solver(solver)
  check_damping(spec.method, damping)
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
    if spec.method != "ekfac":
      raise ValueError(f"query_rank: applies to solver=ekfac_solver() only, not {spec.method}()")
    query_rank = _checks.integer("query_rank", query_rank, minimum=1)
  c = stream.check_chunk(chunk_size, n)
  ct = None if chunk_size is None else min(c, t)
  s = spec.build(loss_fn, params, train, damping)

  @jax.jit  # called eagerly, one program rather than one per op (its arguments, not constants)
  def solve_queries(p, examples, state):
    return s.apply(state, per_example_gradients(measure, p, examples, chunk_size=ct))

  queries = lambda: solve_queries(params, test, s.state)  # noqa: E731

  if s.factors is not None and token_loss_fn is None:
    return factored.influence(
      loss_fn, params, train, s.factors, queries, n=n, chunk_size=c, per_module=per_module,
      query_rank=query_rank, path=path, callback=callback,
      tag=_options_tag(spec, dict(damping=damping, per_module=per_module)),
      identity=(test, s.state),
    )  # fmt: skip

  def block(args, chunk):
    p, q = args
    return gradient_block(
      loss_fn, p, q, chunk, scale=1.0 / n, per_module=per_module, token_loss_fn=token_loss_fn
    )

  tag = _options_tag(spec, dict(damping=damping, tokens=token_loss_fn is not None))
  return stream.run(
    block, params, queries, train, c, path, tag, identity=(test, s.state), callback=callback
  )


def self_influence(
  loss_fn: ExampleLoss,
  params: Any,
  train: Any,
  *,
  solver: SolverSpec | None = None,
  damping: Any = 0.0,
  chunk_size: int | None = None,
  path: Any = None,
  callback: Callable[[int, int], None] | None = None,
) -> Any:
  """``[n]``: ``(1/n) g_j^T (H + damping I)^-1 g_j``, each train example on itself
  (large for examples the model fits only by memorizing them, e.g. mislabeled ones).

  Streamed like :func:`influence`: each chunk's gradients are solved and dotted
  with themselves, so no ``[n, d]`` array is held. ``solver``, ``damping``, ``path``
  and ``callback`` as :func:`influence`'s.
  """
  spec = check_solver(solver)
  check_damping(spec.method, damping)
  n = num_examples("train", train)
  check_example_loss(loss_fn, params, train, "train")
  c = stream.check_chunk(chunk_size, n)
  s = spec.build(loss_fn, params, train, damping)
  g = flat_grad_fn(loss_fn)

  def block(args, chunk):
    (p, state), _ = args
    rows = jax.vmap(lambda e: g(p, e))(chunk)
    return jnp.sum(s.apply(state, rows) * rows, axis=1) / n

  tag = "self:" + _options_tag(spec, dict(damping=damping))
  return stream.run(block, (params, s.state), lambda: (), train, c, path, tag, callback=callback)
