import json
import os
import re

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.experiments.run_main import assert_flag_error, run_main, run_process


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _final_params(workdir, step):
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(
      os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "default")
    )
  return restored["params"] if isinstance(restored, dict) else restored[1]


def test_default_flags_reach_95_percent_on_digits(tmp_path):
  proc = run_main("train_classifier", f"--workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = _metrics(tmp_path)[-1]
  assert last["step"] == 1500
  assert last["eval/accuracy"] >= 0.95
  for name in ("results.md", "results.csv", "loss_curve.png", "config.json"):
    assert os.path.getsize(tmp_path / name) > 0
  assert "test accuracy" in (tmp_path / "results.md").read_text()


def test_sigkill_after_a_checkpoint_resumes_to_the_same_end(tmp_path):
  flags = [
    "--num_steps=60",
    "--checkpoint_every=20",
    "--log_every=5",
    "--eval_every=20",
    "--hidden=32",
  ]
  clean, crashed = tmp_path / "clean", tmp_path / "crashed"
  # the uninterrupted run in this process (the same flags and XLA flags as the
  # processes below, so the same programs); only the killed one needs its own process
  assert run_main("train_classifier", f"--workdir={clean}", *flags).returncode == 0
  killed = run_process("train_classifier", f"--workdir={crashed}", *flags, "--crash_after_step=50")
  assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL: no cleanup ran
  assert _metrics(crashed)[-1]["step"] == 50  # steps 41-50 were done after checkpoint 40
  resumed = run_process("train_classifier", f"--workdir={crashed}", *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  # Saves are asynchronous: the kill may land before step 40's save is
  # finalized, and orbax then discards it and resumes from step 20.
  assert re.search(r"Resumed from the checkpoint of step (20|40) ", resumed.stderr), resumed.stderr
  # Bit-identical: the same program on the same inputs, with step-indexed keys and batches.
  assert _metrics(crashed) == _metrics(clean)
  a, b = _final_params(crashed, 60), _final_params(clean, 60)
  for x, y in zip(sorted(_flatten(a).items()), sorted(_flatten(b).items())):
    assert x[0] == y[0]
    np.testing.assert_array_equal(x[1], y[1])


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = np.asarray(v)
  return out


def test_one_and_eight_devices_end_at_the_same_loss(tmp_path):
  # The two runs do the same arithmetic except for the order of the batch-mean
  # reductions (8 partial sums and an all-reduce against one sum), which moves a
  # float32 result by a few ulps (1 ulp = 1.2e-7 relative). Training amplifies
  # that: measured relative gaps in the train loss were 2.2e-7 by step 100,
  # 2.2e-6 by step 200 and 5e-3 by step 400, where the loss is near zero and
  # Adam divides by tiny second moments. At 120 steps we allow 1e-5 relative
  # (about 80 ulps, ~40x the measured gap); a real sharding error (a gradient
  # averaged over one shard only, a missing all-reduce) moves the loss by >1e-3.
  flags = ["--num_steps=120", "--checkpoint_every=120", "--log_every=10", "--eval_every=0"]
  ends = []
  for n in (1, 8):
    proc = run_main(
      "train_classifier", f"--workdir={tmp_path / str(n)}", f"--num_devices={n}", *flags
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ends.append(_metrics(tmp_path / str(n))[-1])
  one, eight = ends
  assert one["step"] == eight["step"] == 120
  np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
  np.testing.assert_allclose(eight["eval/loss"], one["eval/loss"], rtol=1e-5)


@pytest.mark.parametrize(
  "flag,message",
  [
    ("--learning_rate=-0.1", "--learning_rate must be > 0, got -0.1"),
    ("--batch_size=100", "--batch_size must be divisible by 8 devices x 1 microbatches, got 100"),
    ("--dataset=cifar10", "--dataset must be one of digits, mnist, got 'cifar10'"),
    ("--num_steps=0", "--num_steps must be > 0, got 0"),
    ("--optimizer=rmsprop", "--optimizer must be one of sgd, momentum, adam, adamw, adam_clip"),
  ],
)
def test_bad_flags_stop_before_any_compute(tmp_path, flag, message):
  assert_flag_error("train_classifier", tmp_path, flag, message)


def test_changed_flags_on_an_existing_workdir_are_refused(tmp_path):
  flags = ["--num_steps=5", "--checkpoint_every=5", "--hidden=8"]
  assert run_main("train_classifier", f"--workdir={tmp_path}", *flags).returncode == 0
  proc = run_main("train_classifier", f"--workdir={tmp_path}", *flags, "--seed=3")
  assert proc.returncode == 1
  assert "--seed is 3 but the run in --workdir" in proc.stderr.strip().splitlines()[-1]


def test_divergence_stops_nonzero_naming_the_step(tmp_path):
  # The repro: --learning_rate=1e308 trained to NaN and exited 0 with a NaN table.
  proc = run_main(
    "train_classifier",
    f"--workdir={tmp_path}",
    "--learning_rate=1e308",
    "--num_steps=20",
    "--hidden=8",
    "--checkpoint_every=10",
  )
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert re.match(r"train_classifier: step \d+: the (loss is|parameters hold)", last), last
  assert "the last finite checkpoint is" in last
  assert not (tmp_path / "results.md").exists()
