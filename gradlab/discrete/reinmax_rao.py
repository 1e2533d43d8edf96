"""ReinMax-Rao and ReinMax-CV: ReinMax with Gumbel-Rao Jacobians.

Reference: Wang & Bui, "Beyond ReinMax: Low-Variance Gradient Estimators for
Discrete Latent Variables" (arXiv:2603.08257, 2026), eqs. 17 (ReinMax-Rao) and
18 (ReinMax-CV). The equations of the stored paper are not readable, so this
port follows the authors' code: Daniel Wang's
``danielwang0452/DiscreteNumericalMethodsASC`` (``reinmax_jacobians.py``,
methods ``reinmax_v3`` = ReinMax-Rao and ``reinmax_cv``; ``reinmax_v2.py``,
``rao_gumbel_v3`` / ``rao_gumbel_v4``), Thang Bui's
``thangbui/DiscreteNumericalMethodsASC`` (``sparse_mixer/estimators.py``,
``_ReinMaxV3Single`` / ``_ReinMaxCVSingle``), and a stored third-party port
(``_CategoricalReinMaxRaoST`` / ``_CategoricalReinMaxCVST``, a VAE "mapper"
module; the code index gives no repository or path for it) whose docstrings
say that the printed eq. 17 puts its second term at ``theta_D`` and the
printed eq. 18 drops the factor 2 on the first ReinMax term, both typos.

Notation as in ``straight_through.py``: ``pi = softmax(theta)``, ``D ~
Cat(pi)``, ``g = df/dD``, ``J(p) = diag(p) - p p^T``; further
``pi_D = (pi + D) / 2`` and ``theta_D = log pi_D`` (ReinMax's Heun midpoint),
and the Gumbel-Rao Jacobian at ``theta_D``

    J_GR = (1/k) sum_m J(softmax((theta_D + G_m) / tau)) / tau,
           G_m ~ Gumbel conditioned on argmax(theta_D + G_m) = D.

ReinMax (tau = 1) is ``2 J(pi_D) g - J(pi) g / 2``. The two estimators:

* **ReinMax-Rao** (eq. 17, corrected): ``2 J_GR g - J(pi) g / 2`` -- the
  midpoint Jacobian replaced by the Gumbel-Rao one at ``theta_D``.
* **ReinMax-CV** (eq. 18, corrected):
  ``2 J(pi_D) g - J(pi) g / 2 + eta (J_GR g - J_GS g)`` with the single
  ST-Gumbel Jacobian ``J_GS = J(softmax((theta_D + G) / tau)) / tau``.

**Which reading, and why.** We implement the corrected reading, the one all
three codes compute: the second ReinMax term at ``theta`` (``J(pi)``, the
code's ``y_soft = softmax(logits)``), and the full ReinMax (factor 2 kept)
plus the correction. The printed eq. 18 without the 2 is not ReinMax at
``eta = 0``, which the paper's derivation (ReinMax plus a zero-mean
correction) requires; in the printed eq. 17 the second term, ``-J(pi) g / 2``
in ReinMax's decomposition (the forward-Euler term at ``theta``), moves to
``theta_D``, which that decomposition has no place for. With eta = 0,
``reinmax_cv`` is ``reinmax`` at tau = 1 (tested, to float32 rounding).

**What they satisfy (and not).** Neither is unbiased where ReinMax is: for
quadratic f at tau = 1 ReinMax is exact, but ``E[J_GR | D] != J(pi_D)`` and
``E[J_GR - J_GS] != 0`` in general, because ``D`` is drawn from ``pi``, not
from ``softmax(theta_D)`` (which depends on D), so the tower property that
makes Gumbel-Rao unbiased for ST-Gumbel does not apply. The co-author's own
diagnosis (``sparse_mixer/exp_cv_diagnosis.py``) reports the same for the
CV. What does hold: ``num_samples`` is a true Rao-Blackwellization *of the
estimator with k = 1* (same mean, variance non-increasing in k); the tests
check the mean against enumeration plus 1-D quadrature on binary latents.

Deviations from the codes: (1) the ReinMax term is at tau = 1 and
``temperature`` is the Gumbel terms' tau, as in the latest
``reinmax_jacobians.py`` ("fix this temp to 1.0") and ``estimators.py``; the
authors' ``reinmax_v3`` uses tau only in ``J_GR`` too. (2) ReinMax-CV's
``G`` is the Gumbel of the Gumbel-max draw of ``D`` from ``theta`` (as in
``estimators.py`` and the intent of ``reinmax_jacobians.py``, whose saved
tensor is in fact the relaxed sample ``softmax((theta + G) / tau)``, a
mislabel we do not copy; the mapper port draws a fresh G instead). Here it is
drawn as ``G | D`` by the exponential race, the same joint law. (3) The codes'
final ``grad - mean(grad)`` is omitted: every term is ``J(p) v`` with
``1^T J(p) = 0``, so it is already zero-mean. (4) ``theta_D`` is formed in
log space (``log((pi + D)/2)``, finite where ``pi`` underflows) instead of
``log`` of the probabilities.

Cost: k conditional Gumbel draws and softmaxes per categorical in the
backward, like ``gumbel_rao``. Which to use: the paper recommends ReinMax-Rao
for many categories. Measured here (experiments/results/reinmax_rao.md):
ReinMax-Rao has about 0.45x ReinMax's variance but a relative bias of ~1.6
on the polynomial problem and stalls like Gumbel-Rao; ReinMax-CV has ~1.2x
ReinMax's variance and trains like ReinMax. Prefer ``reinmax`` unless a
measurement on your problem says otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.discrete.gumbel_rao import conditional_gumbel_logits
from gradlab.discrete.reinmax import reinmax_from_sample
from gradlab.discrete.straight_through import draw_one_hot, straight_through_surrogate


def _midpoint_logits(logits: jax.Array, sample: jax.Array) -> jax.Array:
  """``theta_D = log((softmax(theta) + D) / 2)``, finite, no gradient."""
  log_p = jax.nn.log_softmax(jax.lax.stop_gradient(logits), axis=-1)
  return jnp.log(0.5) + jnp.where(sample > 0, jnp.logaddexp(log_p, 0.0), log_p)


def _relaxed_at(logits: jax.Array, perturbed: jax.Array, temperature) -> jax.Array:
  # softmax((theta + sg(l - theta)) / tau): value softmax(l / tau), and its
  # vjp J(softmax(l / tau)) g / tau flows into theta as the codes' J g does.
  return jax.nn.softmax((logits + jax.lax.stop_gradient(perturbed - logits)) / temperature, -1)


def _gumbel_rao_term(key, logits, sample, temperature, num_samples):
  """``mean_m softmax((theta_D + G_m) / tau)`` with gradient ``J_GR g``."""
  perturbed = conditional_gumbel_logits(key, _midpoint_logits(logits, sample), sample, num_samples)
  return jnp.mean(_relaxed_at(logits, perturbed, temperature), axis=0)


def _check(logits, temperature, num_samples):
  logits = _checks.logits("logits", logits)
  _checks.positive("temperature", temperature)
  _checks.integer("num_samples", num_samples, minimum=1)
  return logits


def reinmax_rao_from_sample(
  key: jax.Array,
  sample: jax.Array,
  logits: jax.Array,
  *,
  temperature: float = 1.0,
  num_samples: int = 10,
) -> jax.Array:
  """ReinMax-Rao's output for a given one-hot ``sample`` of ``softmax(logits)``.

  The backward is random given the sample: its k Gumbels are
  ``conditional_gumbel_logits(key, theta_D, sample, num_samples)``.
  """
  logits = _check(logits, temperature, num_samples)
  sample = jax.lax.stop_gradient(sample.astype(logits.dtype))
  gumbel_rao = _gumbel_rao_term(key, logits, sample, temperature, num_samples)
  soft = 2.0 * gumbel_rao - 0.5 * jax.nn.softmax(logits, axis=-1)
  return straight_through_surrogate(sample, soft)


def reinmax_rao(
  key: jax.Array, logits: jax.Array, *, temperature: float = 1.0, num_samples: int = 10
) -> jax.Array:
  """ReinMax-Rao: a one-hot sample, gradient ``2 J_GR g - J(pi) g / 2``.

  Args:
    key: PRNG key.
    logits: [..., K] unnormalized log-probabilities.
    temperature: tau > 0 of the Gumbel-Rao softmax at ``theta_D`` (the
      authors' scripts: 1.0; the ReinMax part is always at tau = 1).
    num_samples: k >= 1 conditional Gumbel draws per categorical (the
      authors' default 100; the mapper port's 32).

  Returns:
    The one-hot sample ``D ~ Cat(softmax(logits))``, shape and dtype of ``logits``.
  """
  logits = _check(logits, temperature, num_samples)
  sample_key, gumbel_key = jax.random.split(key)
  return reinmax_rao_from_sample(
    gumbel_key,
    draw_one_hot(sample_key, logits),
    logits,
    temperature=temperature,
    num_samples=num_samples,
  )


def reinmax_cv_from_sample(
  key: jax.Array,
  sample: jax.Array,
  logits: jax.Array,
  *,
  temperature: float = 1.0,
  num_samples: int = 10,
  eta: float = 0.5,
) -> jax.Array:
  """ReinMax-CV's output for a given one-hot ``sample`` of ``softmax(logits)``.

  ``key`` splits into the Gumbel-Rao key and the key of ``G | D``, the
  Gumbel of the Gumbel-max draw of ``sample`` from ``logits``
  (``conditional_gumbel_logits(key_g, logits, sample, 1)[0] - logits``).
  """
  logits = _check(logits, temperature, num_samples)
  _checks.finite("eta", eta)
  sample = jax.lax.stop_gradient(sample.astype(logits.dtype))
  rao_key, gumbel_key = jax.random.split(key)
  theta = jax.lax.stop_gradient(logits)
  gumbel = conditional_gumbel_logits(gumbel_key, theta, sample, 1)[0] - theta
  single = _relaxed_at(logits, _midpoint_logits(logits, sample) + gumbel, temperature)
  gumbel_rao = _gumbel_rao_term(rao_key, logits, sample, temperature, num_samples)
  control = eta * (gumbel_rao - single)
  reinmax = reinmax_from_sample(sample, logits, temperature=1.0)
  return reinmax + (control - jax.lax.stop_gradient(control))


def reinmax_cv(
  key: jax.Array,
  logits: jax.Array,
  *,
  temperature: float = 1.0,
  num_samples: int = 10,
  eta: float = 0.5,
) -> jax.Array:
  """ReinMax-CV: a one-hot sample, gradient ReinMax + ``eta (J_GR - J_GS) g``.

  Args:
    key: PRNG key.
    logits: [..., K] unnormalized log-probabilities.
    temperature: tau > 0 of both Gumbel softmaxes at ``theta_D`` (ReinMax's
      own part is at tau = 1).
    num_samples: k >= 1 conditional Gumbel draws of ``J_GR``.
    eta: the control variate's weight (the authors' sweep default 0.5);
      eta = 0 is ReinMax at tau = 1.

  Returns:
    The one-hot sample ``D ~ Cat(softmax(logits))``, shape and dtype of ``logits``.
  """
  logits = _check(logits, temperature, num_samples)
  sample_key, rest = jax.random.split(key)
  return reinmax_cv_from_sample(
    rest,
    draw_one_hot(sample_key, logits),
    logits,
    temperature=temperature,
    num_samples=num_samples,
    eta=eta,
  )
