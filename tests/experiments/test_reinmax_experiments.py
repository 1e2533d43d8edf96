"""The ReinMax experiments in small settings."""

import csv
import math

import pytest

from tests.experiments.run_main import assert_flag_error, run_main


def _rows(workdir):
  with open(workdir / "results.csv") as f:
    return list(csv.DictReader(f))


def test_polynomial_st_stalls_where_reinmax_reaches_the_optimum(tmp_path):
  # A short, fast version of the paper's study (lr 0.05, 16 latents, 300 steps):
  # ST's first-order fixed point for p = 2 is loss c(1 - c) = 0.2475, while the
  # optimum c^2 = 0.2025 is what the exact gradient and ReinMax approach.
  proc = run_main(
    "reinmax_polynomial",
    f"--workdir={tmp_path}",
    "--seeds=1",
    "--powers=2",
    "--num_latents=16",
    "--num_steps=300",
    "--learning_rate=0.05",
    "--probe_every=100",
    "--probe_draws=32",
    "--checkpoint_every=100",
    "--estimators=exact,straight_through,reinmax,straight_through_gumbel,gumbel_rao,reinforce",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  final = {r["estimator"]: float(r["final loss (mean)"]) for r in _rows(tmp_path)}
  assert abs(final["straight_through"] - 0.2475) < 0.002
  assert final["exact"] - 0.2025 < 0.001 and final["reinmax"] - 0.2025 < 0.002
  assert final["reinforce"] - 0.2025 < 0.002
  assert all(math.isfinite(v) for v in final.values())
  for name in ("results.md", "curves_p2.png", "gradient_quality_p2.png"):
    assert (tmp_path / name).stat().st_size > 0
  # started again: every run resumes from its final checkpoint, same table
  again = run_main(
    "reinmax_polynomial",
    f"--workdir={tmp_path}",
    "--seeds=1",
    "--powers=2",
    "--num_latents=16",
    "--num_steps=300",
    "--learning_rate=0.05",
    "--probe_every=100",
    "--probe_draws=32",
    "--checkpoint_every=100",
    "--estimators=exact,straight_through",
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert {r["estimator"]: float(r["final loss (mean)"]) for r in _rows(tmp_path)} == {
    k: final[k] for k in ("exact", "straight_through")
  }


def test_vae_small_setting_reports_the_estimators_it_ran(tmp_path):
  # Two of the four estimators (each is one more compiled step; all four run by
  # default and every estimator is checked against the exact gradient in
  # tests/discrete); 1 epoch, batches of 200: 20 steps.
  proc = run_main(
    "reinmax_vae",
    f"--workdir={tmp_path}",
    "--configs=8x4",
    "--estimators=straight_through_gumbel,reinmax",
    "--num_epochs=1",
    "--batch_size=200",
    "--eval_samples=1",
    "--log_every=1",  # every step logged: one compiled step, no lean twin
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = _rows(tmp_path)
  assert [r["estimator"] for r in rows] == ["straight_through_gumbel", "reinmax"]
  for r in rows:
    # 784 Bernoulli pixels: a 1-epoch model sits between a good fit and chance (543 nats)
    assert 50 < float(r["test -ELBO"]) < 543.5 and 50 < float(r["train -ELBO"]) < 543.5
  assert sorted(int(r["rank (test)"]) for r in rows) == [1, 2]
  assert (tmp_path / "train_curves_8x4.png").stat().st_size > 0
  assert "Paper numbers" in (tmp_path / "results.md").read_text()


def test_vae_reads_a_local_full_mnist_file(tmp_path):
  # A machine with the full set passes --full_mnist=PATH.npz (uint8 images, the
  # layout of the usual mnist.npz); a small generated file stands in for it.
  import numpy as np

  rng = np.random.default_rng(0)
  path = tmp_path / "mnist.npz"
  np.savez(
    path,
    x_train=rng.integers(0, 256, (160, 28, 28), dtype=np.uint8),
    x_test=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
  )
  out = tmp_path / "run"
  proc = run_main(
    "reinmax_vae",
    f"--workdir={out}",
    f"--full_mnist={path}",
    "--configs=8x4",
    "--estimators=reinmax",
    "--num_epochs=1",
    "--batch_size=40",
    "--eval_samples=1",
    "--log_every=2",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  (row,) = _rows(out)
  # uniform noise pixels binarized at 0.5: -ELBO near 784 log 2 = 543 nats, finite
  assert 300 < float(row["test -ELBO"]) < 700
  assert "local full set" in (out / "results.md").read_text()


@pytest.mark.parametrize(
  "main,flag,message",
  [
    (
      "reinmax_polynomial",
      "--powers=0.5",
      "--powers must be a comma-separated list of numbers >= 1",
    ),
    ("reinmax_polynomial", "--temperature=0", "--temperature must be > 0"),
    ("reinmax_polynomial", "--estimators=st", "--estimators must be one of exact"),
    ("reinmax_vae", "--configs=9x9", "--configs must be one of 8x4"),
    ("reinmax_vae", "--estimators=reinforce", "--estimators must be one of straight_through"),
    ("reinmax_vae", "--batch_size=100", "--batch_size must be divisible by 8 devices"),
  ],
)
def test_bad_flags_stop_before_any_compute(tmp_path, main, flag, message):
  assert_flag_error(main, tmp_path, flag, message)


def test_polynomial_quality_points_score_reinmax_rao_and_cv_against_reinmax(tmp_path):
  # --quality_points: every estimator at the same random points against the exact
  # gradient, and the paired verdict of ReinMax-Rao/CV against ReinMax in results.md
  proc = run_main(
    "reinmax_polynomial",
    f"--workdir={tmp_path}",
    "--seeds=1",
    "--powers=2",
    "--num_latents=4",
    "--num_steps=10",
    "--probe_every=10",
    "--probe_draws=4",
    "--checkpoint_every=10",
    "--quality_points=3",
    "--quality_draws=64",
    "--estimators=reinmax,reinmax_rao,reinmax_cv",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "gradient_quality.csv") as f:
    rows = {r["estimator"]: r for r in csv.DictReader(f)}
  assert set(rows) == {"reinmax", "reinmax_rao", "reinmax_cv"}
  for r in rows.values():
    assert math.isfinite(float(r["relative variance"])) and float(r["relative variance"]) > 0
    assert -1 <= float(r["cosine"]) <= 1
  text = (tmp_path / "results.md").read_text()
  assert "ReinMax-Rao and ReinMax-CV have lower variance" in text
  for n in ("reinmax_rao", "reinmax_cv"):  # a variance and a bias verdict each
    line = next(x for x in text.splitlines() if f"{n} vs reinmax: variance ratio" in x)
    assert sum(line.count(f"**{v}**") for v in ("agrees", "contradicts", "inconclusive")) == 2
