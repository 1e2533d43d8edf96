"""BlockMNIST checked by its invariants: one block is the digit, the other the fixed null
patch, the recorded order says which, the order is a fair coin per image (or fixed), and
the signal share of an attribution matches a NumPy count."""

import jax
import numpy as np
import pytest

from gradlab import tasks

N = 600


@pytest.fixture(scope="module")
def blocks():
  # stand-in digits (the construction does not look at the pixels; the main uses
  # data.load_dataset("mnist"), whose 1.7 s parse this test need not pay)
  rng = np.random.default_rng(0)
  digits = rng.random((N, 784), np.float32)
  labels = rng.integers(0, 10, N).astype(np.int32)
  make = jax.jit(
    lambda key: [tasks.block_mnist(key, digits, labels, placement=p) for p in ("random", "top")]
  )
  return digits, labels, make(jax.random.key(0)), make(jax.random.key(1))


def test_every_image_is_its_digit_beside_the_null_patch(blocks):
  digits, labels, (rand, top), _ = blocks
  patch = tasks.null_patch((28, 28))
  d = digits.reshape(-1, 28, 28)
  for b in (rand, top):
    images, on_top = np.asarray(b.images), np.asarray(b.signal_on_top)
    assert images.shape == (N, 56, 28) and images.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(b.labels), labels)
    upper, lower = images[:, :28], images[:, 28:]
    signal = np.where(on_top[:, None, None], upper, lower)
    null = np.where(on_top[:, None, None], lower, upper)
    np.testing.assert_array_equal(signal, d)
    np.testing.assert_array_equal(null, np.broadcast_to(patch, null.shape))
  assert np.all(np.asarray(top.signal_on_top))
  # the patch is the same drawing everywhere and not blank: a square outline
  assert patch.sum() > 0 and set(np.unique(patch)) == {0.0, 1.0}


def test_the_block_order_is_a_fair_coin_per_image_and_set_by_the_key(blocks):
  _, _, (rand, _), (rand2, _) = blocks
  on_top = np.asarray(rand.signal_on_top)
  # Binomial(600, 1/2): 4 standard errors (sqrt(600) / 2 = 12.2) fail about 1 in 16,000
  assert abs(on_top.sum() - N / 2) < 4 * np.sqrt(N) / 2
  assert np.any(on_top != np.asarray(rand2.signal_on_top))  # another key, another order
  again = tasks.block_mnist(
    jax.random.key(0), blocks[0], blocks[1], placement="random"
  ).signal_on_top
  np.testing.assert_array_equal(np.asarray(again), on_top)  # eager = jitted, same key


def test_signal_fraction_counts_the_mass_on_the_signal_block(blocks):
  _, _, (rand, _), _ = blocks
  on_top = np.asarray(rand.signal_on_top)[:50]
  rng = np.random.default_rng(0)
  a = rng.normal(size=(50, 56 * 28)).astype(np.float32)
  a[0] = 0.0  # an all-zero attribution: no preference
  got = np.asarray(jax.jit(tasks.signal_fraction)(a, on_top))
  m = np.abs(a.reshape(50, 56, 28)).astype(np.float64)
  sig = np.where(on_top, m[:, :28].sum((1, 2)), m[:, 28:].sum((1, 2)))
  want = np.where(m.sum((1, 2)) > 0, sig / np.maximum(m.sum((1, 2)), 1e-300), 0.5)
  np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 sums of 784 terms
  region = np.asarray(tasks.signal_region(on_top))
  np.testing.assert_array_equal(np.asarray(tasks.signal_fraction(region, on_top)), 1.0)
  np.testing.assert_array_equal(np.asarray(tasks.signal_fraction(~region, on_top)), 0.0)


def test_block_mnist_refuses_bad_input(blocks):
  digits, labels = blocks[0], blocks[1]
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="^placement: "):
    tasks.block_mnist(key, digits, labels, placement="left")
  with pytest.raises(ValueError, match="^digits: "):
    tasks.block_mnist(key, digits[:, :100], labels)
  with pytest.raises(ValueError, match="^labels: "):
    tasks.block_mnist(key, digits, labels[:5])
  with pytest.raises(ValueError, match="^attributions: "):
    tasks.signal_fraction(np.ones((3, 10)), np.ones(3, bool))
