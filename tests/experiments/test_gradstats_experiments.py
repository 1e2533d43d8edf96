"""The gradient-statistics and zeroth-order experiments in small settings."""

import csv

import pytest

from tests.experiments.run_main import assert_flag_error, run_main


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_noise_scale_small_setting(tmp_path):
  proc = run_main(
    "noise_scale",
    f"--workdir={tmp_path}",
    "--sweep=16,64,256",
    "--lr_grid=0.5,1",
    "--num_steps=100",
    "--probe_every=20",
    "--learning_rate=0.5",
    "--target_loss=0.3",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = {r["quantity"]: float(r["value"]) for r in _rows(tmp_path / "results.csv")}
  sweep = _rows(tmp_path / "sweep.csv")
  steps = [int(r["steps to target"]) for r in sweep]
  assert steps[0] > steps[-1]  # small batches need more steps
  assert any(k.startswith("B_simple, free (8 devices)") for k in summary)
  assert all(v > 0 for v in summary.values())
  for name in ("noise_scale.png", "steps_vs_batch.png"):
    assert (tmp_path / name).stat().st_size > 0


def test_zeroth_order_small_setting(tmp_path):
  proc = run_main(
    "zeroth_order", f"--workdir={tmp_path}", "--forward_budget=1200", "--log_every=50"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {r["method"]: r for r in _rows(tmp_path / "results.csv")}
  assert set(rows) == {"first order (backprop)", "MeZO", "Sparse MeZO"}
  assert int(rows["MeZO"]["steps"]) == 600 and int(rows["first order (backprop)"]["steps"]) == 400
  for r in rows.values():
    assert float(r["final train loss"]) < 2.303  # better than chance (log 10) on the budget
  assert (tmp_path / "loss_vs_forward_passes.png").stat().st_size > 0


@pytest.mark.parametrize(
  "main,flag,message",
  [
    ("noise_scale", "--sweep=8,16", "--sweep must be at least 3 comma-separated positive"),
    ("noise_scale", "--batch_size=12", "--batch_size must be >= 2 and divisible by 8 devices"),
    ("zeroth_order", "--sparse_fraction=0", "--sparse_fraction must be in (0, 1]"),
    ("zeroth_order", "--epsilon=-1", "--epsilon must be > 0"),
  ],
)
def test_bad_flags_stop_before_any_compute(tmp_path, main, flag, message):
  assert_flag_error(main, tmp_path, flag, message)


def test_noise_scale_reports_what_it_measured_when_the_fit_is_impossible(tmp_path):
  # The repro: too few sweep sizes reach the target; the run crashed after all its
  # compute, wrote no results.md, and a rerun with more --max_steps reused the failures.
  flags = [
    "--sweep=16,64,256",
    "--lr_grid=0.5",
    "--num_steps=20",
    "--probe_every=10",
    "--learning_rate=0.5",
    "--target_loss=0.3",
  ]
  proc = run_main("noise_scale", f"--workdir={tmp_path}", *flags, "--max_steps=3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = (tmp_path / "results.md").read_text()
  assert "No B_crit fit: only 0 of the 3 sweep batch sizes reached" in text
  assert "B_simple" in text
  assert [r["steps to target"] for r in _rows(tmp_path / "sweep.csv")] == ["not reached"] * 3
  again = run_main("noise_scale", f"--workdir={tmp_path}", *flags, "--max_steps=400")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "No B_crit fit" not in (tmp_path / "results.md").read_text()
