r"""Bilevel optimization: implicit hypergradients, the penalty gradient, BO-REP.

The problem is ``min_x F(x) = f(x, y*(x))`` with ``y*(x) = argmin_y g(x, y)``
for an inner ``g`` strongly convex in y. ``f`` is ``outer_fn(x, y)`` and ``g``
is ``inner_fn(x, y)``, both real scalars, x and y any pytrees of floating
arrays. Influence functions are the special case where x up-weights one
training example: the same implicit-gradient machinery (the solver values of
:mod:`gradlab.influence.functions`) serves both.

**Implicit hypergradient** (:func:`hypergradient`). Differentiating
``grad_y g(x, y*(x)) = 0`` gives ``dy*/dx = -(d2_yy g)^-1 d2_yx g``, so

    dF/dx = grad_x f - d2_xy g v,      v = (d2_yy g + damping I)^-1 grad_y f,

everything at ``(x, y)`` with y the caller's (approximate) ``y*(x)``. ``v`` is
one inverse-Hessian-vector product, by any solver value passed as ``solver=``
(``explicit()``, ``cg()``, ``lissa()``, ``arnoldi()``, ``ekfac_solver()``; see
:mod:`gradlab.influence.functions`) or the truncated Neumann series
(:func:`neumann`, by :func:`neumann_inverse_hvp`); ``d2_xy g v`` is one
vector-Jacobian product of ``x -> grad_y g(x, y)``, never a matrix. References:
Pedregosa, "Hyperparameter optimization with approximate gradient" (ICML 2016;
CG), Lorraine, Vicol and Duvenaud, "Optimizing millions of hyperparameters by
implicit differentiation" (AISTATS 2020; Neumann), Grazzi et al., "On the
iteration complexity of hypergradient computation" (ICML 2020; the error of
both as a function of the iterations).

Which solver: ``explicit()`` for a few thousand inner parameters (exact);
``cg()`` otherwise (its relative residual ``tol`` bounds the error of v by
``tol |grad_y f| / mu``, mu the smallest eigenvalue of the damped Hessian);
``neumann()`` / ``lissa()`` when only a step size below ``1 / L`` is known (error
``(1 - step mu)^K |v|`` after K terms: slow when badly conditioned); ``arnoldi()``
or ``ekfac_solver()`` for very large y, trading exactness for cost (EK-FAC factors
the empirical Fisher, not the Hessian, and needs ``inner_data``).

**Penalty gradient** (:func:`penalty_hypergradient`). The fully first-order
surrogate of Kwon et al., "A fully first-order method for stochastic bilevel
optimization" (ICML 2023; F2SA), Shen and Chen, "On penalty-based bilevel
gradient descent method" (ICML 2023), and Chen, Ma and Zhang's F2BA ("Near-optimal
nonconvex-strongly-convex bilevel optimization with fully first-order
oracles"): with ``y_sigma = argmin_y sigma f(x, y) + g(x, y)``
(:func:`penalty_objective`),

    F_sigma(x) = f(x, y_sigma) + (g(x, y_sigma) - g(x, y*)) / sigma,
    grad F_sigma(x) = grad_x f(x, y_sigma) + (grad_x g(x, y_sigma) - grad_x g(x, y*)) / sigma

(Danskin: both minimizers' own derivatives drop out). Gradients only, no
Hessian products; ``grad F_sigma - grad F = O(sigma)``: ``y_sigma - y* = -sigma
v + O(sigma^2)`` and the divided difference of ``grad_x g`` is
``-d2_xy g v + O(sigma)``. Official code read: ``TrueNobility303/F2BA``,
``single_machine/data_cleaning.py`` (function ``F2BA``: ``x`` descends ``f +
lmbd g``, ``xhat`` descends ``g``, the outer gradient ``lmbd (g_w(x) -
g_w(xhat))``; ``lmbd = 1 / sigma`` here). Deviation: the penalty is ``sigma``,
not ``lmbd``, and the two minimizers are the caller's (any solver), not a
built-in loop.

**BO-REP** (:func:`bo_rep`): Hao, Gong and Liu, "Bilevel optimization under
unbounded smoothness: a new algorithm and convergence analysis" (ICLR 2024).
Normalized momentum on x, a single SGD step per outer step on the linear
system for z (~ v), and y refined only every ``period`` steps (periodic
updates), after an initialization refinement of y at ``x_0``. See
:func:`bo_rep` for the official code read and every deviation.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from gradlab import _checks
from gradlab.curvature.dataset import num_examples
from gradlab.curvature.products import hvp
from gradlab.influence import functions

ObjectiveFn = Callable[[Any, Any], jax.Array]


class Hypergradient(NamedTuple):
  """:func:`hypergradient`'s answer."""

  grad: Any  # dF/dx, a pytree like x
  v: Any  # (d2_yy g + damping I)^-1 grad_y f, a pytree like y
  residual: jax.Array  # |(d2_yy g + damping I) v - grad_y f| / |grad_y f| (0 for an exact solve)


