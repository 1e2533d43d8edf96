"""The input-gradients main in a small setting: the three models train, the signal
shares are shares, DiffROAR is a difference of the two retrained accuracies, and
results.md carries the verdicts."""

import csv
import json
import math

from tests.experiments.run_main import run_main


def test_input_gradients_small_setting_writes_shares_diffroar_and_verdicts(tmp_path):
  proc = run_main(
    "input_gradients", f"--workdir={tmp_path}", "--num_train=200", "--num_test=100",
    "--widths=16", "--train_steps=20", "--pgd_steps=1", "--levels=0.1", "--seeds=2",
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["model"] for r in rows] == [
    "standard MLP, BlockMNIST", "robust MLP, BlockMNIST", "standard MLP, BlockMNIST-Top",
  ]  # fmt: skip
  for r in rows:
    assert 0 <= float(r["signal share"]) <= 1 and 0 <= float(r["test acc"]) <= 1
  for r in rows[:2]:
    diff = float(r["DiffROAR@0.1"])
    assert math.isclose(diff, float(r["top acc@0.1"]) - float(r["bottom acc@0.1"]), abs_tol=1e-6)
  assert rows[2]["DiffROAR@0.1"] == ""  # BlockMNIST-Top is scored by its share only
  md = (tmp_path / "results.md").read_text()
  lines = [x for x in md.splitlines() if x.startswith("- ")]
  assert len(lines) == 4 + 2  # claims 1, 2 and two per level; two measures of (A)
  assert all(x.endswith(("agrees", "contradicts", "inconclusive")) for x in lines)
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(records) == 6 and {r["model"] for r in records} == {
    "standard",
    "robust",
    "standard_top",
  }
  assert (tmp_path / "input_gradients.png").stat().st_size > 0
