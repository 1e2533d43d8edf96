r"""Gradient inversion: what a shared gradient gives away about the examples behind it.

Three attacks, from the strongest assumption to the weakest:

* **Analytic, from a Dense layer with a bias** (Phong et al. 2018; Geiping et
  al. 2020, Prop. 3.1). For ``y = x K + b`` (flax's ``[in, out]`` kernel) and
  one example, ``dL/dK[:, j] = x \, dL/dy_j`` and ``dL/db_j = dL/dy_j``, so

  .. math:: x = \frac{\partial L / \partial K_{:, j}}{\partial L / \partial b_j}

  for every output ``j`` with ``dL/db_j \ne 0``: exact, whatever the rest of
  the network. For a batch of ``B`` examples the same ratio is the
  ``dL/dy_{ij}``-weighted mean of the inputs ``\sum_i g_{ij} x_i / \sum_i
  g_{ij}``. :func:`dense_input_from_gradient`.
* **The label, from the last layer** (iDLG, Zhao, Mopuri & Bilen 2020). With a
  softmax cross-entropy and a one-hot label ``c``, ``dL/dz_j = p_j - 1[j = c]``
  is negative only at ``j = c``; the last layer's gradient therefore has the
  sign of ``p_j - 1[j=c]`` column by column when its inputs are non-negative
  (after a ReLU or sigmoid). The official ``iDLG.py`` takes
  ``argmin(sum(dW, -1))`` of the ``[out, in]`` torch weight; the bias
  gradient ``dL/db = p - e_c`` gives it for any activation. :func:`idlg_label`.
* **Optimization** (DLG, Zhu, Liu & Han, NeurIPS 2019): draw a dummy input
  ``x'`` and dummy label logits ``y'`` from ``N(0, 1)`` and minimize the
  gradient distance

  .. math:: D(x', y') = \big\| \nabla_\theta L(\theta; x', \mathrm{softmax}(y'))
            - \nabla W \big\|_2^2

  over both (iDLG: over ``x'`` alone, the label given). The official code
  (mit-han-lab/dlg, ``main.py``) runs ``torch.optim.LBFGS([dummy_data,
  dummy_label])`` with a soft-label cross-entropy (``utils.py::
  cross_entropy_for_onehot``) on a sigmoid LeNet; it needs a twice
  differentiable model (ReLU's second derivative vanishes). Here
  :func:`gradient_inversion`, with ``optax.lbfgs`` (zoom line search) or Adam.

References:
  Zhu, Liu, Han. Deep Leakage from Gradients. NeurIPS 2019.
  https://arxiv.org/abs/1906.08935; code https://github.com/mit-han-lab/dlg
  Zhao, Mopuri, Bilen. iDLG: Improved Deep Leakage from Gradients. 2020.
  https://arxiv.org/abs/2001.02610; code
  https://github.com/PatrickZH/Improved-Deep-Leakage-from-Gradients (``iDLG.py``)
  Phong, Aono, Hayashi, Wang, Moriai. Privacy-Preserving Deep Learning via
  Additively Homomorphic Encryption. IEEE TIFS 2018.
  Geiping, Bauermeister, Droege, Moeller. Inverting Gradients - How easy is it
  to break privacy in federated learning? NeurIPS 2020.
  https://arxiv.org/abs/2003.14053
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab import _checks

OPTIMIZERS = ("lbfgs", "adam")
DENSE_METHODS = ("largest_row", "least_squares")


class InversionResult(NamedTuple):
  """A DLG reconstruction.

  Attributes:
    x: the reconstructed inputs, shape ``x_shape``.
    label: the label the reconstruction explains: ``softmax`` of the dummy
      logits (DLG) or the given ``labels`` (iDLG), shape ``[B, C]``.
    matching_loss: the final gradient distance ``D`` (a scalar).
    losses: ``[num_steps]`` the distance before each step (the trajectory).
  """

  x: jax.Array
  label: jax.Array
  matching_loss: jax.Array
  losses: jax.Array


def _check_tree_like(name: str, tree: Any, like: Any, like_name: str) -> None:
  s, t = jax.tree.structure(tree), jax.tree.structure(like)
  if s != t:
    raise ValueError(f"{name}: expected the structure of {like_name} {t}, got {s}")
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(like)):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(
        f"{name}: expected the leaf shapes of {like_name}, got {jnp.shape(a)} for {jnp.shape(b)}"
      )


def gradient_matching_loss(
  loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any, shared_grad: Any
) -> jax.Array:
  r"""DLG's distance ``\sum_l \|\nabla_{\theta_l} L(\theta; batch) - g_l\|^2`` (a scalar)."""
  g = jax.grad(loss_fn)(params, batch)
  leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.sum(jnp.square(a - b)), g, shared_grad))
  return sum(leaves[1:], leaves[0])