def _check_tree(name: str, tree: Any) -> None:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError(f"{name}: expected a pytree of floating arrays, got no arrays ({tree!r})")
  for leaf in leaves:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise ValueError(
        f"{name}: expected a pytree of floating arrays, got a leaf of dtype {jnp.result_type(leaf)}"
      )


def _check_scalar_fn(name: str, fn: Any, *args: Any) -> None:
  """``fn(*args)`` must be a real scalar; any failure becomes one line naming ``name``."""
  if not callable(fn):
    raise ValueError(f"{name}: expected a function returning a real scalar, got {fn!r}")
  try:
    out = jax.eval_shape(fn, *args)
  except Exception as e:  # noqa: BLE001 - report the caller's mistake in one line
    raise ValueError(f"{name}: calling it failed: {type(e).__name__}: {e}".split("\n")[0]) from e
  if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(
      f"{name}: expected a real scalar, got {getattr(out, 'shape', type(out).__name__)}"
      + (f" of dtype {out.dtype}" if hasattr(out, "dtype") else "")
    )


def _same_structure(name: str, tree: Any, like_name: str, like: Any) -> None:
  if jax.tree.structure(tree) != jax.tree.structure(like):
    raise ValueError(
      f"{name}: expected the pytree structure of {like_name} {jax.tree.structure(like)}, got "
      f"{jax.tree.structure(tree)}"
    )
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(like)):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(
        f"{name}: expected leaves shaped like {like_name}'s {jnp.shape(b)}, got {jnp.shape(a)}"
      )


def _check_problem(outer_fn, inner_fn, x, y) -> None:
  _check_tree("x", x)
  _check_tree("y", y)
  _check_scalar_fn("outer_fn", outer_fn, x, y)
  _check_scalar_fn("inner_fn", inner_fn, x, y)


def neumann_inverse_hvp(matvec: Callable[[Any], Any], b: Any, *, num_terms: int, step: Any) -> Any:
  r"""``step * sum_{k<num_terms} (I - step A)^k b``: the truncated Neumann series of ``A^-1 b``.

  For a symmetric ``A`` (``matvec``, over pytrees like ``b``) with spectrum in
  ``[mu, L]``, ``mu > 0``, and ``0 < step <= 1 / L`` the remainder is exactly
  ``A^-1 b - result = (I - step A)^num_terms A^-1 b``, so

      |A^-1 b - result| <= (1 - step mu)^num_terms |A^-1 b|.

  One product per term after the first (``num_terms - 1`` in all). Lorraine et
  al. (2020), eq. (9); Agarwal et al.'s LiSSA (``influence.lissa()``) is the same
  series on flat vectors, with sampled Hessians. As a solver value: :func:`neumann`.

  Args:
    matvec: ``u -> A u`` on pytrees like ``b``.
    b: the right-hand side.
    num_terms: K >= 1, the terms kept.
    step: alpha in ``(0, 1 / L]`` (``2 / L`` is the divergence boundary).

  Returns:
    A pytree like ``b``.
  """
  k = _checks.integer("num_terms", num_terms, minimum=1)
  _checks.positive("step", step)
  _check_tree("b", b)
  if not callable(matvec):
    raise ValueError(f"matvec: expected a linear map over pytrees like b, got {matvec!r}")

  def term(_, carry):
    p, acc = carry
    p = optax.tree.add_scale(p, -step, matvec(p))
    return p, optax.tree.add(acc, p)

  _, acc = jax.lax.fori_loop(1, k, term, (b, b))
  return optax.tree.scale(step, acc)


