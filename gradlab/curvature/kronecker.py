"""K-FAC and EK-FAC: Kronecker-factored curvature of flax models, fitted over a dataset.

References: Martens and Grosse, "Optimizing Neural Networks with
Kronecker-factored Approximate Curvature" (ICML 2015); George et al., "Fast
Approximate Natural Gradient Descent in a Kronecker-factored Eigenbasis"
(NeurIPS 2018); Grosse et al., "Studying Large Language Model Generalization
with Influence Functions" (2023; kronfluence's method); Eschenhagen et al.,
"Kronecker-Factored Approximate Curvature for Modern Neural Network
Architectures" (NeurIPS 2023: K-FAC-expand and -reduce).

The curvature is the Fisher ``F = (1/N) sum_n G_n G_n^T`` of the per-example
gradients ``G_n`` of a layer's weights (``[d_in (+1), d_out]``, the bias as the
last row): the **empirical** Fisher from ``loss_fn``'s gradients at the data's
labels, or the **true** (Monte Carlo) Fisher from ``sampled_loss_fn``'s
gradients at labels sampled from the model (kronfluence's default, and the
one that equals the GGN in expectation for exponential-family losses). It is
block-diagonal across layers. Inside a layer with per-token inputs ``a_t`` and
output gradients ``g_t`` (``gradlab.curvature.capture``), ``G_n = sum_t a_t
g_t^T`` and K-FAC approximates ``F ~ A (x) S``:

* ``approximation="expand"`` (every token a data point; the default, and
  kronfluence's): ``A = sum_{n,t} a a^T / N_tokens``, ``S = sum_{n,t} g g^T / N``
  (kronfluence divides S by N_tokens too: its S is ours times N / N_tokens).
* ``approximation="reduce"`` (one point per example): ``a_n = mean_t a_t``,
  ``g_n = sum_t g_t``, ``A = sum_n a_n a_n^T / N``, ``S = sum_n g_n g_n^T / N``.

With one token per example both are the exact ``E[a a^T] (x) E[g g^T]``
factorization. A token mask (``mask_fn``) removes padded tokens from A and its
token count (the gradients, and so S and the correction below, are the exact
ones). The eigendecompositions ``A = Q_A diag(e_A) Q_A^T``, ``S = Q_S diag(e_S)
Q_S^T`` run in float64 (NumPy, on the host) when the factors are concrete, in
the factors' dtype under ``jit``. K-FAC's eigenvalues are ``e_A e_S^T``;
**EK-FAC** replaces them by the exact second moments of the gradients in that
eigenbasis, ``Lambda = (1/N) sum_n (Q_A^T G_n Q_S)^2`` (a second pass over the
data), so that ``F ~ (Q_A (x) Q_S) diag(Lambda) (Q_A (x) Q_S)^T``. Products with
a layer's block ``V`` are ``Q_A (Lambda * (Q_A^T V Q_S)) Q_S^T`` and the damped
inverse divides by ``Lambda + damping`` instead.

Factors are a pytree (:class:`KroneckerFactors`): jit them, shard them, save
them with orbax and reuse them for any number of products.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradlab import _checks
from gradlab.curvature import capture
from gradlab.curvature.dataset import accumulate, is_stream, num_examples

FISHERS = ("empirical", "mc")
APPROXIMATIONS = ("expand", "reduce")


class Layer(NamedTuple):
  """A covered layer's place in the params pytree (static)."""

  name: str
  kind: str
  bias: bool
  d_in: int
  d_out: int
  kernel_index: int  # index of its kernel among the params' leaves
  bias_index: int  # index of its bias (-1 without one)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KroneckerFactors:
  """Fitted K-FAC / EK-FAC factors; a pytree (the arrays are its leaves).

  Per layer name: ``q_a [d_in (+1), d_in (+1)]`` and ``q_s [d_out, d_out]``
  the eigenvectors of A and S, ``e_a`` and ``e_s`` their eigenvalues, and
  ``corrected [d_in (+1), d_out]`` EK-FAC's Lambda (``None`` for K-FAC).
  """

  q_a: dict[str, jax.Array]
  q_s: dict[str, jax.Array]
  e_a: dict[str, jax.Array]
  e_s: dict[str, jax.Array]
  corrected: dict[str, jax.Array] | None
  num_examples: jax.Array
  layers: tuple[Layer, ...] = dataclasses.field(metadata=dict(static=True))
  treedef: Any = dataclasses.field(metadata=dict(static=True))
  approximation: str = dataclasses.field(metadata=dict(static=True))
  fisher: str = dataclasses.field(metadata=dict(static=True))
  shapes: tuple = dataclasses.field(metadata=dict(static=True))  # the params' leaf shapes, dtypes

  def eigenvalues(self) -> dict[str, jax.Array]:
    """``{layer: [d_in (+1), d_out]}``: EK-FAC's Lambda, or K-FAC's ``e_A e_S^T``."""
    if self.corrected is not None:
      return dict(self.corrected)
    return {l.name: jnp.outer(self.e_a[l.name], self.e_s[l.name]) for l in self.layers}

  def default_damping(self) -> dict[str, jax.Array]:
    """0.1 x the mean eigenvalue, per layer: kronfluence's heuristic (its
    ``damping_factor=None``; kronfluence 1.0.1's own default is a fixed 1e-8)."""
    return {k: 0.1 * jnp.mean(v) for k, v in self.eigenvalues().items()}

  def matvec(self, v: Any) -> Any:
    """``C v`` for ``v`` a pytree like the params (zero on parameters outside the layers)."""
    values = self.eigenvalues()
    return self._apply(v, lambda name, x: x * values[name], "v")

  def inverse(self, damping: Any = None) -> Callable[[Any], Any]:
    """``v -> (C + damping I)^-1 v`` per layer; ``damping=None`` is 0.1 x each layer's mean
    eigenvalue. Parameters outside the layers map to zero (they are left out of the
    curvature, as kronfluence leaves untracked modules out of its scores)."""
    if damping is None:
      damp = self.default_damping()
    else:
      _checks.positive("damping", damping, allow_zero=True)
      damp = {l.name: damping for l in self.layers}
    values = self.eigenvalues()
    return lambda v: self._apply(v, lambda name, x: x / (values[name] + damp[name]), "v")

  def to_dense(self) -> jax.Array:
    """``[d, d]``: the operator on ``ravel_pytree(params)``'s order (small models only)."""
    like = jax.tree.unflatten(self.treedef, [jnp.zeros(s, d) for s, d in self.shapes])
    flat, unravel = ravel_pytree(like)
    eye = jnp.eye(flat.shape[0], dtype=flat.dtype)
    return jax.vmap(lambda e: ravel_pytree(self.matvec(unravel(e)))[0])(eye)

  def _apply(self, v: Any, scale: Callable[[str, jax.Array], jax.Array], name: str) -> Any:
    try:
      leaves = self.treedef.flatten_up_to(v)
    except (ValueError, TypeError) as e:
      raise ValueError(
        f"{name}: expected a pytree like the params {self.treedef}, got {jax.tree.structure(v)}"
      ) from e
    out = [jnp.zeros_like(x) for x in leaves]
    for l in self.layers:
      k = leaves[l.kernel_index]
      x = k.reshape(l.d_in, l.d_out)
      if l.bias:
        x = jnp.concatenate([x, leaves[l.bias_index].reshape(1, l.d_out)], axis=0)
      qa, qs = self.q_a[l.name], self.q_s[l.name]
      x = x.astype(qa.dtype)
      y = qa @ scale(l.name, qa.T @ x @ qs) @ qs.T
      out[l.kernel_index] = y[: l.d_in].reshape(k.shape).astype(k.dtype)
      if l.bias:
        b = leaves[l.bias_index]
        out[l.bias_index] = y[l.d_in].reshape(b.shape).astype(b.dtype)
    return jax.tree.unflatten(self.treedef, out)


