"""Curvature over a whole dataset: micro-batched sums, streams, and the dataset products.

**The sum.** Every dataset-level quantity in ``gradlab.curvature`` (the
products below, the Kronecker factors of K-FAC) is a sum over micro-batches
of a function of one micro-batch. :func:`accumulate` is that sum, for the two
forms data comes in:

* **Stacked arrays** (a pytree whose leaves share a leading example axis N):
  the full micro-batches are scanned with ``lax.scan`` and the remainder (if
  ``micro_batch`` does not divide N) is one more call of its own size, so the
  sum is exact and a program's temporaries hold one micro-batch at a time,
  whatever N is. Works under ``jit``, ``vmap`` and sharding.
* **A stream** (:class:`Batches`, from :func:`batches`): for data that does
  not fit in device memory. Each pass asks for a fresh iterator of batches
  (pytrees of stacked arrays, e.g. numpy arrays read from disk) and sums the
  jitted function over them in a Python loop, so only one batch is on the
  device at a time. A stream runs from Python: it cannot be traced (under
  ``jit`` its batches would become constants of the program), and says so in
  one line if it is.

The function summed is called as ``fn(batch, offset, *args)``: ``offset`` is
the index of the batch's first example in the dataset (a traced integer), so
per-example randomness can be keyed by ``fold_in(key, offset + i)`` and be the
same for every micro-batch size.

**The products.** For the mean loss over N examples,
``L(θ) = (1/N) sum_n l_n(θ)``, each ``dataset_*`` function returns a matvec
``v -> A v`` over params-shaped pytrees, the full-batch product of
:mod:`gradlab.curvature.products` computed micro-batch by micro-batch:
``A v = sum_b (|b| / N) A_b v``, with ``A_b`` the one-batch product of the
mean over micro-batch b (the remainder batch weighted by its own size). It
equals the full-batch product up to float rounding, for any ``micro_batch``
and any split of a stream.

* :func:`dataset_hvp`: ``H v``, ``H = ∇²L``, forward-over-reverse
  (``jvp(grad)``) per micro-batch. Unlike ``make_hvp`` nothing is linearized
  once: each product re-runs a forward and a reverse pass over the data (a
  linearization stores O(N) residuals, which is what the micro-batches
  avoid), so one product costs one ``hvp`` of the whole dataset.
* :func:`dataset_ggn_vp`: ``G v = (1/N) sum_n J_n^T H_l J_n v`` for a loss
  written as ``l(model(params))`` (``products.ggn_vp``'s conventions).
* :func:`dataset_empirical_fisher_vp`: ``(1/N) sum_n g_n (g_n^T v)`` with
  ``g_n`` the per-example gradients (``per_example_loss_fn -> [B]``).
* :func:`dataset_fisher_vp`: the Monte Carlo (true) Fisher
  ``(1/N) sum_n (1/S) sum_s g~_ns (g~_ns^T v)``, ``g~_ns`` the gradient of
  example n's loss at a label sampled from the model (``products.fisher_vp``).
  Example n's key in draw s is ``fold_in(fold_in(key, n), s)`` with n its index
  in the whole dataset, so the product does not depend on ``micro_batch`` or
  on how a stream is split. The same key gives the same draws at every
  product: the matvec is one fixed symmetric PSD matrix, as estimators need.

**Memory.** A compiled product holds the temporaries of one micro-batch: its
``temp_size_in_bytes`` does not grow with N at a fixed ``micro_batch`` (the
tests compile both at N = 1k and 32k), while a full-batch product's grows
linearly. Pick the largest ``micro_batch`` that fits: the time per product
is nearly the same for any size that fills the device.

**Estimators.** With stacked data the matvec is an ordinary JAX function:
``trace``, ``diagonal``, ``hutch_plus_plus``, ``top_eigenvalues`` and
``spectral_density`` trace it inside their ``lax.map`` / ``fori_loop`` and
return what they return for the full-batch ``make_hvp`` (the
``hessian_*`` conveniences take ``micro_batch=`` for this). A stream's matvec
carries the attribute ``from_python = True``; those estimators check it and
run the same loop bodies as Python loops, one product (one pass over the
stream) at a time, so ``probe_batch`` does not apply to it. ``power_iteration``
(a ``lax.while_loop`` inside optax) refuses it. A function wrapping such a
matvec (damping, a scale) sets the same attribute to keep this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.curvature.products import (
  empirical_fisher_vp,
  fisher_vp_at_offset,
  ggn_vp,
  hvp,
  make_hvp,
)

Matvec = Callable[[Any], Any]


class Batches(NamedTuple):
  """A stream of batches: ``make()`` returns a fresh iterator over the dataset's batches.

  Build one with :func:`batches` from a re-iterable (a list, a tuple) or from
  a zero-argument function returning an iterator (e.g. a generator function
  that reads shards from disk); a one-shot iterator is refused, since the
  dataset products need one pass per product.
  """

  make: Callable[[], Iterator[Any]]


def batches(source: Iterable[Any] | Callable[[], Iterable[Any]]) -> Batches:
  """A :class:`Batches` stream from a re-iterable or a function returning an iterable."""
  if isinstance(source, Batches):
    return source
  if callable(source) and not hasattr(source, "__iter__"):
    return Batches(lambda: iter(source()))
  if not hasattr(source, "__iter__"):
    raise ValueError(
      f"batches: expected a re-iterable of batches or a function returning one, got "
      f"{type(source).__name__}"
    )
  if iter(source) is source:
    raise ValueError(
      "batches: expected a re-iterable (a list, or a function returning a fresh iterator), got a "
      "one-shot iterator: dataset products read the data once per product"
    )
  return Batches(lambda: iter(source))


def is_stream(data: Any) -> bool:
  return isinstance(data, Batches)


def num_examples(name: str, data: Any) -> int:
  """The common leading size of a pytree of stacked arrays; one-line errors otherwise."""
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise ValueError(f"{name}: expected a pytree of stacked examples, got no arrays")
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if None in sizes or len(sizes) != 1:
    raise ValueError(f"{name}: expected leaves with one common leading axis, got sizes {sizes}")
  n = sizes.pop()
  if n == 0:
    raise ValueError(f"{name}: the set is empty (leading axis 0)")
  return n


def check_micro_batch(micro_batch: int | None, n: int) -> int:
  """``micro_batch`` as an int in ``[1, n]`` (``None``: all ``n`` at once)."""
  if micro_batch is None:
    return n
  return min(_checks.integer("micro_batch", micro_batch, minimum=1), n)


def _tree_add(a: Any, b: Any) -> Any:
  return jax.tree.map(jnp.add, a, b)


def _not_traced(name: str, args: tuple) -> None:
  if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args)):
    raise ValueError(
      f"{name}: a stream of batches (curvature.batches) runs from Python and cannot be traced "
      "(call it outside jit, or give the data as stacked arrays)"
    )


def accumulate(
  fn: Callable[..., Any],
  data: Any,
  *args: Any,
  micro_batch: int | None = None,
  name: str = "data",
) -> tuple[Any, Any]:
  """``(sum over micro-batches of fn(batch, offset, *args), number of examples)``.

  Args:
    fn: ``(batch, offset, *args) -> pytree`` of one micro-batch (a pytree of
      stacked arrays with a leading axis of that batch's size), summed over
      the dataset. ``offset`` is the index of the batch's first example.
    data: stacked arrays, or a :class:`Batches` stream (see the module
      docstring).
    *args: passed to ``fn`` (for a stream, as arguments of its jitted call,
      so a new vector does not recompile).
    micro_batch: examples per call for stacked arrays (default all at once);
      ignored for a stream, whose batches are taken as they come.
    name: the data argument's name in error messages.

  Returns:
    The summed pytree and the number of examples (an int for stacked arrays,
    a Python int counted from the stream's batches).
  """
  if is_stream(data):
    _not_traced(name, args)
    step = jax.jit(fn)
    total, count = None, 0
    for batch in data.make():
      b = num_examples(f"{name} (a batch of the stream)", batch)
      out = step(batch, jnp.asarray(count), *args)
      total = out if total is None else _tree_add(total, out)
      count += b
    if total is None:
      raise ValueError(f"{name}: the stream of batches is empty")
    return total, count
  n = num_examples(name, data)
  mb = check_micro_batch(micro_batch, n)
  full, rest = divmod(n, mb)
  head = jax.tree.map(lambda x: x[: full * mb].reshape(full, mb, *x.shape[1:]), data)
  first = jax.tree.map(lambda x: x[0], head)
  if full == 1:
    total = fn(first, jnp.asarray(0), *args)
  else:

    def body(acc, xs):
      i, batch = xs
      return _tree_add(acc, fn(batch, i * mb, *args)), None

    shapes = jax.eval_shape(fn, first, jnp.asarray(0), *args)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(full), head))
  if rest:
    tail = jax.tree.map(lambda x: x[full * mb :], data)
    total = _tree_add(total, fn(tail, jnp.asarray(full * mb), *args))
  return total, n


def from_python(matvec: Matvec) -> bool:
  """Whether ``matvec`` runs from Python on concrete vectors only (a stream's product)."""
  return bool(getattr(matvec, "from_python", False))


def python_map(f: Callable[[Any], Any], xs: Any) -> Any:
  """``lax.map(f, xs)`` as a Python loop, for bodies that call a ``from_python`` matvec."""
  n = jax.tree.leaves(xs)[0].shape[0]
  # an array index: one eager op for every i, not one compiled per i
  outs = [f(jax.tree.map(lambda x: x[i], xs)) for i in map(jnp.asarray, range(n))]
  return jax.tree.map(lambda *ys: jnp.stack(ys), *outs)


def _check_data(name: str, data: Any) -> None:
  if isinstance(data, Iterator):
    raise ValueError(
      f"{name}: expected stacked arrays or a curvature.batches stream, got a one-shot iterator "
      f"({type(data).__name__}); a product reads the data once per product: give batches() a list "
      "or a function returning a fresh iterator"
    )


def _dataset_product(
  product: Callable[..., Any],
  data: Any,
  like: Any,
  args: tuple,
  micro_batch: int | None,
  name: str = "data",
) -> Matvec:
  """``v -> sum_b (|b| / N) product(b, offset_b, *args, v)`` over the micro-batches b of ``data``."""
  if micro_batch is not None:
    _checks.integer("micro_batch", micro_batch, minimum=1)
  _check_data(name, data)

  def weighted(batch, offset, *args):  # |b| times the product of b's mean loss
    b = num_examples(name, batch)
    return jax.tree.map(lambda x: x * b, product(batch, offset, *args))

  if is_stream(data):

    def streamed(v):
      total, n = accumulate(weighted, data, *args, v, name=name)
      return jax.tree.map(lambda x: x / n, total)

    streamed.from_python = True
    return streamed
  n = num_examples(name, data)
  mb = check_micro_batch(micro_batch, n)
  micro = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct((mb, *jnp.shape(x)[1:]), jax.dtypes.canonicalize_dtype(x.dtype)),
    data,
  )
  jax.eval_shape(weighted, micro, jnp.asarray(0), *args, like)  # bad losses fail here, not later

  def matvec(v):
    total, _ = accumulate(weighted, data, *args, v, micro_batch=mb, name=name)
    return jax.tree.map(lambda x: x / n, total)

  return matvec


def dataset_hvp(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  data: Any,
  *,
  micro_batch: int | None = None,
) -> Matvec:
  """``v -> H v``, H the Hessian of the mean loss over ``data`` at ``params``.

  ``H v = sum_b (|b| / N) H_b v`` with ``H_b`` the Hessian of ``loss_fn(., b)``,
  each by ``jvp(grad)`` (see the module docstring for memory and streams).

  Args:
    loss_fn: pure ``(params, batch) -> scalar``, the mean over the batch.
    params: the point.
    data: stacked arrays (leading axis N) or a ``curvature.batches`` stream.
    micro_batch: examples per product call (default all N at once); ignored
      for a stream, whose batches are taken as they come.
  """
  return _dataset_hvp(loss_fn, params, data, micro_batch, "data")


def _dataset_hvp(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  data: Any,
  micro_batch: int | None,
  name: str,
) -> Matvec:
  product = lambda batch, offset, p, v: hvp(loss_fn, p, batch, v)
  return _dataset_product(product, data, params, (params,), micro_batch, name)


def dataset_ggn_vp(
  model_fn: Callable[[Any, Any], Any],
  output_loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  data: Any,
  *,
  micro_batch: int | None = None,
) -> Matvec:
  """``v -> G v``, the Gauss-Newton product ``(1/N) sum_n J_n^T H_l J_n v`` over ``data``.

  Args:
    model_fn: ``(params, batch) -> outputs``.
    output_loss_fn: ``(outputs, batch) -> scalar``, the mean over the batch.
    params, data, micro_batch: as :func:`dataset_hvp`.
  """
  product = lambda batch, offset, p, v: ggn_vp(model_fn, output_loss_fn, p, batch, v)
  return _dataset_product(product, data, params, (params,), micro_batch)


def dataset_empirical_fisher_vp(
  per_example_loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  data: Any,
  *,
  micro_batch: int | None = None,
) -> Matvec:
  """``v -> (1/N) sum_n g_n (g_n^T v)``, g_n the per-example gradients over ``data``.

  Args:
    per_example_loss_fn: ``(params, batch) -> [B]`` losses, one per example.
    params, data, micro_batch: as :func:`dataset_hvp`.
  """
  product = lambda batch, offset, p, v: empirical_fisher_vp(per_example_loss_fn, p, batch, v)
  return _dataset_product(product, data, params, (params,), micro_batch)


def dataset_fisher_vp(
  sampled_loss_fn: Callable[[Any, Any, jax.Array], jax.Array],
  params: Any,
  data: Any,
  key: jax.Array,
  *,
  micro_batch: int | None = None,
  num_samples: int = 1,
) -> Matvec:
  """``v -> (1/N) sum_n (1/S) sum_s g~_ns (g~_ns^T v)``: the Monte Carlo Fisher over ``data``.

  ``g~_ns`` is the gradient of example n's loss at a label it samples from the
  model with the key ``fold_in(fold_in(key, n), s)``, n its index in the
  dataset: the result is the same for every ``micro_batch`` and every split
  of a stream, and every product uses the same draws.

  Args:
    sampled_loss_fn: ``(params, batch, keys) -> [B]`` (see
      ``products.fisher_vp``; ``sampled_cross_entropy(logits_fn)`` for a
      classifier).
    params, data, micro_batch: as :func:`dataset_hvp`.
    key: PRNG key of the label draws.
    num_samples: S >= 1 draws per example.
  """
  num_samples = _checks.integer("num_samples", num_samples, minimum=1)
  _checks.is_key("key", key)

  def product(batch, offset, p, k, v):
    return fisher_vp_at_offset(sampled_loss_fn, p, batch, k, v, offset, num_samples)

  return _dataset_product(product, data, params, (params, key), micro_batch)


def hessian_matvec(
  loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any, micro_batch: int | None
) -> Matvec:
  """The ``hessian_*`` conveniences' map: ``make_hvp`` for one batch, else :func:`dataset_hvp`."""
  if micro_batch is None and not is_stream(batch):
    return make_hvp(loss_fn, params, batch)
  return _dataset_hvp(loss_fn, params, batch, micro_batch, "batch")
