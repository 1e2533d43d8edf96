"""Data attribution and valuation, scored against retraining.

Pure functions over a per-example ``loss_fn(params, example)`` (or a model
output such as TRAK's margin), parameters or checkpoints, and pytrees of
stacked examples. Every attribution is ``[len(test), len(train)]`` and
positive where the train example helps the test example (the sign of the
effect of *removing* it on the test loss).

* ``influence(loss_fn, params, train, test, solver=..., damping=...)``: influence
  functions ``(1/n) g_test^T (H + damping I)^-1 g_train``; the solvers are values
  (a ``SolverSpec`` with the method's options, passed as ``solver=``): ``explicit()``,
  ``cg(tol, max_iterations)``, ``lissa(depth, scale, batch_size, key)``,
  ``arnoldi(rank, max_iterations, key)`` (top-k eigenpairs), ``ekfac_solver(factors)``
  (``curvature.ekfac``, scored by the factored per-layer contraction, optionally
  with low-rank queries) and ``neumann(num_terms, scale, key)``; a
  ``measurement_fn`` for the test side, ``per_module`` and per-token
  (``token_loss_fn``) scores; ``self_influence``; ``inverse_hvp`` on flat vectors.
* Streaming (:mod:`gradlab.influence.stream`): every pairwise score below
  applies its query side once and reads the train set ``chunk_size`` examples
  at a time, so no ``[n, d]`` array of train gradients is held; with
  ``path="scores.npy"`` the scores are written block by block to a NumPy file
  (memory-mapped on return) and a killed run resumes where it stopped.
* Gradient features (``per_example_gradients``, ``gradient_features``,
  ``project`` without a ``d x k`` matrix, the sparse ``sjlt`` and ``random_mask``,
  LoGra's per-layer Kronecker projection ``logra_features`` and its ``logra``
  scores, LESS's ``adam_transform``) and the
  scores built on them: ``grad_dot``, ``grad_cos`` (on rows) and
  ``grad_similarity`` (streamed), ``tracin_cp``, ``trak``, ``less_scores`` /
  ``less_attribution`` (streamed) / ``less_select``, ``grand``, ``el2n``, ``vog``.
* ``z0_influence`` / ``z0_self_influence``: zeroth-order influence from the
  losses at checkpoints.
* Data Shapley: ``exact_shapley`` (enumeration), ``tmc_shapley``,
  ``knn_shapley``; G-Shapley (one SGD pass per permutation, an order-dependent
  game): ``g_shapley``, ``exact_g_shapley`` (all n! orderings),
  ``g_shapley_learning_rate``.
* Data mixing (:mod:`gradlab.influence.mixing`, DoGE / DGA): ``mixing_init``,
  ``alignment_scores``, ``dga_update``, ``mixed_gradient``, ``MixingState``.
* Ground truth: ``train_on_subset``, ``newton_fit``, ``subset_retrain``,
  ``loo_retrain``, ``random_subsets``; metrics ``lds``, ``loo_correlation``,
  ``auroc``.
* Unlearning (:mod:`gradlab.influence.unlearning`, SalUn): ``saliency_mask``,
  ``masked_optimizer``, ``random_labels``, ``random_label_loss``, ``salun_update``,
  ``mia_efficacy``; DiffROAR (:mod:`gradlab.influence.roar`): ``keep_mask``,
  ``unmask``, ``diff_roar``.
* Bilevel optimization (:mod:`gradlab.influence.bilevel`), the same
  implicit-gradient machinery: ``hypergradient`` (any ``solver=`` value;
  ``neumann_inverse_hvp`` on pytrees), ``penalty_hypergradient`` / ``penalty_objective``,
  ``bo_rep`` with its ``normalized_momentum``, ``inner_descent``.
"""

from gradlab.influence.bilevel import (
  BORep,
  BORepState,
  Hypergradient,
  bo_rep,
  hypergradient,
  inner_descent,
  neumann,
  neumann_inverse_hvp,
  normalized_momentum,
  penalty_hypergradient,
  penalty_objective,
)
from gradlab.influence.features import (
  adam_transform,
  gradient_features,
  per_example_gradients,
  project,
)
from gradlab.influence.functions import (
  Solver,
  SolverSpec,
  arnoldi,
  cg,
  dense_hessian,
  ekfac_solver,
  explicit,
  influence,
  inverse_hvp,
  lissa,
  self_influence,
)
from gradlab.influence.less import less_attribution, less_features, less_scores, less_select
from gradlab.influence.metrics import auroc, lds, loo_correlation, spearman
from gradlab.influence.mixing import (
  MixingState,
  alignment_scores,
  dga_update,
  mixed_gradient,
  mixing_init,
)
from gradlab.influence.projectors import (
  logra,
  logra_features,
  random_mask,
  sjlt,
)
from gradlab.influence.retrain import (
  loo_masks,
  loo_retrain,
  newton_fit,
  random_subsets,
  subset_retrain,
  train_on_subset,
)
from gradlab.influence.roar import KEEPS, DiffROAR, diff_roar, keep_mask, unmask
from gradlab.influence.scores import (
  el2n,
  grad_cos,
  grad_dot,
  grad_similarity,
  grand,
  input_gradients,
  tracin_cp,
  vog,
)
from gradlab.influence.shapley import (
  ShapleyEstimate,
  exact_g_shapley,
  exact_shapley,
  g_shapley,
  g_shapley_learning_rate,
  knn_shapley,
  knn_utility,
  tmc_shapley,
)
from gradlab.influence.trak import margin, trak
from gradlab.influence.unlearning import (
  MaskedState,
  MIAEfficacy,
  masked_optimizer,
  mia_efficacy,
  random_label_loss,
  random_labels,
  saliency_mask,
  salun_update,
)
from gradlab.influence.z0inf import z0_influence, z0_self_influence

__all__ = [
  "BORep",
  "BORepState",
  "DiffROAR",
  "Hypergradient",
  "KEEPS",
  "MIAEfficacy",
  "MaskedState",
  "MixingState",
  "ShapleyEstimate",
  "Solver",
  "SolverSpec",
  "adam_transform",
  "alignment_scores",
  "arnoldi",
  "auroc",
  "bo_rep",
  "cg",
  "dense_hessian",
  "dga_update",
  "diff_roar",
  "ekfac_solver",
  "el2n",
  "exact_g_shapley",
  "exact_shapley",
  "explicit",
  "g_shapley",
  "g_shapley_learning_rate",
  "grad_cos",
  "grad_dot",
  "grad_similarity",
  "gradient_features",
  "grand",
  "hypergradient",
  "influence",
  "inner_descent",
  "input_gradients",
  "inverse_hvp",
  "keep_mask",
  "knn_shapley",
  "knn_utility",
  "lds",
  "less_attribution",
  "less_features",
  "less_scores",
  "less_select",
  "lissa",
  "logra",
  "logra_features",
  "loo_correlation",
  "loo_masks",
  "loo_retrain",
  "margin",
  "masked_optimizer",
  "mia_efficacy",
  "mixed_gradient",
  "mixing_init",
  "neumann",
  "neumann_inverse_hvp",
  "newton_fit",
  "normalized_momentum",
  "penalty_hypergradient",
  "penalty_objective",
  "per_example_gradients",
  "project",
  "random_label_loss",
  "random_labels",
  "random_mask",
  "random_subsets",
  "saliency_mask",
  "salun_update",
  "self_influence",
  "sjlt",
  "spearman",
  "subset_retrain",
  "tmc_shapley",
  "tracin_cp",
  "train_on_subset",
  "trak",
  "unmask",
  "vog",
  "z0_influence",
  "z0_self_influence",
]