class Spec(NamedTuple):
  """Everything static about one fit (hashable: the jitted passes are cached on it)."""

  fn: Callable[..., jax.Array]
  mc: bool
  calls: tuple[capture.Call, ...]
  keep: tuple[bool, ...]  # per call: is its layer in the operator
  names: tuple[str, ...]  # the kept layers, in order
  mask_fn: Callable[[Any], jax.Array] | None
  approximation: str


def _first_example(data: Any) -> Any:
  if is_stream(data):
    batch = next(iter(data.make()), None)
    if batch is None:
      raise ValueError("data: the stream of batches is empty")
    num_examples("data (a batch of the stream)", batch)
    return jax.tree.map(lambda x: jnp.asarray(x[0]), batch)
  num_examples("data", data)
  return jax.tree.map(lambda x: x[0], data)


def key_path(path) -> tuple[str, ...]:
  out = []
  for p in path:
    for attr in ("key", "name", "idx"):
      if hasattr(p, attr):
        out.append(str(getattr(p, attr)))
        break
  return tuple(out)


def map_layers(
  params: Any, calls: tuple[capture.Call, ...], names: tuple[str, ...], uncovered: str
) -> tuple[Layer, ...]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  paths = [key_path(p) for p, _ in leaves]
  first = {c.name: c for c in reversed(calls)}
  used: set[int] = set()
  out = []
  for name in names:
    c = first[name]
    parts = tuple(name.split("/")) if name else ()
    kname = "embedding" if c.kind == "embed" else "kernel"

    def find(leaf_name, parts=parts):
      for prefix in ((), ("params",)):
        target = prefix + parts + (leaf_name,)
        if target in paths:
          return paths.index(target)
      return -1

    ki = find(kname)
    if ki < 0:
      raise ValueError(
        f"params: layer {name!r} ({c.kind}) has no {kname!r} at params{list(parts)} "
        "(or params['params']...); pass the variables the model is applied with"
      )
    if tuple(jnp.shape(leaves[ki][1])) != c.kernel_shape:
      raise ValueError(
        f"params: layer {name!r} expects a {kname} of shape {c.kernel_shape}, the params hold "
        f"{jnp.shape(leaves[ki][1])}"
      )
    bi = find("bias") if c.bias else -1
    if c.bias and bi < 0:
      raise ValueError(f"params: layer {name!r} has a bias but params hold none for it")
    used.update(i for i in (ki, bi) if i >= 0)
    out.append(Layer(name, c.kind, c.bias, c.d_in, c.d_out, ki, bi))
  rest = [i for i in range(len(leaves)) if i not in used]
  if rest and uncovered == "error":
    shown = "/".join(paths[rest[0]]) or "a bare array"
    more = f" and {len(rest) - 1} more" if len(rest) > 1 else ""
    raise ValueError(
      f"params: K-FAC covers the flax Dense, DenseGeneral, Embed and Conv layers loss_fn calls; "
      f"{shown!r}{more} is outside them (uncovered='ignore' leaves such parameters out of the "
      "curvature)"
    )
  return tuple(out)