def neumann(
  *, num_terms: int = 100, scale: Any = None, key: jax.Array | None = None
) -> functions.SolverSpec:
  """The truncated Neumann series as a solver value: :func:`neumann_inverse_hvp` of
  ``A = H + damping I`` with ``step = 1 / scale``, every right-hand side under ``vmap``.

  The full-batch LiSSA series counted in terms (``lissa(depth=J)`` sums J + 1 terms);
  usable wherever ``solver=`` is (:func:`hypergradient`, ``influence.influence``, ...).

  Args:
    num_terms: K >= 1, the terms kept; the error is at most ``(1 - mu / scale)^K``
      relative, mu the smallest eigenvalue of A.
    scale: the inverse step, above the top eigenvalue of A (> 0); default 1.5x its
      Lanczos estimate (30 steps, at build).
    key: PRNG key of the Lanczos start (default key 0).
  """
  k = _checks.integer("num_terms", num_terms, minimum=1)
  if scale is not None:
    _checks.positive("scale", scale)
  kk = jax.random.key(0) if key is None else key
  _checks.is_key("key", kk)

  def build(loss_fn, params, train, damping) -> functions.Solver:
    functions.check_damping("neumann", damping)
    num_examples("train", train)
    flat, _ = ravel_pytree(params)
    sc = scale
    if sc is None:
      m = min(flat.shape[0], 30)
      sc = 1.5 * (functions.hessian_top(loss_fn, params, train, kk, 1, m)[0][0] + damping)

    def apply(state, v):
      p, data, lam, s = state
      matvec = functions.flat_hvp(loss_fn, p, data)
      a = lambda u: matvec(u) + lam * u
      return jax.vmap(lambda b: neumann_inverse_hvp(a, b, num_terms=k, step=1.0 / s))(v)

    state = (params, train, jnp.asarray(damping, flat.dtype), jnp.asarray(sc, flat.dtype))
    return functions.Solver("neumann", state, apply)

  return functions.SolverSpec("neumann", {"num_terms": k, "scale": scale, "key": key}, build)


def _mean_inner(inner_fn, inner_data) -> ObjectiveFn:
  if inner_data is None:
    return inner_fn
  return lambda x, y: jnp.mean(jax.vmap(inner_fn, in_axes=(None, None, 0))(x, y, inner_data))


def hypergradient(
  outer_fn: ObjectiveFn,
  inner_fn: Callable[..., jax.Array],
  x: Any,
  y: Any,
  *,
  solver: functions.SolverSpec | None = None,
  damping: Any = 0.0,
  inner_data: Any = None,
) -> Hypergradient:
  r"""``dF/dx = grad_x f - d2_xy g (d2_yy g + damping I)^-1 grad_y f`` at ``(x, y)``.

  ``y`` should be (close to) ``y*(x)``: the formula is the implicit function
  theorem's at the y given, so its error grows with ``|grad_y g(x, y)|``.

  Args:
    outer_fn: ``f(x, y) -> scalar``.
    inner_fn: ``g(x, y) -> scalar``; with ``inner_data``, one example's inner
      loss ``g_j(x, y, example)`` and ``g = mean_j g_j`` (needed by
      ``ekfac_solver()``, and by ``lissa(batch_size=...)``).
    x, y: the outer and inner variables, pytrees of floating arrays.
    solver: the solve for v, a solver value (``influence.explicit()``, ``cg()``
      (the default), ``lissa()``, ``arnoldi()``, ``ekfac_solver()`` with factors of
      the inner loss, or :func:`neumann`), its options given to it.
    damping: added to ``d2_yy g``'s diagonal (a number >= 0, for EK-FAC too).
    inner_data: stacked examples for a per-example ``inner_fn``.

  Returns:
    :class:`Hypergradient` ``(grad, v, residual)``.
  """
  spec = functions.check_solver(solver)
  _check_tree("x", x)
  _check_tree("y", y)
  _check_scalar_fn("outer_fn", outer_fn, x, y)
  if inner_data is None:
    _check_scalar_fn("inner_fn", inner_fn, x, y)
    if spec.method == "ekfac":
      raise ValueError(
        "inner_data: solver=ekfac_solver() needs the inner loss per example "
        "(inner_fn(x, y, example) and inner_data), got None"
      )
    if spec.options.get("batch_size") is not None:
      raise ValueError("batch_size: LiSSA's batches need inner_data (per-example inner losses)")
  else:
    num_examples("inner_data", inner_data)
    first = jax.tree.map(lambda a: a[0], inner_data)
    _check_scalar_fn("inner_fn", inner_fn, x, y, first)
  _checks.positive("damping", damping, allow_zero=True)
  g = _mean_inner(inner_fn, inner_data)
  fx, fy = jax.grad(outer_fn, argnums=(0, 1))(x, y)
  flat_fy, unravel = ravel_pytree(fy)
  y_hvp = lambda u: optax.tree.add_scale(hvp(lambda yy, _: g(x, yy), y, None, u), damping, u)

  if inner_data is None:
    loss_fn = lambda yy, _: inner_fn(x, yy)
    train = jnp.zeros((1,), flat_fy.dtype)  # one dummy example: the mean is g itself
  else:
    loss_fn = lambda yy, example: inner_fn(x, yy, example)
    train = inner_data
  s = spec.build(loss_fn, y, train, damping)
  v = unravel(jax.jit(s.apply)(s.state, flat_fy[None])[0])  # one program when called eagerly

  _, cross_vjp = jax.vjp(lambda xx: jax.grad(g, argnums=1)(xx, y), x)
  grad = optax.tree.sub(fx, cross_vjp(v)[0])
  r = optax.tree.norm(optax.tree.sub(y_hvp(v), fy))
  b = optax.tree.norm(fy)
  residual = jnp.where(b > 0, r / jnp.where(b > 0, b, 1.0), r)
  return Hypergradient(grad, v, residual)


