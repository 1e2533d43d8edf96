r"""Machine unlearning by weight saliency (SalUn) and its baselines' pieces.

Reference: Fan, Liu, Zhang, Wong, Wei & Liu, "SalUn: Empowering Machine
Unlearning via Gradient-based Weight Saliency in Both Image Classification and
Generation", ICLR 2024; official code github.com/OPTML-Group/Unlearn-Saliency
(``Classification/generate_mask.py`` for the mask, ``Classification/unlearn/RL.py``
for the masked random-label update, ``Classification/evaluation/SVC_MIA.py``
for the membership-inference efficacy).

SalUn unlearns a forget set ``D_f`` from trained weights ``theta_o`` in two steps:

1. **Weight saliency** (the paper's saliency map): ``m = 1[|grad_theta l_f(theta; D_f)| at
   theta_o >= gamma]``, ``l_f`` the forget loss (the official code takes the
   gradient of ``-CE`` summed over forget batches; only its magnitude matters).
   The official threshold is a rank, not a value: the ``int(fraction * N)``
   largest magnitudes over *all* N weights of the model (every leaf
   concatenated) get 1, the rest 0. :func:`saliency_mask`.
2. **Random-label unlearning restricted to the mask** (the paper's SalUn objective):
   ``min_theta E_{(x, y) in D_f, y'} CE(theta; x, y') + alpha E_{D_r} CE(theta; x, y)``
   with ``theta = m * (theta_o + delta) + (1 - m) * theta_o``: only salient
   weights move. :func:`random_label_loss` builds the objective,
   :func:`masked_optimizer` restricts any optax optimizer to the mask, and
   :func:`salun_update` is one step of the two together (with an unmasked
   optimizer it is the plain random-label baseline, "RL").

The evaluation's privacy metric is :func:`mia_efficacy`: a membership
attack fit to tell retain (members) from test (non-members) examples by the
model's confidence in the true label, then asked about the forget set; the
efficacy is the share of forget examples it calls non-members (the official
``SVC_MIA_forget_efficacy["confidence"]``). The gold standard every metric
is compared with is retraining from scratch on the retain set
(:func:`gradlab.influence.train_on_subset` with the retain mask).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradlab import _checks

ExampleLoss = Callable[[Any, Any], jax.Array]


def saliency_mask(grads: Any, *, fraction: float) -> Any:
  """The weight-saliency mask: 1 on the ``int(fraction * N)`` largest ``|grads|``.

  Ranks are taken across the whole model (the leaves of ``grads`` concatenated
  in ``jax.tree.leaves`` order), as the official ``generate_mask.py`` does
  (``argsort`` of the negated magnitudes, ``rank < int(len * fraction)``), so
  the mask holds exactly ``int(fraction * N)`` ones whatever the ties. Ties are
  broken by position (the earlier weight in that order wins); the official
  ``torch.argsort`` is not stable, so its tie order is unspecified.

  Args:
    grads: a pytree of arrays, the gradient of the forget loss at the trained
      weights.
    fraction: the share of weights that may change, in ``(0, 1]`` (the
      official README's example uses 0.5).

  Returns:
    A boolean pytree shaped like ``grads``.
  """
  fraction = float(fraction)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction: expected a number in (0, 1], got {fraction}")
  leaves, treedef = jax.tree.flatten(grads)
  if not leaves:
    raise ValueError("grads: expected a pytree with at least one array, got none")
  for leaf in leaves:
    _checks.finite("grads", leaf)
  flat = jnp.concatenate([jnp.abs(jnp.ravel(x)) for x in leaves])
  flat = flat.astype(jnp.promote_types(flat.dtype, jnp.float32))
  n = flat.shape[0]
  k = int(n * fraction)
  order = jnp.argsort(-flat, stable=True)
  ranks = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  keep = ranks < k
  out, start = [], 0
  for leaf in leaves:
    size = int(np.prod(jnp.shape(leaf)))
    out.append(keep[start : start + size].reshape(jnp.shape(leaf)))
    start += size
  return jax.tree.unflatten(treedef, out)


class MaskedState(NamedTuple):
  inner: Any  # the wrapped optimizer's state


def masked_optimizer(
  optimizer: optax.GradientTransformation, mask: Any
) -> optax.GradientTransformation:
  """``optimizer`` restricted elementwise to ``mask``: masked-out weights never move.

  The gradient is multiplied by the mask before ``optimizer`` sees it (the
  official ``_apply_mask_to_grads``) and its updates after (so weight decay,
  momentum or Adam's bias correction cannot move a masked-out weight either;
  the official code restores those weights to ``theta_o`` after every step and
  zeroes their momentum, which gives the same trajectory for any elementwise
  optimizer). Unlike ``optax.masked``, whose mask picks whole leaves, this
  mask is elementwise: a pytree of arrays shaped like the parameters.

  Args:
    optimizer: any optax transformation.
    mask: a pytree of 0/1 or boolean arrays shaped like the parameters (e.g.
      :func:`saliency_mask`).
  """
  if not isinstance(optimizer, optax.GradientTransformation):
    raise ValueError(f"optimizer: expected an optax.GradientTransformation, got {optimizer!r}")
  if not jax.tree.leaves(mask):
    raise ValueError("mask: expected a pytree of arrays shaped like the parameters, got none")

  def apply(tree):
    try:
      return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), tree, mask)
    except ValueError as e:
      raise ValueError(f"mask: expected the structure of the parameters ({e})") from None

  def init_fn(params):
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)):
      if jnp.shape(p) != jnp.shape(m):
        raise ValueError(
          f"mask: expected leaves shaped like the parameters, got {jnp.shape(m)} for {jnp.shape(p)}"
        )
    return MaskedState(optimizer.init(params))

  def update_fn(updates, state, params=None):
    updates, inner = optimizer.update(apply(updates), state.inner, params)
    return apply(updates), MaskedState(inner)

  return optax.GradientTransformation(init_fn, update_fn)


def random_labels(
  key: jax.Array, labels: Any, *, num_classes: int, exclude_true: bool = False
) -> jax.Array:
  """Uniform random labels in ``0..num_classes-1`` shaped like ``labels``.

  The official ``RL.py`` draws ``torch.randint(0, num_classes)``, which can
  return the true label; the paper's objective writes ``y' != y``, which
  ``exclude_true=True`` gives (uniform over the other ``num_classes - 1``).
  """
  _checks.is_key("key", key)
  k = _checks.integer("num_classes", num_classes, minimum=2)
  y = jnp.asarray(labels)
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"labels: expected integer class labels, got dtype {y.dtype}")
  if exclude_true:
    return ((y + jax.random.randint(key, y.shape, 1, k)) % k).astype(y.dtype)
  return jax.random.randint(key, y.shape, 0, k).astype(y.dtype)


def _pair(name: str, examples: Any) -> tuple[jax.Array, jax.Array]:
  if not (isinstance(examples, (tuple, list)) and len(examples) == 2):
    raise ValueError(f"{name}: expected an (inputs, labels) pair of stacked arrays")
  x, y = jnp.asarray(examples[0]), jnp.asarray(examples[1])
  if x.ndim == 0 or y.ndim != 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
    raise ValueError(
      f"{name}: expected inputs [n, ...] and labels [n] with n >= 1, got {x.shape} and {y.shape}"
    )
  return x, y


def random_label_loss(
  loss_fn: ExampleLoss,
  forget: Any,
  retain: Any,
  key: jax.Array,
  *,
  num_classes: int,
  alpha: float = 1.0,
  exclude_true: bool = False,
) -> Callable[[Any], jax.Array]:
  """SalUn's objective: ``p -> mean_f loss(p, (x_f, y')) + alpha mean_r loss(p, (x_r, y_r))``.

  Args:
    loss_fn: the per-example loss ``loss_fn(params, (x, y))`` (cross-entropy).
    forget, retain: ``(inputs [n, ...], labels [n])`` pairs (a batch of each);
      ``retain=None`` leaves the forget term alone (the official CIFAR-10 branch's
      forget pass, whose retain steps are separate ones).
    key: draws the forget set's random labels ``y'`` (:func:`random_labels`).
    num_classes: the number of classes the labels are drawn from.
    alpha: the weight of the retain term (``>= 0``; the official CIFAR-10
      branch takes one pass of forget steps and one of retain steps per epoch,
      its CIFAR-100 branch one shuffled pass over both, whose expected batch
      loss is this one with ``alpha = n_retain / n_forget``, up to a factor).
    exclude_true: ``y' != y`` as in the paper (default: the official draw).
  """
  xf, yf = _pair("forget", forget)
  xr, yr = (None, None) if retain is None else _pair("retain", retain)
  _checks.positive("alpha", alpha, allow_zero=True)
  y_rand = random_labels(key, yf, num_classes=num_classes, exclude_true=exclude_true)

  def mean_loss(p, x, y):
    return jnp.mean(jax.vmap(lambda a, b: loss_fn(p, (a, b)))(x, y))

  if retain is None:
    return lambda p: mean_loss(p, xf, y_rand)
  return lambda p: mean_loss(p, xf, y_rand) + alpha * mean_loss(p, xr, yr)


def salun_update(
  loss_fn: ExampleLoss,
  params: Any,
  opt_state: Any,
  forget: Any,
  retain: Any,
  key: jax.Array,
  *,
  optimizer: optax.GradientTransformation,
  num_classes: int,
  alpha: float = 1.0,
  exclude_true: bool = False,
) -> tuple[Any, Any, jax.Array]:
  """One step of random-label unlearning: ``(params, opt_state, loss)`` after it.

  With ``optimizer = masked_optimizer(opt, saliency_mask(g_f, fraction=...))``
  this is SalUn's update; with a plain optimizer, the random-label baseline.
  The loss is :func:`random_label_loss` on this batch with labels drawn from
  ``key`` (``retain=None``: the forget term alone); ``opt_state`` comes from
  ``optimizer.init(params)``.
  """
  objective = random_label_loss(
    loss_fn, forget, retain, key, num_classes=num_classes, alpha=alpha, exclude_true=exclude_true
  )
  loss, grads = jax.value_and_grad(objective)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


class MIAEfficacy(NamedTuple):
  efficacy: jax.Array  # share of the target examples the attack calls non-members
  threshold: jax.Array  # members are scores >= threshold
  shadow_accuracy: jax.Array  # the attack's balanced accuracy on its own fit data


def _scores(name: str, x: Any) -> jax.Array:
  s = jnp.asarray(x)
  if s.ndim != 1 or s.shape[0] == 0:
    raise ValueError(f"{name}: expected a non-empty vector of scores, got shape {s.shape}")
  _checks.finite(name, s)
  return s.astype(jnp.promote_types(s.dtype, jnp.float32))


def mia_efficacy(member_scores: Any, nonmember_scores: Any, target_scores: Any) -> MIAEfficacy:
  """A threshold membership attack on a score (e.g. the confidence ``p_y(x)``).

  The attack calls an example a member when its score is ``>= t``, ``t`` chosen
  among the observed scores (and ``+inf``) to maximize the balanced accuracy
  ``(TPR + TNR) / 2`` on ``member_scores`` (label 1) against
  ``nonmember_scores`` (label 0); the lowest such ``t`` on ties. The efficacy
  is the share of ``target_scores`` below ``t``: for a forget set, how much of
  it now looks unseen (higher = more forgotten; retraining's level is the
  reference).

  The official ``SVC_MIA`` fits scikit-learn's RBF ``SVC(C=3)`` to the
  confidences of ``len(test)`` retain examples against the test set's; on one
  feature such a classifier cuts the line into intervals, of which a
  threshold is the one-cut case. This jit-able version is that one cut.

  Returns:
    :class:`MIAEfficacy` with the efficacy, the threshold and the attack's
    balanced accuracy on the data it was fit to.
  """
  m = _scores("member_scores", member_scores)
  u = _scores("nonmember_scores", nonmember_scores)
  t = _scores("target_scores", target_scores)
  s = jnp.concatenate([m, u])
  is_member = jnp.concatenate([jnp.ones(m.shape, bool), jnp.zeros(u.shape, bool)])
  order = jnp.argsort(s, stable=True)
  s, is_member = s[order], is_member[order]
  # threshold s[i]: members at or above it, non-members below it
  below_m = jnp.concatenate([jnp.zeros(1), jnp.cumsum(is_member)[:-1]])
  below_u = jnp.concatenate([jnp.zeros(1), jnp.cumsum(~is_member)[:-1]])
  tpr = (m.shape[0] - below_m) / m.shape[0]
  tnr = below_u / u.shape[0]
  valid = jnp.concatenate([jnp.ones(1, bool), s[1:] != s[:-1]])  # the first of equal scores
  bacc = jnp.where(valid, 0.5 * (tpr + tnr), -1.0)
  bacc = jnp.concatenate([bacc, jnp.full(1, 0.5)])  # t = +inf: everything a non-member
  thresholds = jnp.concatenate([s, jnp.full(1, jnp.inf, s.dtype)])
  best = jnp.argmax(bacc)
  threshold = thresholds[best]
  return MIAEfficacy(jnp.mean(t < threshold), threshold, bacc[best])