def _masks(spec: Spec, example: Any) -> list[jax.Array | None]:
  """Per call: a ``[tokens]`` 0/1 float mask, or None (every token counts)."""
  if spec.mask_fn is None:
    return [None] * len(spec.calls)
  m = jnp.asarray(spec.mask_fn(example)).reshape(-1)
  out = []
  for c in spec.calls:
    t = capture.token_count(c)
    if m.shape[0] == t:
      out.append(m.astype(jnp.result_type(float)))
    elif t == 1:
      out.append(None)
    else:
      raise ValueError(
        f"mask_fn: expected a mask of {t} tokens for layer {c.name!r} (input {c.in_shape}), got "
        f"{m.shape[0]} entries"
      )
  return out


def _layer_rows(spec: Spec, example: Any, xs: list, gs: list) -> dict:
  """Per kept layer of one example: ``(a [T, d_in+], g [T, d_out], mask [T])``, the
  tokens of every call of a shared layer concatenated."""
  masks = _masks(spec, example)
  parts: dict[str, list] = {}
  for c, keep, x, g, m in zip(spec.calls, spec.keep, xs, gs, masks):
    if keep:
      a, g = capture.rows(c, x, g)
      m = jnp.ones(a.shape[0], a.dtype) if m is None else m.astype(a.dtype)
      parts.setdefault(c.name, []).append((a, g, m))
  return {name: tuple(jnp.concatenate(z, axis=0) for z in zip(*p)) for name, p in parts.items()}


def per_example_rows(spec: Spec, batch: Any, offset: jax.Array, params: Any, key: Any):
  """:func:`_layer_rows` of every example of a micro-batch (leading axis B), from one
  batched forward and reverse pass."""
  b = num_examples("data", batch)
  if spec.mc:
    keys = jax.vmap(lambda i: jax.random.fold_in(key, offset + i))(jnp.arange(b))
    args, axes = (params, batch, keys), (None, 0, 0)
  else:
    args, axes = (params, batch), (None, 0)
  _, xs, gs = capture.batched_layer_io(spec.fn, spec.calls, args, axes)
  return jax.vmap(lambda e, x, g: _layer_rows(spec, e, x, g))(batch, xs, gs)