def penalty_objective(outer_fn: ObjectiveFn, inner_fn: ObjectiveFn, *, sigma: Any) -> ObjectiveFn:
  """``(x, y) -> sigma f(x, y) + g(x, y)``: minimized over y it gives ``y_sigma``.

  (The same minimizer as F2SA's ``f + lambda g`` with ``lambda = 1 / sigma``,
  written with g's scale so that g's inner step size still fits.)
  """
  _checks.positive("sigma", sigma)
  return lambda x, y: sigma * outer_fn(x, y) + inner_fn(x, y)


def penalty_hypergradient(
  outer_fn: ObjectiveFn,
  inner_fn: ObjectiveFn,
  x: Any,
  y_sigma: Any,
  y_star: Any,
  *,
  sigma: Any,
) -> Any:
  r"""``grad_x f(x, y_sigma) + (grad_x g(x, y_sigma) - grad_x g(x, y*)) / sigma``.

  The gradient of the penalty surrogate ``F_sigma`` (module docstring), a
  first-order approximation of ``dF/dx`` with error ``O(sigma)`` when
  ``y_sigma`` minimizes :func:`penalty_objective` and ``y_star`` minimizes g.
  Rounding: the divided difference rounds at about ``eps |grad_x g| / sigma``
  against the bias ``c sigma``, so the total error is least near
  ``sigma ~ sqrt(eps |grad_x g| / c)`` (eps = 1.2e-7 in float32).

  Args:
    outer_fn, inner_fn: ``f(x, y)`` and ``g(x, y)``, real scalars.
    x: the outer variable.
    y_sigma: the minimizer over y of ``sigma f(x, y) + g(x, y)``.
    y_star: the minimizer over y of ``g(x, y)``.
    sigma: the penalty, > 0.

  Returns:
    A pytree like ``x``.
  """
  _checks.positive("sigma", sigma)
  _check_problem(outer_fn, inner_fn, x, y_sigma)
  _same_structure("y_star", y_star, "y_sigma", y_sigma)
  fx = jax.grad(outer_fn)(x, y_sigma)
  gx = jax.grad(inner_fn)
  return optax.tree.add_scale(fx, 1.0 / sigma, optax.tree.sub(gx(x, y_sigma), gx(x, y_star)))


def inner_descent(
  inner_fn: ObjectiveFn, x: Any, y: Any, *, num_steps: int, learning_rate: Any
) -> Any:
  """``num_steps`` gradient-descent steps ``y <- y - learning_rate grad_y g(x, y)`` (a pytree like y)."""
  k = _checks.integer("num_steps", num_steps, minimum=0)
  _checks.positive("learning_rate", learning_rate)
  grad = jax.grad(inner_fn, argnums=1)
  step = lambda _, yy: optax.tree.add_scale(yy, -learning_rate, grad(x, yy))
  return jax.lax.fori_loop(0, k, step, y)


