"""experiments.mode_connectivity in a small setting: every row and verdict is written, the
barriers are finite, and weight matching lowers the naive barrier."""

import csv
import math

from tests.experiments.run_main import assert_flag_error, run_main


def test_mode_connectivity_small_setting(tmp_path):
  proc = run_main(
    "mode_connectivity", f"--workdir={tmp_path}", "--widths=8,24", "--instability_width=8",
    "--num_steps=30", "--seeds=2", "--rewind_steps=0,5", "--imp_rounds=1",
    "--num_points=5", "--batch_size=32",
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = {r["setting"]: r for r in csv.DictReader(f)}
  expected = {f"width {w}, {p} path" for w in (8, 24) for p in ("naive", "matched")}
  expected |= {"dense, rewind k=0", "dense, rewind k=5"}
  assert expected <= set(rows) and sum(s.startswith("IMP 20% pruned") for s in rows) == 2
  for r in rows.values():
    assert all(math.isfinite(float(r[c])) for c in r if "barrier" in c or c.endswith(" se"))
  # the naive path between independent networks has a barrier, and matching lowers it
  naive = float(rows["width 24, naive path"]["test_loss barrier"])
  assert naive > 0.1 and float(rows["width 24, matched path"]["test_loss barrier"]) < naive
  text = (tmp_path / "results.md").read_text()
  assert (
    text.count("**agrees**") + text.count("**inconclusive**") + text.count("**contradicts**") == 6
  )
  assert "Git Re-Basin" in text and "Frankle et al." in text
  assert (tmp_path / "mode_connectivity.png").stat().st_size > 0
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
  # a restart reuses every finished unit and writes the same table
  again = run_main(
    "mode_connectivity", f"--workdir={tmp_path}", "--widths=8,24", "--instability_width=8",
    "--num_steps=30", "--seeds=2", "--rewind_steps=0,5", "--imp_rounds=1",
    "--num_points=5", "--batch_size=32",
  )  # fmt: skip
  assert again.returncode == 0 and (tmp_path / "results.md").read_text() == text
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


def test_mode_connectivity_refuses_a_rewind_step_past_training(tmp_path):
  assert_flag_error(
    "mode_connectivity", tmp_path, "--rewind_steps=0,2000", "--rewind_steps must be a comma"
  )