def _covariances(spec: Spec, batch, offset, params, key):
  """Sums over one micro-batch: ``{layer: (A sum, S sum, A's count)}``."""
  out = {}
  for name, (a, g, w) in per_example_rows(spec, batch, offset, params, key).items():
    if spec.approximation == "expand":
      a2, g2 = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
      out[name] = (a2.T @ (a2 * w.reshape(-1, 1)), g2.T @ g2, jnp.sum(w))
    else:
      an = jnp.einsum("bt,bti->bi", w, a) / jnp.maximum(jnp.sum(w, 1, keepdims=True), 1)
      gn = jnp.sum(g, 1)
      out[name] = (an.T @ an, gn.T @ gn, jnp.asarray(a.shape[0], a.dtype))
  return out


def _corrections(spec: Spec, batch, offset, params, key, q_a, q_s):
  """``{layer: sum_n (Q_A^T G_n Q_S)^2}`` over one micro-batch, ``G_n = sum_t a_t g_t^T``."""
  out = {}
  for name, (a, g, _) in per_example_rows(spec, batch, offset, params, key).items():
    ar = a @ q_a[name].astype(a.dtype)
    gr = g @ q_s[name].astype(g.dtype)
    if a.shape[1] == 1:  # one token: (Q_A^T a)^2 (Q_S^T g)^2 summed by one matmul
      out[name] = (ar[:, 0] ** 2).T @ (gr[:, 0] ** 2)
    else:
      gn = jnp.einsum("bti,bto->bio", ar, gr)
      out[name] = jnp.sum(gn * gn, 0)
  return out


@functools.partial(jax.jit, static_argnames=("spec", "micro_batch"))
def _covariance_pass(data, params, key, *, spec, micro_batch):
  return accumulate(
    functools.partial(_covariances, spec), data, params, key, micro_batch=micro_batch
  )


@functools.partial(jax.jit, static_argnames=("spec", "micro_batch"))
def _correction_pass(data, params, key, q_a, q_s, *, spec, micro_batch):
  fn = functools.partial(_corrections, spec)
  return accumulate(fn, data, params, key, q_a, q_s, micro_batch=micro_batch)


def _eigh(name: str, total: jax.Array, count: Any) -> tuple[jax.Array, jax.Array]:
  """Eigenpairs of the factor ``total / count``: in float64 NumPy on the host when it is
  concrete (no small device programs), else in its dtype under the caller's trace."""
  v = _checks.concrete(total)
  if v is None:
    return jnp.linalg.eigh(total / jnp.maximum(count, 1))
  if not np.all(np.isfinite(v)):
    raise ValueError(
      f"data: layer {name!r}'s factor has {int(np.sum(~np.isfinite(v)))} non-finite entries "
      "(a non-finite loss, activation or gradient in the data)"
    )
  m = v.astype(np.float64) / max(float(np.asarray(count)), 1.0)
  e, q = np.linalg.eigh((m + m.T) / 2)
  return jnp.asarray(e, total.dtype), jnp.asarray(q, total.dtype)


@functools.partial(jax.jit, static_argnames=("spec",))
def gradients_two_ways(params, example, key, *, spec):
  """One example's parameter gradients (autodiff) and the captured ``{layer: sum_t a g^T}``."""
  # the fit's own capture on a batch of this one example (its key: fold_in(key, 0))
  args = (params, example, jax.random.fold_in(key, 0)) if spec.mc else (params, example)
  true = jax.tree.leaves(jax.grad(spec.fn)(*args))
  batch = jax.tree.map(lambda x: x[None], example)
  rows = per_example_rows(spec, batch, jnp.asarray(0), params, key)
  return true, {name: a[0].T @ g[0] for name, (a, g, _) in rows.items()}


