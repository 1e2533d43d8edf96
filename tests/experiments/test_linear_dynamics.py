"""experiments.linear_dynamics in a small setting: one row per alpha, the closed form agrees
with the model gradlab.train trains, and the verdict lines are written."""

import csv
import math

from tests.experiments.run_main import assert_flag_error, run_main


def test_linear_dynamics_small_setting(tmp_path):
  proc = run_main(
    "linear_dynamics", f"--workdir={tmp_path}", "--alphas=0.5,1.25", "--input_dim=40",
    "--seeds=3", "--steps=1000", "--record_points=20", "--trained_steps=50",
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [float(r["alpha"]) for r in rows] == [0.5, 1.25]
  for r in rows:
    assert all(math.isfinite(float(v)) for v in r.values())
    # early stopping never loses to the last step (it is a minimum over steps that include it)
    assert float(r["early-stopped test error"]) <= float(r["final test error"])
    # float32 descent through gradlab.train against the closed form: ~steps * eps * E_g
    assert float(r["max gap trained vs formula"]) < 1e-4
  # N < P leaves P - N null-space modes frozen
  assert float(rows[0]["frozen modes"]) == 20 and float(rows[1]["frozen modes"]) == 0
  text = (tmp_path / "results.md").read_text()
  assert "Claim 1" in text and "Claim 2" in text
  assert (
    text.count("**agrees**") + text.count("**inconclusive**") + text.count("**contradicts**") == 2
  )
  assert (tmp_path / "test_error.png").stat().st_size > 0
  assert (tmp_path / "metrics.jsonl").stat().st_size > 0


def test_linear_dynamics_refuses_an_unstable_learning_rate(tmp_path):
  assert_flag_error("linear_dynamics", tmp_path, "--learning_rate=1.0", "--learning_rate must be <")
