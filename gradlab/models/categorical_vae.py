"""The categorical VAE of the ReinMax paper's MNIST experiment.

Architecture of LiyuanLucasLiu/ReinMax ``mnist_vae/model/vae.py`` (from GST,
without GST's ReLU on the encoder logits): encoder 784-512-256-(L*C) giving
L categorical latents of C classes, decoder (L*C)-256-512-784 with a sigmoid
(Bernoulli) output; ReLU activations (LeakyReLU for 32x64 in the paper).

The negative ELBO per example is ``BCE(x, decoder(D)) + KL(q || Uniform)``
with ``KL = sum_l sum_c q_lc log q_lc + L log C`` (the prior is uniform), the
BCE summed over pixels; the sample D comes from a discrete gradient estimator.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class CategoricalVAE(nn.Module):
  """Attributes: ``num_latents`` (L), ``num_classes`` (C), ``features`` (784)."""

  num_latents: int
  num_classes: int
  features: int = 784
  leaky: bool = False

  def setup(self):
    act = nn.leaky_relu if self.leaky else nn.relu
    self._act = act
    self.enc = [nn.Dense(512), nn.Dense(256), nn.Dense(self.num_latents * self.num_classes)]
    self.dec = [nn.Dense(256), nn.Dense(512), nn.Dense(self.features)]

  def encode(self, x: jax.Array) -> jax.Array:
    """Logits [B, L, C]."""
    h = self._act(self.enc[0](x))
    h = self._act(self.enc[1](h))
    return self.enc[2](h).reshape(x.shape[0], self.num_latents, self.num_classes)

  def decode(self, d: jax.Array) -> jax.Array:
    """Bernoulli logits [B, features] from one-hot latents [B, L, C]."""
    h = self._act(self.dec[0](d.reshape(d.shape[0], -1)))
    h = self._act(self.dec[1](h))
    return self.dec[2](h)

  def __call__(self, x: jax.Array, sample_fn: Callable, key: jax.Array):
    logits = self.encode(x)
    d = sample_fn(key, logits)
    return logits, self.decode(d)


def negative_elbo(
  vae: CategoricalVAE, params, x: jax.Array, sample_fn: Callable, key: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean over the batch of the single-sample negative ELBO, in nats."""
  logits, x_logits = vae.apply(params, x, sample_fn, key)
  bce = jnp.sum(optax.sigmoid_binary_cross_entropy(x_logits, x), axis=-1)
  log_q = jax.nn.log_softmax(logits, axis=-1)
  kl = jnp.sum(jnp.exp(log_q) * log_q, axis=(-2, -1)) + vae.num_latents * math.log(vae.num_classes)
  return jnp.mean(bce + kl), {"bce": jnp.mean(bce), "kl": jnp.mean(kl)}
