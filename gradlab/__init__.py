"""gradlab: a JAX toolkit for gradient estimation and gradient analysis.

Subpackages (import the one you need):

* ``gradlab.train``: ``TrainState``, the sharded train step, the training loop.
* ``gradlab.data``: embedded datasets (no network) and the resumable batcher.
* ``gradlab.models``: the small flax models the experiments use.
* ``gradlab.discrete``: gradient estimators for discrete samples (ST,
  Gumbel-Softmax, Gumbel-Rao, ReinMax, REINFORCE, ReSTE) and the exact oracle.
* ``gradlab.curvature``: Hessian-vector products, trace and diagonal
  estimators, Lanczos, spectral density, sharpness.
* ``gradlab.gradstats``: per-example statistics, noise scale, alignment.
* ``gradlab.zeroth_order``: SPSA/MeZO, Sparse MeZO, CBO.
* ``gradlab.transforms``: optax gradient transformations (SPAM, ZClip, per-layer
  and DP clipping, diffGrad, SCALE, AGVM, 8-bit Adam, STORM, MARS, SVRG).
* ``gradlab.policy``: policy-gradient estimators for RL with verifiable rewards.
* ``gradlab.sharding``: meshes and batch placement.
"""

__version__ = "0.1.0"
