"""experiments.monte_carlo_gradients in a small setting: the table, the figure, the verdicts."""

import csv
import math

from tests.experiments.run_main import run_main


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_small_run_reproduces_the_papers_variance_ordering(tmp_path):
  proc = run_main(
    "monte_carlo_gradients",
    f"--workdir={tmp_path}",
    "--estimators=score_function,pathwise,measure_valued",
    "--num_ks=3",
    "--seeds=4",
    "--num_batches=100",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "variance.png").stat().st_size > 0
  cells = _rows(tmp_path / "variances.csv")
  assert len(cells) == 3 * 3 * 2 * 3  # costs x ks x (mu, sigma) x estimators
  assert all(math.isfinite(float(r["variance (ours)"])) for r in cells)
  # The exact single-sample variances (the integrals of the official notebook)
  # at mu = sigma = 1 and k = 0, in closed form: pathwise 2 (x - k) has variance
  # 4 sigma^2 = 4; the score function (x - k)^2 (x - mu) has 30 (moments of N(1, 1)).
  exact = {
    (r["estimator"], r["theta"]): float(r["exact (quadrature)"])
    for r in cells
    if r["cost"] == "(x - k)^2" and float(r["k"]) == 0.0
  }
  assert abs(exact[("pathwise", "mu")] - 4) < 1e-9
  assert abs(exact[("score_function", "mu")] - 30) < 1e-6
  # ours within 5 standard errors (over the 4 seeds) of the exact variance,
  # in all but a few cells (a t-statistic on 3 degrees of freedom has heavy tails)
  z = [abs(float(r["z vs exact"])) for r in cells if r["z vs exact"] not in ("", "nan")]
  assert sum(v < 5 for v in z) >= 0.9 * len(z), z
  claims = _rows(tmp_path / "results.csv")
  verdicts = {r["claim"].split(": ", 1)[1]: r["verdict"] for r in claims}
  assert len(claims) == 9
  assert all(
    v in ("agrees", "contradicts", "inconclusive", "not measured") for v in verdicts.values()
  )
  # the baseline was not run, so its claims are not measured; the large effects agree
  assert sum(v == "not measured" for v in verdicts.values()) == 2
  assert verdicts["the pathwise variance (mu) grows with the frequency k"] == "agrees"
  assert (
    verdicts["the score function's variance (mu) grows with the distance between mu and k"]
    == "agrees"
  )
  assert "Verdicts: " in (tmp_path / "results.md").read_text()
