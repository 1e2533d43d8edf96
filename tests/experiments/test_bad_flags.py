"""Every main refuses bad flags in one line, before any compute and before it writes
anything (config.json included), so the workdir is never tied to a bad value."""

import dataclasses
import importlib

import pytest

from tests.experiments.run_main import assert_flag_error, run_main

MAINS = (
  "attribution_benchmark",
  "batch_size_curvature",
  "coherence",
  "data_pruning",
  "data_sampling",
  "dynamical_stability",
  "gradient_inversion",
  "gradient_spikes",
  "grokking",
  "hessian_alignment",
  "hessian_spectrum",
  "hyper_cleaning",
  "input_gradients",
  "inventory_hdpo",
  "less_selection",
  "linear_dynamics",
  "mislabel_detection",
  "mode_connectivity",
  "monte_carlo_gradients",
  "noise_scale",
  "optimizer_zoo",
  "policy_gradient_variance",
  "reinmax_polynomial",
  "reinmax_vae",
  "rlvr_toy",
  "schedule_refinement",
  "train_classifier",
  "unlearning",
  "wta_crs",
  "zeroth_order",
)


def _fields(name):
  return dataclasses.fields(importlib.import_module(f"experiments.{name}").Config)


# The repros of the hostile-user report, each with the flag the message must name.
REPORTED = [
  ("train_classifier", "--seed=-1", "--seed must be >= 0"),
  ("dynamical_stability", "--num_steps=1", "--num_steps must be >= 2"),
  ("noise_scale", "--num_steps=1", "--num_steps must be >= 2"),
  ("zeroth_order", "--forward_budget=2", "--forward_budget must be >= "),
  ("reinmax_vae", "--batch_size=5000", "--batch_size must be at most the 4000"),
  ("noise_scale", "--batch_size=5000", "--batch_size must be at most the 1437"),
  ("reinmax_polynomial", "--temperature=inf", "--temperature must be a finite number"),
  ("hessian_spectrum", "--learning_rate=inf", "--learning_rate must be a finite number"),
  ("reinmax_vae", "--configs=", "--configs must be a non-empty list"),
  ("reinmax_vae", "--estimators=", "--estimators must be a non-empty list"),
  ("rlvr_toy", "--methods=", "--methods must be a non-empty list"),
]


@pytest.mark.parametrize("name, flag, message", REPORTED)
def test_reported_bad_flags_stop_before_anything_is_written(tmp_path, name, flag, message):
  assert_flag_error(name, tmp_path, flag, message)


def _generated():
  cases = []
  for name in MAINS:
    for f in _fields(name):
      default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
      if isinstance(default, list) and f.name != "only":  # optimizer_zoo: empty means all
        cases.append((name, f"--{f.name}=", f"--{f.name} must be a non-empty list"))
      elif isinstance(default, float):
        cases.append((name, f"--{f.name}=inf", f"--{f.name} must be"))
      elif f.name == "seed":
        cases.append((name, "--seed=-1", "--seed must be >= 0"))
  return cases


@pytest.mark.parametrize("name, flag, message", _generated())
def test_every_main_refuses_empty_lists_infinities_and_negative_seeds(
  tmp_path, name, flag, message
):
  assert_flag_error(name, tmp_path, flag, message)


@pytest.mark.parametrize("name", MAINS)
def test_every_main_refuses_a_workdir_it_cannot_write(tmp_path, name):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  # (reinmax_vae's batch of 100 is not divisible by the 8 simulated devices)
  extra = ["--num_devices=4"] if name == "reinmax_vae" else []
  proc = run_main(name, f"--workdir={blocker / 'run'}", *extra)
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(f"{name}: --workdir must be a writable")