def normalized_momentum(
  learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, *, eps: float = 1e-10
) -> optax.GradientTransformation:
  """BO-REP's x update as an optax chain: ``m <- b m + (1 - b) g``, ``-lr m / (|m| + eps)``.

  ``optax.ema(momentum, debias=False)`` then ``optax.normalize_by_update_norm``
  (the global norm over the pytree) then ``optax.scale_by_learning_rate``: the
  official code's SGD step at ``lr / (1e-10 + |m|)``. A transformation of its
  own, so it drops into ``optax.chain`` beside any hypergradient.
  """
  _checks.unit_interval("momentum", momentum)
  _checks.positive("eps", eps)
  return optax.chain(
    optax.ema(momentum, debias=False),
    optax.normalize_by_update_norm(eps=eps),
    optax.scale_by_learning_rate(learning_rate),
  )


class BORepState(NamedTuple):
  """BO-REP's iterates besides x."""

  count: jax.Array  # outer steps taken (int32)
  y: Any  # the lower-level variable
  z: Any  # the linear-system iterate, ~ (d2_yy g)^-1 grad_y f
  x_state: optax.OptState  # normalized_momentum's state


class BORep(NamedTuple):
  """``init(inner_fn, x, y) -> BORepState``; ``step(outer_fn, inner_fn, x, state) -> (x, state)``."""

  init: Callable[[ObjectiveFn, Any, Any], BORepState]
  step: Callable[[ObjectiveFn, ObjectiveFn, Any, BORepState], tuple[Any, BORepState]]