def check_capture(
  spec: Spec,
  layers: tuple[Layer, ...],
  params: Any,
  example: Any,
  key,
  consequence: str = "K-FAC would approximate the wrong matrix",
) -> None:
  """The captured ``sum_t a g^T`` must be each layer's gradient on one example: a parameter
  used outside its layer's call (an L2 term in the loss, tied weights read directly, a
  lifted transform) would make it differ, and the factors would be the wrong matrix
  (``consequence`` says what goes wrong, for the error message)."""
  true, recon = gradients_two_ways(params, example, key, spec=spec)
  for l in layers:
    parts = [np.asarray(true[l.kernel_index]).reshape(l.d_in, l.d_out)]
    if l.bias:
      parts.append(np.asarray(true[l.bias_index]).reshape(1, l.d_out))
    t = np.concatenate(parts, 0)
    r = np.asarray(recon[l.name])
    tol = 10 * np.sqrt(np.finfo(r.dtype).eps) * (np.abs(t).max() + np.finfo(r.dtype).tiny)
    if np.abs(r - t).max() > tol:
      raise ValueError(
        f"loss_fn: layer {l.name!r}'s parameters get gradient from outside its calls (an L2 "
        f"term, a weight used directly or tied, a lifted transform); {consequence}"
      )


def _fit(
  loss_fn, params, data, *, micro_batch, fisher, sampled_loss_fn, key, approximation, mask_fn,
  layers, uncovered, correct,
) -> KroneckerFactors:  # fmt: skip
  _checks.one_of("fisher", fisher, FISHERS)
  _checks.one_of("approximation", approximation, APPROXIMATIONS)
  _checks.one_of("uncovered", uncovered, ("error", "ignore"))
  if micro_batch is not None:
    _checks.integer("micro_batch", micro_batch, minimum=1)
  mc = fisher == "mc"
  if mc:
    if sampled_loss_fn is None or not callable(sampled_loss_fn):
      raise ValueError(
        "sampled_loss_fn: fisher='mc' needs a function (params, example, key) -> scalar, the "
        "loss at a label sampled from the model"
      )
    _checks.is_key("key", key)
  example = _first_example(data)
  fn = sampled_loss_fn if mc else loss_fn
  args = (params, example, key) if mc else (params, example)
  try:
    out = jax.eval_shape(fn, *args)
  except Exception as e:  # noqa: BLE001 - report the caller's mistake in one line
    raise ValueError(
      f"loss_fn: calling it on one example failed: {type(e).__name__}: {e}".split("\n")[0]
    ) from e
  if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
    which = "sampled_loss_fn" if mc else "loss_fn"
    raise ValueError(
      f"{which}: expected a real scalar per example, got {getattr(out, 'shape', type(out).__name__)}"
    )
  calls = capture.discover(fn, *args)
  if not calls:
    raise ValueError(
      "loss_fn: no flax.linen Dense, DenseGeneral, Embed or Conv call was seen; K-FAC captures "
      "those layers (gradlab.curvature.capture)"
    )
  capture.check_shapes(calls)
  found = tuple(dict.fromkeys(c.name for c in calls))
  if layers is None:
    names = found
  else:
    names = tuple(layers) if not isinstance(layers, str) else (layers,)
    missing = [n for n in names if n not in found]
    if missing:
      raise ValueError(
        f"layers: {missing[0]!r} is not a covered layer; loss_fn calls {list(found)}"
      )
    names = tuple(n for n in found if n in names)
  if mask_fn is not None and not callable(mask_fn):
    raise ValueError(f"mask_fn: expected a function example -> [tokens] mask, got {mask_fn!r}")
  spec = Spec(fn, mc, calls, tuple(c.name in names for c in calls), names, mask_fn, approximation)
  mapped = map_layers(params, calls, names, uncovered)
  jax.eval_shape(lambda e: _masks(spec, e), example)
  if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((params, example, key))):
    check_capture(spec, mapped, params, example, key)

  def run(pass_fn, *extra):
    if is_stream(data):
      return accumulate(functools.partial(pass_fn, spec), data, params, key, *extra)
    jitted = _covariance_pass if pass_fn is _covariances else _correction_pass
    return jitted(data, params, key, *extra, spec=spec, micro_batch=micro_batch)

  sums, n = run(_covariances)
  q_a, q_s, e_a, e_s = {}, {}, {}, {}
  for name in names:
    a_sum, s_sum, count = sums[name]
    e_a[name], q_a[name] = _eigh(name, a_sum, count if approximation == "expand" else n)
    e_s[name], q_s[name] = _eigh(name, s_sum, n)
  corrected = None
  if correct:
    lam, _ = run(_corrections, q_a, q_s)
    corrected = {}
    for name in names:
      c = _checks.concrete(lam[name])
      if c is None:
        corrected[name] = lam[name] / n
        continue
      if not np.all(np.isfinite(c)):
        raise ValueError(f"data: layer {name!r}'s corrected eigenvalues are not finite")
      corrected[name] = jnp.asarray(c / n, lam[name].dtype)
  treedef = jax.tree.structure(params)
  shapes = tuple((tuple(jnp.shape(x)), jnp.result_type(x)) for x in jax.tree.leaves(params))
  return KroneckerFactors(
    q_a, q_s, e_a, e_s, corrected, jnp.asarray(n), mapped, treedef, approximation, fisher, shapes
  )