def gradient_inversion(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  shared_grad: Any,
  key: jax.Array,
  *,
  x_shape: Sequence[int],
  num_steps: int,
  num_classes: int | None = None,
  labels: jax.Array | None = None,
  optimizer: str = "lbfgs",
  learning_rate: float | None = None,
  memory_size: int = 10,
  num_restarts: int = 1,
) -> InversionResult:
  r"""DLG (or, with ``labels``, iDLG): the inputs whose gradient matches ``shared_grad``.

  ``loss_fn(params, {"x": x, "y": y})`` is the victim's loss, with ``y`` a
  probability vector per example ``[B, C]`` (a soft-label cross-entropy, as
  the official ``cross_entropy_for_onehot``; a one-hot ``y`` gives the usual
  loss); ``shared_grad`` is what the victim sent (a pytree like ``params``,
  possibly clipped or noised). The dummy ``x`` starts at ``N(0, 1)`` of shape
  ``x_shape`` and, without ``labels``, dummy logits at ``N(0, 1)`` of shape
  ``[x_shape[0], num_classes]`` (both from ``key``, as ``torch.randn`` in the
  official code); ``num_steps`` steps of the optimizer minimize
  :func:`gradient_matching_loss` over them.

  Args:
    loss_fn: pure ``(params, batch) -> scalar``, twice differentiable in ``x``.
    params: the model the gradient was taken at.
    shared_grad: the shared gradient, a pytree like ``params``.
    key: a ``jax.random.key``.
    x_shape: the inputs' shape, batch axis first (``(1, 64)``: one example).
    num_steps: optimizer steps, ``>= 1``.
    num_classes: ``C``, ``>= 2``; needed without ``labels``.
    labels: ``[B, C]`` probabilities (one-hot: iDLG with the label given or
      from :func:`idlg_label`); then only ``x`` is optimized.
    optimizer: ``"lbfgs"`` (``optax.lbfgs`` with its zoom line search, the
      official code's L-BFGS; ``learning_rate`` None) or ``"adam"``
      (``learning_rate`` default 0.1).
    memory_size: L-BFGS's history length (torch's default ``history_size`` is
      100; optax's 10).
    num_restarts: independent dummy initializations (from ``split(key, R)``;
      with 1, ``key`` itself), run side by side; the one with the lowest final
      distance is returned (Geiping et al.'s restarts; DLG's label sometimes
      settles on a wrong class, a local minimum of ``D``).

  Returns:
    :class:`InversionResult`. A step whose proposal is not finite is not taken
    (the reconstruction keeps its last finite value).

  Jit it (``loss_fn`` closed over, the keyword arguments static) and vmap it
  over ``(shared_grad, key)`` to attack many gradients in one program.
  """
  x_shape = tuple(_checks.integer("x_shape", d, minimum=1) for d in x_shape)
  if len(x_shape) < 1:
    raise ValueError("x_shape: expected a shape with the batch axis first, got ()")
  num_steps = _checks.integer("num_steps", num_steps, minimum=1)
  num_restarts = _checks.integer("num_restarts", num_restarts, minimum=1)
  memory_size = _checks.integer("memory_size", memory_size, minimum=1)
  _checks.one_of("optimizer", optimizer, OPTIMIZERS)
  _checks.is_key("key", key)
  _check_tree_like("shared_grad", shared_grad, params, "params")
  if labels is None:
    if num_classes is None:
      raise ValueError("num_classes: needed when labels is None (DLG recovers the label)")
    num_classes = _checks.integer("num_classes", num_classes, minimum=2)
  else:
    labels = jnp.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != x_shape[0]:
      raise ValueError(f"labels: expected shape [{x_shape[0]}, C], got {labels.shape}")
    _checks.probabilities("labels", labels)
  if optimizer == "lbfgs":
    if learning_rate is not None:
      _checks.positive("learning_rate", learning_rate)
    tx = optax.lbfgs(learning_rate, memory_size=memory_size)
  else:
    learning_rate = 0.1 if learning_rate is None else learning_rate
    _checks.positive("learning_rate", learning_rate)
    tx = optax.adam(learning_rate)

  dtype = jax.tree.leaves(shared_grad)[0].dtype

  def label_of(d):
    return jax.nn.softmax(d["y"], axis=-1) if labels is None else labels.astype(dtype)

  def distance(d):
    return gradient_matching_loss(loss_fn, params, {"x": d["x"], "y": label_of(d)}, shared_grad)

  value_and_grad = (
    optax.value_and_grad_from_state(distance)
    if optimizer == "lbfgs"
    else jax.value_and_grad(distance)
  )

  def step(carry, _):
    d, state = carry
    value, grad = value_and_grad(d, state=state) if optimizer == "lbfgs" else value_and_grad(d)
    updates, new_state = tx.update(grad, state, d, value=value, grad=grad, value_fn=distance)
    new_d = optax.apply_updates(d, updates)
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(new_d)]))
    # a non-finite proposal (an overflowing line search) is not taken
    d, state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), (new_d, new_state), (d, state))
    return (d, state), value

  def attack(k):
    kx, ky = jax.random.split(k)
    dummy = {"x": jax.random.normal(kx, x_shape, dtype)}
    if labels is None:
      dummy["y"] = jax.random.normal(ky, (x_shape[0], num_classes), dtype)
    (dummy, _), losses = jax.lax.scan(step, (dummy, tx.init(dummy)), None, length=num_steps)
    return InversionResult(dummy["x"], label_of(dummy), distance(dummy), losses)

  if num_restarts == 1:
    return attack(key)
  runs = jax.vmap(attack)(jax.random.split(key, num_restarts))
  # a NaN distance never wins
  best = jnp.argmin(jnp.where(jnp.isnan(runs.matching_loss), jnp.inf, runs.matching_loss))
  return jax.tree.map(lambda r: r[best], runs)


