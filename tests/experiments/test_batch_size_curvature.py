"""experiments.batch_size_curvature in a small setting."""

import csv
import math

from tests.experiments.run_main import assert_flag_error, run_main

SMALL = (
  "--num_examples=200",
  "--width=8",
  "--train_steps=100",
  "--train_batch_size=50",
  "--batch_sizes=8,32,128",
  "--num_batches=6",
  "--lanczos_iterations=10",
  "--noise_probes=2",
  "--optimizers=sgd",
  "--lr_seeds=2",
  "--lr_steps=20",
  "--lr_points=4",
  "--lr_rounds=2",
  "--trace_budgets=12",
  "--trace_repeats=8",
)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_small_setting_writes_both_tables_and_computed_verdicts(tmp_path):
  proc = run_main("batch_size_curvature", f"--workdir={tmp_path}", *SMALL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = _rows(tmp_path / "results.csv")
  assert [int(r["B"]) for r in rows] == [8, 32, 128]
  for r in rows:
    for col in ("E lambda_max(H_B)", "stderr", "lambda_max(H)", "spiked prediction"):
      assert math.isfinite(float(r[col])), (col, r)
    assert float(r["max Lanczos residual"]) < 1e-2 * float(r["lambda_max(H)"])
    # Jensen: E lambda_max(H_B) >= lambda_max(H), so a sample mean is not far below it
    # (4 standard errors, plus Lanczos' own residual-sized error)
    lam, mean, se = float(r["lambda_max(H)"]), float(r["E lambda_max(H_B)"]), float(r["stderr"])
    assert mean > lam - 4 * se - 1e-3 * lam, r
    assert int(r["sgd censored"]) == 0 and float(r["sgd eta_max"]) > 0
  text = (tmp_path / "results.md").read_text()
  lines = [line for line in text.splitlines() if line.startswith("- ")]
  # Jensen, the 1/B fit, the critical batch (a number, no claim), SGD's exponent, SGD
  # against 2 / lambda_B
  assert len(lines) == 5 and lines[2].startswith("- Critical batch B* = ")
  for line in lines[:2] + lines[3:]:
    assert any(v in line for v in ("agrees", "contradicts", "inconclusive")), line
  trace = _rows(tmp_path / "trace_estimators.csv")
  names = {(r["matrix"], r["estimator"]) for r in trace}
  assert ("hessian", "XTrace") in names and ("ggn", "XNysTrace") in names
  assert ("hessian", "XDiag") in names and ("ggn", "Nystrom++") in names
  assert all(math.isfinite(float(r["MSE"])) and float(r["MSE"]) > 0 for r in trace)
  assert "| XTrace |" in text  # part 2's table is in results.md too
  assert (tmp_path / "batch_size_curvature.png").stat().st_size > 0
  assert (tmp_path / "metrics.jsonl").stat().st_size > 0


def test_refuses_bad_flags_naming_them(tmp_path):
  for flag, message in (
    ("--batch_sizes=8,8,16", "--batch_sizes must be distinct sizes"),
    ("--batch_sizes=8,2000,16", "--batch_sizes must be at least 3 comma-separated integers"),
    ("--trace_budgets=10", "--trace_budgets must be a comma-separated list of multiples of 6"),
    ("--lr_steps=25", "--lr_steps must be a multiple of --lr_check_every=10"),
    ("--sgd_high=0.0001", "--sgd_high must be > --sgd_low"),
    ("--optimizers=lion", "--optimizers must be one of sgd, adam"),
    ("--divergence_factor=1", "--divergence_factor must be > 1"),
  ):
    assert_flag_error("batch_size_curvature", tmp_path, flag, message)