_FIT_DOC = """

  Args:
    loss_fn: ``(params, example) -> scalar``, one example's loss (no batch axis;
      call a model that needs one on ``example[None]``). The flax.linen Dense,
      DenseGeneral, Embed and Conv layers it calls are captured
      (``gradlab.curvature.capture``).
    params: the point (any pytree; the model's variables as ``loss_fn`` takes them).
    data: stacked examples (a pytree, leading axis N), scanned ``micro_batch``
      at a time, or a ``curvature.batches`` stream.
    micro_batch: examples per step (default all at once); peak memory holds
      one micro-batch's layer inputs and output gradients.
    fisher: ``"empirical"`` (``loss_fn``'s gradients) or ``"mc"`` (the true
      Fisher: ``sampled_loss_fn(params, example, key)``, the loss at a label
      sampled from the model with ``key``; example i gets ``fold_in(key, i)``,
      so the factors do not depend on ``micro_batch``).
    approximation: ``"expand"`` or ``"reduce"`` (the module docstring).
    mask_fn: ``example -> [tokens]`` 0/1 mask; padded tokens leave A and its
      count. Applies to every layer with that many tokens per example
      (layers with one token ignore it; any other count is an error).
    layers: the layer names to keep (``"block_0/attn/query"``; default all).
    uncovered: ``"error"`` (default) refuses parameters outside the kept
      layers; ``"ignore"`` leaves them out of the curvature (products are zero
      there, and ``inverse`` maps them to zero).

  Returns:
    :class:`KroneckerFactors`. Called eagerly, the fit first checks on one
    example that the captured ``sum_t a g^T`` is each layer's gradient (so a
    weight used outside its layer's call is refused, not approximated).
  """


def kfac(
  loss_fn: Callable[..., jax.Array],
  params: Any,
  data: Any,
  *,
  micro_batch: int | None = None,
  fisher: str = "empirical",
  sampled_loss_fn: Callable[..., jax.Array] | None = None,
  key: jax.Array | None = None,
  approximation: str = "expand",
  mask_fn: Callable[[Any], jax.Array] | None = None,
  layers: Any = None,
  uncovered: str = "error",
) -> KroneckerFactors:
  return _fit(
    loss_fn, params, data, micro_batch=micro_batch, fisher=fisher,
    sampled_loss_fn=sampled_loss_fn, key=key, approximation=approximation, mask_fn=mask_fn,
    layers=layers, uncovered=uncovered, correct=False,
  )  # fmt: skip


def ekfac(
  loss_fn: Callable[..., jax.Array],
  params: Any,
  data: Any,
  *,
  micro_batch: int | None = None,
  fisher: str = "empirical",
  sampled_loss_fn: Callable[..., jax.Array] | None = None,
  key: jax.Array | None = None,
  approximation: str = "expand",
  mask_fn: Callable[[Any], jax.Array] | None = None,
  layers: Any = None,
  uncovered: str = "error",
) -> KroneckerFactors:
  return _fit(
    loss_fn, params, data, micro_batch=micro_batch, fisher=fisher,
    sampled_loss_fn=sampled_loss_fn, key=key, approximation=approximation, mask_fn=mask_fn,
    layers=layers, uncovered=uncovered, correct=True,
  )  # fmt: skip


kfac.__doc__ = "K-FAC factors ``A (x) S`` per layer, fitted over ``data``." + _FIT_DOC
ekfac.__doc__ = (
  "EK-FAC factors: K-FAC's eigenbases with the corrected eigenvalues Lambda." + _FIT_DOC
)
