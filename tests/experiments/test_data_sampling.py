"""The data_sampling main in a small setting: every claim runs, its measured
variances agree with the exact closed forms within their Monte-Carlo error, the
verdicts are the reporting rule's, and a restart reuses the finished units."""

import csv
import json

import numpy as np

from tests.experiments.run_main import run_main

ARGS = ("--steps=20", "--seeds=2", "--variance_draws=400", "--dga_steps=40", "--log_every=5")


def test_data_sampling_small_setting_checks_every_claim(tmp_path):
  proc = run_main("data_sampling", f"--workdir={tmp_path}", *ARGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  units = {n: json.loads((tmp_path / "units" / f"{n}.json").read_text())
           for n in ("importance", "mixing", "dga")}  # fmt: skip
  # measured (400 draws) against exact: 5 Monte-Carlo standard errors each, 8 checks:
  # fails by chance ~5e-6
  for u in units["importance"]:
    for arm in ("uniform", "importance"):
      mean, se = u["measured"][arm]
      assert abs(mean - u["closed"][arm]) < 5 * se, (arm, mean, se, u["closed"][arm])
    # the tracked q can be no better than the optimum (Cauchy-Schwarz)
    assert u["closed"]["optimal"] <= u["closed"]["importance"] * (1 + 1e-5)
  for u in units["mixing"]:
    for arm in ("upsampling", "upweighting"):
      mean, se = u["measured"][arm]
      assert abs(mean - u["closed"][arm]) < 5 * se, (arm, mean, se, u["closed"][arm])
    assert u["mean_gap"] < 1e-5  # equal means: float32 rounding of sums of ~1k terms
  for u in units["dga"]:
    for name in ("DGA", "DoGE (normalized, clipped)"):
      w = np.asarray(u[name]["second_half_weights"])
      assert abs(w.sum() - 1) < 1e-5 and len(u[name]["curve"]) == 40
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert {r["claim"].split(":")[0] for r in rows} == {"1", "2", "3"}
  md = (tmp_path / "results.md").read_text()
  verdicts = [line for line in md.splitlines() if line.startswith("- ")]
  assert len(verdicts) == 5
  for line in verdicts:
    assert line.endswith(("agrees", "contradicts", "inconclusive")), line
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "step" in r] == [5, 10, 15, 20]
  assert [r["dga_step"] for r in records if "dga_step" in r] == [5 * i for i in range(1, 9)]
  assert (tmp_path / "data_sampling.png").stat().st_size > 0
  # a restart reads the finished units back and writes the same table
  again = run_main("data_sampling", f"--workdir={tmp_path}", *ARGS)
  assert again.returncode == 0, again.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    assert list(csv.DictReader(f)) == rows
