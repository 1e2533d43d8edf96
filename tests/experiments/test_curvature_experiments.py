"""The curvature experiments in small settings."""

import csv

import pytest

from tests.experiments.run_main import assert_flag_error, run_main


def _rows(workdir):
  with open(workdir / "results.csv") as f:
    return list(csv.DictReader(f))


def test_hessian_spectrum_counts_c_minus_one_outliers(tmp_path):
  proc = run_main(
    "hessian_spectrum",
    f"--workdir={tmp_path}",
    "--classes=3,5",
    "--widths=16",
    "--num_train=600",
    "--num_steps=600",
    "--slq_iterations=30",
    "--slq_runs=2",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = _rows(tmp_path)
  assert [int(r["outliers"]) for r in rows] == [int(r["C"]) - 1 for r in rows] == [2, 4]
  assert (tmp_path / "spectra.png").stat().st_size > 0


def test_dynamical_stability_gd_reaches_the_edge(tmp_path):
  # GD at eta = 0.1 reaches lambda_max = 2/eta within a few hundred steps and stays.
  proc = run_main(
    "dynamical_stability",
    f"--workdir={tmp_path}",
    "--learning_rates=0.1",
    "--num_steps=600",
    "--probe_every=200",
    "--num_probes=8",
    "--num_examples=500",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {r["method"]: r for r in _rows(tmp_path)}
  assert 0.9 < float(rows["GD"]["lambda_max*eta/2"]) < 1.2
  assert float(rows["SGD"]["lambda_max*eta/2"]) < float(rows["GD"]["lambda_max*eta/2"])
  for name in ("sharpness.png", "trace.png"):
    assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize(
  "main,flag,message",
  [
    (
      "hessian_spectrum",
      "--classes=1",
      "--classes must be a comma-separated list of integers >= 2",
    ),
    ("hessian_spectrum", "--widths=4096", "--widths must be small enough for a dense Hessian"),
    ("dynamical_stability", "--learning_rates=-1", "--learning_rates must be a comma-separated"),
    ("dynamical_stability", "--methods=adam", "--methods must be one of gd, sgd"),
    ("dynamical_stability", "--num_probes=1", "--num_probes must be >= 2"),
  ],
)
def test_bad_flags_stop_before_any_compute(tmp_path, main, flag, message):
  assert_flag_error(main, tmp_path, flag, message)
