"""One pure update, and the jitted, data-parallel train step built on it.

``make_update(loss_fn, optimizer)`` returns the pure
``update(state, batch, key) -> (state, metrics)`` that every loop in gradlab
runs: ``make_train_step`` jits it over ``mesh`` with the batch split along
the data axis and the state replicated (XLA inserts the all-reduce of the
gradient; nothing home-made sits in between), and ``train_curves`` scans it
over steps and vmaps it over seeds.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from gradlab import _checks
from gradlab import sharding as sharding_lib
from gradlab.train.state import TrainState

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]]
# extra_args_fn(params, batch, key, grad_fn) -> extra keyword arguments for
# the optimizer's update, where grad_fn(other_params) is the gradient of the
# same loss on the same batch and key at other parameters (what STORM, MARS
# and SVRG need).
ExtraArgsFn = Callable[[Any, Any, jax.Array, Callable[[Any], Any]], Mapping[str, Any]]
UpdateFn = Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]


def _split_microbatches(
  batch: Any, num_microbatches: int, mesh: Mesh | None, data_axis: str
) -> Any:
  """[B, ...] -> [M, B / M, ...], microbatch i holding rows i, i + M, ...

  Strided rows keep each microbatch spread evenly over the devices, so the
  split moves no data between them.
  """

  def split(x):
    x = x.reshape(x.shape[0] // num_microbatches, num_microbatches, *x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, P(None, data_axis)))
    return x

  return jax.tree.map(split, batch)


def make_value_and_grad(
  loss_fn: LossFn,
  *,
  num_microbatches: int = 1,
  mesh: Mesh | None = None,
  data_axis: str = sharding_lib.DATA_AXIS,
):
  """``(params, batch, key) -> ((loss, aux), grads)``, averaged over microbatches.

  With ``num_microbatches = M > 1`` the batch is cut into M equal
  microbatches, processed one after the other by ``lax.scan`` (so only one
  microbatch's activations are alive at a time), microbatch ``i`` drawing
  ``fold_in(key, i)``; loss, aux and gradient are the microbatch means, which
  equal the full-batch means for a loss that is a mean over examples.
  """
  vg = jax.value_and_grad(loss_fn, has_aux=True)
  if num_microbatches == 1:
    return vg

  def accumulated(params, batch, key):
    micro = _split_microbatches(batch, num_microbatches, mesh, data_axis)

    def body(carry, xs):
      i, mb = xs
      out = vg(params, mb, jax.random.fold_in(key, i))
      return jax.tree.map(jnp.add, carry, out), None

    zeros = jax.tree.map(
      jnp.zeros_like, jax.eval_shape(vg, params, jax.tree.map(lambda x: x[0], micro), key)
    )
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), micro))
    return jax.tree.map(lambda t: t / num_microbatches, total)

  return accumulated


def _make_objective(
  loss_fn: LossFn,
  *,
  num_microbatches: int = 1,
  mesh: Mesh | None = None,
  data_axis: str = sharding_lib.DATA_AXIS,
) -> Callable[[Any, Any, jax.Array], jax.Array]:
  """``(params, batch, key) -> loss``: the scalar loss :func:`make_value_and_grad` averages.

  What :func:`make_update` hands the optimizer as ``obj_fn`` (curvature-using
  optimizers differentiate it twice: ``optax.contrib.sophia``'s Hutchinson
  estimator takes ``jvp(grad(obj_fn))``). With ``num_microbatches = M > 1``
  it is the mean of the M microbatch losses (microbatch ``i`` drawing
  ``fold_in(key, i)``, the same split and keys as the gradient), scanned
  with each microbatch's loss under ``jax.checkpoint``, so differentiating
  it keeps one microbatch's activations alive at a time, not the batch's.
  """
  loss = lambda p, b, k: loss_fn(p, b, k)[0]  # noqa: E731
  if num_microbatches == 1:
    return loss
  checkpointed = jax.checkpoint(loss)

  def objective(params, batch, key):
    micro = _split_microbatches(batch, num_microbatches, mesh, data_axis)

    def body(total, xs):
      i, mb = xs
      return total + checkpointed(params, mb, jax.random.fold_in(key, i)), None

    first = jax.tree.map(lambda x: x[0], micro)
    zero = jnp.zeros((), jax.eval_shape(loss, params, first, key).dtype)
    total, _ = jax.lax.scan(body, zero, (jnp.arange(num_microbatches), micro))
    return total / num_microbatches

  return objective


def _scalar_metrics(aux: Any) -> dict[str, jax.Array]:
  if aux is None:
    return {}
  if not isinstance(aux, Mapping):
    aux = {"aux": aux}
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(aux):
    if jnp.ndim(leaf) == 0:
      out[jax.tree_util.keystr(path, simple=True, separator="/")] = leaf
  return out


def make_update(
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  *,
  num_microbatches: int = 1,
  mesh: Mesh | None = None,
  data_axis: str = sharding_lib.DATA_AXIS,
  extra_args_fn: ExtraArgsFn | None = None,
  value_and_grad_fn: Callable | None = None,
  norm_metrics: bool = True,
) -> UpdateFn:
  """The pure update ``update(state, batch, key) -> (state, metrics)``.

  Not jitted: :func:`make_train_step` jits and shards it, ``train_curves``
  scans and vmaps it, and a user's own loop may do either. The arguments are
  :func:`make_train_step`'s; ``key`` is the loss's and the optimizer's
  randomness for this step.
  """
  num_microbatches = _checks.integer("num_microbatches", num_microbatches, minimum=1)
  tx = optax.with_extra_args_support(optimizer)
  if value_and_grad_fn is not None:
    if num_microbatches != 1:
      raise ValueError("value_and_grad_fn: cannot be combined with num_microbatches > 1")
    value_and_grad = value_and_grad_fn
  else:
    value_and_grad = make_value_and_grad(
      loss_fn, num_microbatches=num_microbatches, mesh=mesh, data_axis=data_axis
    )
  # obj_fn is loss_fn's own loss even where value_and_grad_fn replaces the
  # gradient (a zeroth-order estimate, say): it is differentiated, not estimated.
  objective = _make_objective(
    loss_fn, num_microbatches=num_microbatches, mesh=mesh, data_axis=data_axis
  )

  def update(state: TrainState, batch: Any, key: jax.Array):
    (loss, aux), grads = value_and_grad(state.params, batch, key)
    grad_fn = lambda p: value_and_grad(p, batch, key)[1]  # noqa: E731

    # optax's line searches hand value_fn each extra argument its signature
    # names and refuse the others: naming obj_fn here lets them take (and
    # ignore) it beside the optimizers that consume it.
    def value_fn(p, obj_fn=None):
      del obj_fn
      return value_and_grad(p, batch, key)[0][0]

    extra = {
      "value": loss,
      "grad": grads,
      "value_fn": value_fn,
      "obj_fn": lambda p: objective(p, batch, key),
    }
    if extra_args_fn is not None:
      extra.update(extra_args_fn(state.params, batch, key, grad_fn))
    updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **_scalar_metrics(aux)}
    if norm_metrics:
      grad_norm, update_norm = optax.tree.norm(grads), optax.tree.norm(updates)
      metrics.update(
        grad_norm=grad_norm,
        update_norm=update_norm,
        param_norm=optax.tree.norm(params),
        update_grad_ratio=update_norm / grad_norm,
      )
    return TrainState(state.step + 1, params, opt_state, state.key), metrics

  return update


def make_train_step(
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  *,
  mesh: Mesh | None = None,
  data_axis: str = sharding_lib.DATA_AXIS,
  num_microbatches: int = 1,
  extra_args_fn: ExtraArgsFn | None = None,
  donate: bool = True,
  norm_metrics: bool = True,
  value_and_grad_fn: Callable | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
  """Builds the jitted train step: :func:`make_update` at the state's step key.

  Args:
    loss_fn: pure ``loss_fn(params, batch, key) -> (loss, aux)``, the loss a
      scalar mean over the batch and ``aux`` a (possibly empty) dict whose
      scalar entries are reported as metrics.
    optimizer: any optax transformation. Its ``update`` receives the keyword
      arguments ``value`` (the loss), ``grad`` (the gradient), ``value_fn``
      (``params -> loss`` on the same batch and key, as optax's line searches
      expect), ``obj_fn`` (``params -> loss`` of ``loss_fn`` on the same
      batch, key and microbatches, twice differentiable: what
      ``optax.contrib.sophia``'s Hessian estimator and
      ``gradlab.transforms.adahessian`` differentiate; with microbatches,
      the mean of their losses, each under ``jax.checkpoint``), plus
      whatever ``extra_args_fn`` returns; plain ``GradientTransformation``s
      ignore them.
    mesh: the device mesh; ``None`` jits without sharding annotations.
    data_axis: the mesh axis the batch is split along.
    num_microbatches: gradient accumulation: the batch is processed in this
      many sequential microbatches and their gradients averaged.
    extra_args_fn: ``(params, batch, key, grad_fn) -> dict`` of further extra
      arguments for the optimizer, where ``grad_fn(other_params)`` is the
      gradient on the same batch and key at other parameters.
      ``gradlab.transforms.grad_fn_extra_args`` passes it on as ``grad_fn``
      for STORM, exact MARS and SVRG; ``gradlab.transforms.half_batch_grads``
      gives AGVM its two half-batch gradients. (``grad_fn`` is not passed by
      default: optax's line searches refuse extra arguments they do not
      consume.)
    donate: donate the input state's buffers to the output.
    value_and_grad_fn: replaces ``jax.value_and_grad(loss_fn)``: any
      ``(params, batch, key) -> ((loss, aux), grads)``, e.g. the noise-scale
      measuring one of ``gradlab.gradstats`` or a zeroth-order estimate from
      ``gradlab.zeroth_order``. Excludes ``num_microbatches > 1``.
    norm_metrics: also report ``grad_norm``, ``update_norm``, ``param_norm``
      and ``update_grad_ratio``. Each norm is one more pass over a
      parameter-sized tree; on a memory-bound step (a wide MLP on a CPU) the
      three cost several percent, on a GPU ~25%.

  Returns:
    ``step(state, batch) -> (new_state, metrics)`` where ``metrics`` holds
    ``loss``, the scalar entries of ``aux`` and (with ``norm_metrics``)
    ``grad_norm``, ``update_norm``, ``param_norm`` and ``update_grad_ratio``.
    ``step`` refuses (with a ``ValueError``) a batch whose leading axis cannot
    be split over the devices and microbatches. ``step.lean`` is the same
    update without the norm metrics, which ``fit`` runs on the steps it does
    not log.
  """
  kwargs = dict(
    num_microbatches=num_microbatches,
    mesh=mesh,
    data_axis=data_axis,
    extra_args_fn=extra_args_fn,
    value_and_grad_fn=value_and_grad_fn,
  )
  updates = {
    with_norms: make_update(loss_fn, optimizer, norm_metrics=with_norms, **kwargs)
    for with_norms in {norm_metrics, False}
  }

  def step(state: TrainState, batch: Any, *, with_norms: bool):
    return updates[with_norms](state, batch, state.step_key())

  donate_argnums = (0,) if donate else ()
  if mesh is None:
    jit_kwargs = {}
    num_shards = 1
  else:
    rep = sharding_lib.replicated(mesh)
    jit_kwargs = dict(
      in_shardings=(rep, sharding_lib.data_sharding(mesh, data_axis)), out_shardings=(rep, rep)
    )
    num_shards = mesh.shape[data_axis]
  jitted = jax.jit(
    functools.partial(step, with_norms=norm_metrics), donate_argnums=donate_argnums, **jit_kwargs
  )
  jitted_lean = (
    jax.jit(functools.partial(step, with_norms=False), donate_argnums=donate_argnums, **jit_kwargs)
    if norm_metrics
    else jitted
  )
  divisor = num_shards * num_microbatches
  checked: set = set()

  def check(batch: Any) -> None:
    sig = tuple(getattr(x, "shape", None) for x in jax.tree.leaves(batch))
    if sig not in checked:
      sharding_lib.check_shardable(batch, divisor, name="batch")
      checked.add(sig)

  def train_step(state: TrainState, batch: Any):
    check(batch)
    return jitted(state, batch)

  def lean(state: TrainState, batch: Any):
    check(batch)
    return jitted_lean(state, batch)

  # ``fit`` runs ``lean`` (the same update, without the norm metrics) on the
  # steps whose metrics it does not log: on a GPU the three norms' reductions
  # cost ~25% of a sub-millisecond step. Both compute identical updates.
  train_step.lean = lean
  train_step.jitted = jitted  # for lowering and cost analysis
  return train_step
