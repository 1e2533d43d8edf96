"""Simulate an 8-device mesh on the CPU; must run before jax is imported."""

import os

# The suite is compile-bound (hundreds of small programs, each run a few
# times): XLA's CPU backend at optimization level 0 compiles them about a
# quarter faster (measured: tests/transforms + tests/curvature 134 s -> 102 s)
# and changes no result a test asserts (every tolerance is the math's, and
# runs compared bit for bit are compiled alike). XLA's older loop emitters
# (--xla_cpu_use_fusion_emitters=false) compile about twice as fast again (one
# eager op 16.6 -> 9.3 ms, a small MLP's Adam train step 126 -> 60 ms). Processes
# and notebook kernels the tests start inherit both.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "")
  + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
  + " --xla_cpu_use_fusion_emitters=false"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# One persistent compilation cache for the whole run, shared by the xdist
# workers and the processes and notebook kernels the tests start (they inherit
# the environment): a program compiled once (the same train step in the clean,
# killed and resumed runs of a resume test) is not compiled again. It starts
# empty in every run, so it saves compiles and hides no failure.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradlab-jax-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"

import jax  # noqa: E402

assert jax.device_count() == 8, "tests expect 8 simulated CPU devices"