def dense_input_from_gradient(
  kernel_grad: jax.Array, bias_grad: jax.Array, *, method: str = "largest_row"
) -> jax.Array:
  r"""The input of a Dense layer from its weight and bias gradients (exact for one example).

  ``kernel_grad`` is ``[in, out]`` (flax's layout; transpose a torch
  ``[out, in]`` weight) and ``bias_grad`` ``[out]``. ``method``:

  * ``"largest_row"``: ``dK[:, j] / db_j`` at ``j = argmax_j |db_j|`` (the
    formula at the best-conditioned output; one example: exact to float
    rounding, two roundings).
  * ``"least_squares"``: ``dK\, db / \|db\|^2``, the ``x`` minimizing
    ``\sum_j \|dK[:, j] - x\, db_j\|^2``: the same ``x`` for one clean
    example, and it averages noise over the ``out`` columns.

  For a batch the result is the ``dL/dy``-weighted mean of its inputs (see the
  module docstring). A zero ``bias_grad`` (no signal) gives NaN or Inf.
  """
  _checks.one_of("method", method, DENSE_METHODS)
  kernel_grad, bias_grad = jnp.asarray(kernel_grad), jnp.asarray(bias_grad)
  if kernel_grad.ndim != 2:
    raise ValueError(f"kernel_grad: expected shape [in, out], got {kernel_grad.shape}")
  if bias_grad.shape != kernel_grad.shape[1:]:
    raise ValueError(
      f"bias_grad: expected shape [{kernel_grad.shape[1]}] (out), got {bias_grad.shape}"
    )
  if method == "largest_row":
    j = jnp.argmax(jnp.abs(bias_grad))
    return kernel_grad[:, j] / bias_grad[j]
  return (kernel_grad @ bias_grad) / jnp.sum(jnp.square(bias_grad))


def idlg_label(last_layer_grad: jax.Array) -> jax.Array:
  """iDLG's label of one example from the last layer's gradient (softmax cross-entropy).

  ``last_layer_grad``: the bias gradient ``[C]`` (``p - e_c``: negative only
  at the label, for any activation) or the kernel gradient ``[in, C]``
  (flax's layout): the official ``argmin`` over classes of the gradient
  summed over inputs, right when the layer's inputs are non-negative (ReLU,
  sigmoid). Returns the class index (an int32 scalar).
  """
  g = jnp.asarray(last_layer_grad)
  if g.ndim not in (1, 2) or g.shape[-1] < 2:
    raise ValueError(
      f"last_layer_grad: expected a bias [C] or kernel [in, C] gradient, C >= 2, got {g.shape}"
    )
  score = g if g.ndim == 1 else jnp.sum(g, axis=0)
  return jnp.argmin(score).astype(jnp.int32)


def psnr(x: jax.Array, reference: jax.Array, *, data_range: float = 1.0) -> jax.Array:
  r"""Peak signal-to-noise ratio ``10 \log_{10}(R^2 / \mathrm{MSE})`` in dB, over all entries."""
  _checks.positive("data_range", data_range)
  x, reference = jnp.asarray(x), jnp.asarray(reference)
  if x.shape != reference.shape:
    raise ValueError(f"x: expected the shape of reference {reference.shape}, got {x.shape}")
  mse = jnp.mean(jnp.square(x - reference))
  return 10.0 * jnp.log10(data_range**2 / mse)
