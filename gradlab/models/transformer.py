"""A tiny causal transformer language model (flax), for the sequence tasks."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class _Block(nn.Module):
  dim: int
  heads: int

  @nn.compact
  def __call__(self, x, mask):
    h = nn.LayerNorm(name="ln_attn")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attn")(h, h, mask=mask)
    h = nn.LayerNorm(name="ln_mlp")(x)
    h = nn.Dense(4 * self.dim, name="mlp_in")(h)
    return x + nn.Dense(self.dim, name="mlp_out")(nn.gelu(h))


class TinyTransformer(nn.Module):
  """Pre-LayerNorm decoder: token + learned position embeddings, ``layers``
  blocks of causal self-attention and MLP, a final LayerNorm and an
  untied output head ``head``. Maps int tokens ``[B, T]`` to logits ``[B, T, vocab]``.
  """

  vocab: int
  dim: int = 64
  heads: int = 4
  layers: int = 2
  max_len: int = 64

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    if tokens.ndim != 2:
      raise ValueError(f"tokens: expected [batch, time] integers, got shape {tokens.shape}")
    t = tokens.shape[1]
    if t > self.max_len:
      raise ValueError(f"tokens: sequence length {t} exceeds max_len={self.max_len}")
    x = nn.Embed(self.vocab, self.dim, name="embed")(tokens)
    x = x + self.param("pos", nn.initializers.normal(0.02), (self.max_len, self.dim))[:t]
    mask = nn.make_causal_mask(jnp.ones(tokens.shape, jnp.int32))
    for i in range(self.layers):
      x = _Block(self.dim, self.heads, name=f"block_{i}")(x, mask)
    x = nn.LayerNorm(name="ln_final")(x)
    return nn.Dense(self.vocab, name="head")(x)