def bo_rep(
  learning_rate: optax.ScalarOrSchedule,
  *,
  inner_learning_rate: Any,
  z_learning_rate: Any,
  momentum: float = 0.9,
  period: int = 2,
  inner_steps: int = 10,
  init_steps: int = 100,
  z_radius: Any = None,
  eps: float = 1e-10,
) -> BORep:
  r"""BO-REP (Hao, Gong and Liu, ICLR 2024) as a pure ``(init, step)`` pair.

  ``init(inner_fn, x0, y0)``: the *initialization refinement*, ``init_steps``
  gradient steps on ``g(x0, .)`` from ``y0``; z = 0, momentum 0. Each
  ``step(outer_fn, inner_fn, x_t, state)``:

  1. *periodic update*: if ``t % period == 0``, ``inner_steps`` gradient steps
     ``y <- y - inner_learning_rate grad_y g(x_t, y)`` (else y is kept);
  2. ``z <- z - z_learning_rate (d2_yy g(x_t, y) z - grad_y f(x_t, y))``, one
     step on the quadratic whose minimizer is v; projected onto
     ``|z| <= z_radius`` if given;
  3. ``h = grad_x f(x_t, y) - d2_xy g(x_t, y) z`` (with the new z);
  4. x by :func:`normalized_momentum`: ``m <- momentum m + (1 - momentum) h``,
     ``x <- x - learning_rate m / (|m| + eps)``.

  One Hessian-vector product and one cross product per step, plus the inner
  gradient steps every ``period``-th step. ``outer_fn`` and ``inner_fn`` are
  given to each call, so a caller binds the step's minibatch into them (inside
  its jitted step); the inner steps of one periodic update all use the
  ``inner_fn`` of that call.

  Why a pair and not an ``optax.GradientTransformation``: BO-REP owns y and z,
  iterates whose updates are not functions of x's gradient, so it cannot be
  an update of x's gradient; its state is a NamedTuple all the same (``jit``,
  ``vmap`` over seeds, checkpoints work on it), and its x update is the optax
  chain :func:`normalized_momentum`, usable with any hypergradient.

  Official code read: ``MingruiLiu-ML-Lab/Bilevel-Optimization-under-Unbounded-Smoothness``
  (``data_cleaning/bo_rep.py`` ``Learner.forward`` / ``hypergradient``,
  ``data_cleaning/main.py``; ``hyperparam_opt/bo_rep.py``; ``meta_learning/bo_rep.py``).
  Its defaults there: ``beta = 0.9``, ``nu = 1e-2``, ``y_warm_start = 10``,
  ``interval = 2``, outer and inner learning rates ``5e-2`` (hyper-cleaning).
  Deviations:

  * Initialization refinement: the official scripts have none beyond the
    periodic update at step 0 (the README and abstract name the technique
    without its subroutine, and the paper's text was not in the stored
    corpus); here it is ``init_steps`` plain gradient steps at ``x0``.
  * Periodic update: ``data_cleaning/bo_rep.py`` takes one SGD step with the
    gradient of the batch used for the Hessian product, then ``y_warm_start``
    more without zeroing the gradients in between (torch accumulates them), so
    each step follows the running sum of the gradients; here each of the
    ``inner_steps`` steps uses its own fresh gradient.
  * Order: ``data_cleaning/bo_rep.py`` evaluates the Hessian product for z at
    y before the periodic update and ``grad_y f`` and the cross term after;
    here all three are at the updated y, as in ``hyperparam_opt/bo_rep.py``.
  * z starts at 0 (the official code: Xavier-uniform random); the projection
    onto ``|z| <= z_radius`` is an option the official code does not use.
  * The official step sizes decay by 0.2 per epoch (``StepLR``); pass an optax
    schedule as ``learning_rate`` for that. Its inner loss has ``1e-4 |w|``
    (a norm, not squared): the problem is the caller's here.
  * Deterministic oracles unless the caller binds minibatches (the paper and
    code are stochastic, with separate batches for each oracle).

  Args:
    learning_rate: eta, the length of every x step (or an optax schedule).
    inner_learning_rate: gamma, the inner gradient step.
    z_learning_rate: nu, the step of z (below ``2 / L``, L the inner Hessian's
      top eigenvalue).
    momentum: beta in ``[0, 1)``.
    period: I >= 1, outer steps between periodic updates of y.
    inner_steps: N >= 0, gradient steps per periodic update.
    init_steps: gradient steps of the initialization refinement (>= 0).
    z_radius: the radius of z's projection ball (None: no projection).
    eps: added to ``|m|`` before dividing.

  Returns:
    :class:`BORep` ``(init, step)``.
  """
  _checks.positive("inner_learning_rate", inner_learning_rate)
  _checks.positive("z_learning_rate", z_learning_rate)
  period = _checks.integer("period", period, minimum=1)
  inner_steps = _checks.integer("inner_steps", inner_steps, minimum=0)
  init_steps = _checks.integer("init_steps", init_steps, minimum=0)
  if z_radius is not None:
    _checks.positive("z_radius", z_radius)
  if not callable(learning_rate):
    _checks.positive("learning_rate", learning_rate)
  x_opt = normalized_momentum(learning_rate, momentum, eps=eps)

  def init(inner_fn: ObjectiveFn, x: Any, y: Any) -> BORepState:
    _check_tree("x", x)
    _check_tree("y", y)
    _check_scalar_fn("inner_fn", inner_fn, x, y)
    y = inner_descent(inner_fn, x, y, num_steps=init_steps, learning_rate=inner_learning_rate)
    return BORepState(jnp.zeros([], jnp.int32), y, optax.tree.zeros_like(y), x_opt.init(x))

  def step(
    outer_fn: ObjectiveFn, inner_fn: ObjectiveFn, x: Any, state: BORepState
  ) -> tuple[Any, BORepState]:
    _check_problem(outer_fn, inner_fn, x, state.y)
    y = jax.lax.cond(
      state.count % period == 0,
      lambda yy: inner_descent(
        inner_fn, x, yy, num_steps=inner_steps, learning_rate=inner_learning_rate
      ),
      lambda yy: yy,
      state.y,
    )
    fx, fy = jax.grad(outer_fn, argnums=(0, 1))(x, y)
    hz = hvp(lambda yy, _: inner_fn(x, yy), y, None, state.z)
    z = optax.tree.add_scale(state.z, -z_learning_rate, optax.tree.sub(hz, fy))
    if z_radius is not None:
      norm = optax.tree.norm(z)
      z = optax.tree.scale(jnp.minimum(1.0, z_radius / jnp.maximum(norm, 1e-30)), z)
    _, cross_vjp = jax.vjp(lambda xx: jax.grad(inner_fn, argnums=1)(xx, y), x)
    h = optax.tree.sub(fx, cross_vjp(z)[0])
    updates, x_state = x_opt.update(h, state.x_state, x)
    return optax.apply_updates(x, updates), BORepState(state.count + 1, y, z, x_state)

  return BORep(init, step)
