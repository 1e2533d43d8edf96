"""The Hessian-alignment experiment in its small setting: the table, the curves, the verdicts."""

import csv
import json
import math

from tests.experiments.run_main import assert_flag_error, run_main


def test_hessian_alignment_small_setting(tmp_path):
  args = (
    f"--workdir={tmp_path}",
    "--methods=erm,hutchinson",  # (HGP's path is the same with another penalty)
    "--penalty_scales=1,100",
    "--num_steps=20",
    "--seeds=2",
    "--num_probes=2",
    "--hidden=8",
    "--batch_size=8",
    "--log_every=10",
  )
  proc = run_main("hessian_alignment", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["method"], float(r["scale"])) for r in rows] == [
    ("erm", 0.0),
    ("hutchinson", 1.0),
    ("hutchinson", 100.0),
  ]
  for r in rows:
    for k in ("train acc", "val acc (train domains)", "test acc (held-out domain)"):
      assert 0.0 <= float(r[k]) <= 1.0
    assert math.isfinite(float(r["test se"])) and float(r["final penalty"]) >= 0
    assert (float(r["final penalty"]) > 0) == (r["method"] != "erm")
  text = (tmp_path / "results.md").read_text()
  assert "**Paper's claim.**" in text
  for method in ("hutchinson",):
    verdicts = [line for line in text.splitlines() if line.startswith(f"* {method} (scale ")]
    assert len(verdicts) == 1
    assert any(f"**{v}**" in verdicts[0] for v in ("agrees", "contradicts", "inconclusive"))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert len(records) == 3 * 2 and {r["step"] for r in records} == {10, 20}
  assert all(math.isfinite(r["loss"]) for r in records)
  assert (tmp_path / "accuracy.png").stat().st_size > 0
  # a restart reuses every finished unit: same table, nothing retrained
  again = run_main("hessian_alignment", *args)
  assert again.returncode == 0 and (tmp_path / "results.md").read_text() == text


def test_hessian_alignment_refuses_a_run_without_erm(tmp_path):
  assert_flag_error(
    "hessian_alignment", tmp_path, "--methods=hgp", "--methods must be a list that includes erm"
  )
