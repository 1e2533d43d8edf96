"""gradlab: a JAX toolkit for gradient estimation and gradient analysis.

Subpackages (import the one you need):

* ``gradlab.train``: ``TrainState``, one pure update, the sharded train step,
  many seeds at once (``train_curves``), the training loop.
* ``gradlab.tasks``: task builders (data + model + loss) shared by the
  experiments, notebooks, benchmarks and tests.
* ``gradlab.data``: embedded datasets (no network) and the resumable batcher.
* ``gradlab.models``: the small flax models the experiments use.
* ``gradlab.discrete``: gradient estimators for discrete samples (ST,
  Gumbel-Softmax, Gumbel-Rao, ReinMax, REINFORCE, ReSTE) and the exact oracle.
* ``gradlab.curvature``: Hessian-vector products, trace and diagonal
  estimators, Lanczos, spectral density, sharpness.
* ``gradlab.gradstats``: per-example statistics, noise scale, alignment,
  Hessian alignment across domains.
* ``gradlab.zeroth_order``: SPSA/MeZO, Sparse MeZO, CBO.
* ``gradlab.transforms``: optax gradient transformations (SPAM, ZClip, per-layer
  and DP clipping, diffGrad, SCALE, AGVM, 8-bit Adam, STORM, MARS, SVRG,
  AdaHessian, spike skipping, DIFF2) and refined learning-rate schedules.
* ``gradlab.policy``: policy-gradient estimators for RL with verifiable rewards.
* ``gradlab.influence``: data attribution and valuation (influence functions,
  TracIn, TRAK, LESS, Z0-Inf, Data Shapley) and the retraining that scores them;
  implicit hypergradients of bilevel problems.
* ``gradlab.monte_carlo``: score-function, pathwise and measure-valued gradients
  of Gaussian expectations and their control variates (optax's removed module).
* ``gradlab.dynamics``: exact linear-network dynamics, mode connectivity, weight
  matching, lottery tickets.
* ``gradlab.privacy``: what shared gradients leak: gradient inversion (DLG,
  iDLG's label, the analytic Dense-layer recovery).
* ``gradlab.losses``: losses studied for themselves (StableMax cross-entropy)
  and the softmax-collapse instrument.
* ``gradlab.sharding``: meshes and batch placement.

Design, conventions and where each estimator lives: ``docs/design.md``.
"""

__version__ = "0.1.0"
