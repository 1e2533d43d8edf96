"""``python -m benchmarks.all --quick``: every benchmark's code path runs on the CPU, so the
one GPU command is not broken when a GPU appears. The peers (torch, dattri, kronfluence,
BackPACK, ...) are not installed here: their rows must say so, and nothing may fail for
any other reason."""

import ast
import importlib.util
import math
import pathlib
import sys
import time

import pytest

from benchmarks import all as bench_all
from benchmarks import timing

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOGUS = "no_such_benchmark"  # a benchmark that raises: its row says why, and the next runs


def _cells(line: str) -> list[str]:
  """A markdown table row's cells (``\\|`` inside a cell is not a separator)."""
  inner = line.strip()[1:-1].replace("\\|", "\0")
  return [c.strip().replace("\0", "|") for c in inner.split("|")]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench") / "quick.md"
  names = list(bench_all.BENCHMARKS)
  names.insert(3, BOGUS)
  text, results = bench_all.run(device="cpu", quick=True, out=str(out), names=names, budget_s=300)
  return text, results, out, names


def test_every_benchmark_module_is_in_the_table_and_has_measure():
  modules = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - {"__init__", "all", "timing"}
  assert modules == set(bench_all.BENCHMARKS)
  for name in modules:  # read, not imported: absl allows one --json etc. per process
    tree = ast.parse((ROOT / "benchmarks" / f"{name}.py").read_text())
    fns = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "measure" in fns, name
    assert [a.arg for a in fns["measure"].args.args] == ["quick", "device"], name


def test_quick_table_parses_with_a_row_for_every_benchmark(quick):
  text, results, out, names = quick
  assert out.read_text() == text
  lines = text.splitlines()
  assert lines[0].startswith("# gradlab benchmarks")
  assert any(ln.startswith("- device: cpu") for ln in lines)
  assert any(ln.startswith("- versions: python ") and "jax " in ln for ln in lines)
  start = lines.index("| " + " | ".join(bench_all.COLUMNS) + " |")
  assert lines[start + 1] == "|" + "---|" * len(bench_all.COLUMNS)
  rows = [_cells(ln) for ln in lines[start + 2 :] if ln.startswith("|")]
  assert all(len(r) == len(bench_all.COLUMNS) for r in rows)
  by_benchmark = {}
  for r in rows:
    by_benchmark.setdefault(r[0], []).append(r)
  assert list(by_benchmark) == names  # each benchmark has rows, in the order asked for
  # the table holds what the children reported
  reported = [r for n in names for r in results[n]["rows"]]
  assert [r[1] for r in rows] == [r["name"] for r in reported]
  assert [r[2] for r in rows] == [r["note"] or f"{r['measured']:.4g}" for r in reported]


def test_quick_rows_are_measured_or_skipped_for_a_missing_peer_only(quick):
  _, results, _, _ = quick
  (bogus,) = results[BOGUS]["rows"]
  assert bogus["note"] == f"error: ModuleNotFoundError: No module named 'benchmarks.{BOGUS}'"
  pip_to_import = {v: k for k, v in timing.OPTIONAL.items()}
  for name in bench_all.BENCHMARKS:
    for r in results[name]["rows"]:
      if r["note"]:
        assert r["note"].startswith("skipped: ") and r["note"].endswith(" not installed"), (name, r)
        package = r["note"][len("skipped: ") : -len(" not installed")]
        assert package in pip_to_import, (name, r)
        assert importlib.util.find_spec(pip_to_import[package]) is None, (name, r)
      else:
        assert math.isfinite(r["measured"]), (name, r)
        assert r["device"].startswith("jax cpu") and r["command"].startswith("python -m "), r
  # every benchmark that needs no peer measured at least one figure
  jax_only = set(bench_all.BENCHMARKS) - {
    "trace_peers",
    "attribution_peers",
    "kfac_peers",
    "kfac_scores_peers",
  }
  for name in jax_only:
    assert any(not r["note"] for r in results[name]["rows"]), name


def test_a_child_that_dies_or_hangs_gives_error_rows(tmp_path):
  with open(tmp_path / "log", "w") as log:
    dead = bench_all._popen([sys.executable, "-c", "import sys; sys.exit('boom')"])
    t0 = time.perf_counter()
    got = bench_all._finish(dead, ["a"], t0=t0, deadline=t0 + 60, log=log)
    assert got["a"]["rows"][0]["note"] == "error: the process exited with 1: boom"
    t0 = time.perf_counter()
    hung = bench_all._popen([sys.executable, "-c", "import time; time.sleep(60)"])
    got = bench_all._finish(hung, ["b", "c"], t0=t0, deadline=t0 + 0.5, log=log)
  for name in ("b", "c"):
    assert got[name]["rows"][0]["note"].startswith("error: timed out after"), got
  assert hung.poll() is not None
  assert hung.returncode < 0  # killed by a signal at the deadline, not left to finish its sleep


def test_device_gpu_refuses_in_one_line_without_a_gpu_backend(monkeypatch):
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # restored after the test
  with pytest.raises(SystemExit) as e:
    bench_all._environment("gpu")
  message = str(e.value.code)
  assert message.startswith("benchmarks.all: --device=gpu, but JAX has no GPU backend here")
  assert "\n" not in message
