"""experiments.grokking in a small setting: every run trains, logs and plots."""

import csv

from tests.experiments.run_main import run_main


def test_grokking_small_setting(tmp_path):
  proc = run_main(
    "grokking", f"--workdir={tmp_path}", "--tasks=add", "--modulus=23", "--hidden=64",
    "--steps=200", "--log_every=100", "--learning_rate=0.01",
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = {r["run"]: r for r in csv.DictReader(f)}
  assert len(rows) == 4
  for r in rows.values():
    assert float(r["final train acc"]) > 0.9  # every run fits its 40% of the pairs
    assert 0 <= float(r["max collapse fraction"]) <= 1
  # the perpendicular gradient keeps the weights from growing as plain Adam's do
  perp = rows["softmax CE + perpendicular gradient, float32"]
  assert float(perp["final weight norm"]) < float(rows["softmax CE, float32"]["final weight norm"])
  assert (tmp_path / "curves_add.png").stat().st_size > 0
  assert "Prieto et al. (2025)" in (tmp_path / "results.md").read_text()
