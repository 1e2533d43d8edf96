"""The training state: a plain pytree that jit, sharding and orbax handle as is."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
  """Everything a run needs to continue exactly where it stopped.

  Attributes:
    step: the number of updates applied so far (int32 scalar).
    params: the model parameters, any pytree.
    opt_state: the optax state of the optimizer.
    key: the run's base PRNG key as raw ``uint32`` key data. The key of step
      ``s`` is ``jax.random.fold_in(key, s)``, so a resumed run draws the same
      randomness as an uninterrupted one without carrying a key chain.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  key: jax.Array

  @classmethod
  def create(
    cls, params: Any, optimizer: optax.GradientTransformation, key: jax.Array
  ) -> "TrainState":
    """A state at step 0 with ``optimizer.init(params)``.

    The params are copied: the train step donates (deletes) its input state's
    buffers, and the caller's own arrays must survive that.
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.key_data(key)
    params = jax.tree.map(jnp.copy, params)
    return cls(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=optimizer.init(params),
      key=jnp.asarray(key),
    )

  def step_key(self) -> jax.Array:
    """The PRNG key of the current step."""
    return jax.random.fold_in(self.key, self.step)
