"""Faults a long run meets: damaged checkpoints, divergence, a second run on the
same workdir, restarts with other flags, strict JSON. Each was a reported repro."""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import sharding, train
from tests.train.test_loop import _setup

KW = dict(checkpoint_every=10, log_every=5, max_to_keep=5)


def _run(workdir, num_steps, **kw):
  state, step, batches, _ = _setup(sharding.make_mesh())
  return train.fit(state, step, batches, num_steps=num_steps, workdir=str(workdir), **{**KW, **kw})


def _largest_data_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  data = [f for f in files if f"{os.sep}d{os.sep}" in f] or files
  return max(data, key=os.path.getsize)


def _flip(step_dir):
  path = _largest_data_file(step_dir)
  raw = bytearray(open(path, "rb").read())
  for i in range(min(64, len(raw))):
    raw[len(raw) // 2 - 32 + i] ^= 0xFF
  open(path, "wb").write(bytes(raw))


def _truncate(step_dir):
  path = _largest_data_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _drop_metadata(step_dir):
  os.remove(
    os.path.join(step_dir, "_CHECKPOINT_METADATA")
    if os.path.exists(os.path.join(step_dir, "_CHECKPOINT_METADATA"))
    else os.path.join(step_dir, "default", "_METADATA")
  )


def _drop_default(step_dir):
  import shutil

  shutil.rmtree(os.path.join(step_dir, "default"))


@pytest.mark.parametrize(
  "damage",
  [_flip, _truncate, _drop_metadata, _drop_default],
  ids=["bit_flips", "truncation", "missing_metadata", "missing_default"],
)
def test_a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(tmp_path, damage):
  clean_state, clean_last = _run(tmp_path / "clean", 40)
  _run(tmp_path / "hit", 30)
  damage(str(tmp_path / "hit" / "checkpoints" / "30"))
  state, last = _run(tmp_path / "hit", 40)
  # rejected, kept on disk, and the run redid steps 21-40 from checkpoint 20
  assert os.path.isdir(tmp_path / "hit" / "checkpoints_rejected" / "30")
  assert last == clean_last
  assert train.read_metrics(str(tmp_path / "hit" / "metrics.jsonl")) == train.read_metrics(
    str(tmp_path / "clean" / "metrics.jsonl")
  )
  np.testing.assert_array_equal(state.params["w"], clean_state.params["w"])


def test_every_checkpoint_has_a_checksum_and_pruned_ones_lose_theirs(tmp_path):
  _run(tmp_path, 40, max_to_keep=2)
  sums = sorted(os.listdir(tmp_path / "checkpoint_checksums"))
  assert sums == ["30.json", "40.json"]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["30", "40"]


def test_divergence_stops_with_the_step_and_keeps_the_last_finite_checkpoint(tmp_path):
  # The loss of this linear regression diverges under a step size of 2: it
  # overflows to inf around step 60 and then to NaN.
  import optax

  _, _, batches, loss_fn = _setup(sharding.make_mesh())
  opt = optax.sgd(2.0)
  fresh = lambda: train.TrainState.create({"w": jnp.zeros(4)}, opt, jax.random.key(0))  # noqa: E731
  state = fresh()
  step = train.make_train_step(loss_fn, opt)
  with pytest.raises(
    train.NonFiniteError,
    match=r"^step \d+: the loss is .*the last finite "
    r"checkpoint is step \d+ in",
  ):
    train.fit(state, step, batches, num_steps=400, workdir=str(tmp_path), **KW)
  kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  restored, at = train.restore_latest(
    train.make_manager(str(tmp_path / "checkpoints")),
    fresh(),
  )
  assert at == kept[-1] and np.all(np.isfinite(np.asarray(restored.params["w"])))
  # metrics.jsonl stays strict JSON: the non-finite loss is written as null
  text = (tmp_path / "metrics.jsonl").read_text()
  assert "NaN" not in text and "Infinity" not in text
  for line in text.splitlines():
    json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
  assert not np.isfinite(train.read_metrics(str(tmp_path / "metrics.jsonl"))[-1]["loss"])
  # and a study of divergence can opt out and record it
  state2 = fresh()
  _, last = train.fit(
    state2,
    step,
    batches,
    num_steps=100,
    workdir=str(tmp_path / "opt_out"),
    stop_on_nonfinite=False,
    **KW,
  )
  assert last["step"] == 100 and not np.isfinite(last["loss"])


def test_a_restart_with_another_cadence_or_fewer_steps_is_refused(tmp_path):
  _run(tmp_path, 30)
  with pytest.raises(
    train.RestartMismatch,
    match="log_every: the run in .* was started with log_every=5; restarting with 10",
  ):
    _run(tmp_path, 40, log_every=10)
  with pytest.raises(train.RestartMismatch, match="num_steps: 20 is below step 30"):
    _run(tmp_path, 20)
  _, last = _run(tmp_path, 40)  # the original flags still resume
  assert last["step"] == 40


def test_a_second_process_on_the_same_workdir_is_refused_naming_the_holder(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
  cmd = [
    sys.executable,
    "-m",
    "experiments.train_classifier",
    f"--workdir={tmp_path}",
    "--num_steps=100000",
    "--hidden=8",
    "--checkpoint_every=100000",
    "--eval_every=0",
  ]
  first = subprocess.Popen(
    cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  try:
    lock = tmp_path / ".lock"
    for _ in range(600):  # the first run holds the lock once it has started
      if lock.exists() and lock.read_text().strip():
        break
      time.sleep(0.1)
    second = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    holder = lock.read_text().strip()
  finally:
    first.kill()
    first.wait()
  assert second.returncode == 1, second.stderr[-2000:]
  last = second.stderr.strip().splitlines()[-1]
  assert last.startswith("train_classifier: workdir: ") and holder in last, last
  assert str(first.pid) in holder
