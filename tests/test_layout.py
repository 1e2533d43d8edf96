"""The package's import rules: no private names across packages, and `train`
depends only on `sharding` (tasks, data, models and policies are the caller's);
its public surface: sorted ``__all__`` lists of documented names; and the
layout in docs/design.md."""

import ast
import importlib
import inspect
import json
import pathlib
import re
import types

ROOT = pathlib.Path(__file__).resolve().parent.parent / "gradlab"


def _imports(path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gradlab"):
      yield node.module, [a.name for a in node.names]
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("gradlab"):
          yield a.name, []


def _package(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def test_no_package_imports_a_private_name_of_another_package():
  bad = []
  for path in ROOT.rglob("*.py"):
    own = path.relative_to(ROOT).parts[0].removesuffix(".py")
    for module, names in _imports(path):
      other = _package(module)
      if other in (own, "_checks"):  # gradlab._checks is the library's shared private module
        continue
      if module == "gradlab":
        names = [n for n in names if n != "_checks"]
      hidden = [n for n in names if n.startswith("_")] + (
        [module] if any(p.startswith("_") for p in module.split(".")[2:]) else []
      )
      if hidden:
        bad.append(f"{path.relative_to(ROOT)}: {module} {hidden}")
  assert not bad, bad


def test_train_depends_only_on_sharding():
  seen = set()
  for path in (ROOT / "train").rglob("*.py"):
    for module, names in _imports(path):
      seen.add(_package(module) if module != "gradlab" else names[0])
  assert seen <= {"train", "sharding", "_checks"}, seen


def test_privacy_attacks_depend_only_on_the_shared_checks():
  # the attacks are pure functions of a loss and a gradient; the defenses they are
  # measured against (clipping, noise) live in transforms, and experiments wire the two
  seen = set()
  for path in (ROOT / "privacy").rglob("*.py"):
    for module, names in _imports(path):
      seen.add(_package(module) if module != "gradlab" else names[0])
  assert seen <= {"privacy", "_checks"}, seen


# ---------------------------------------------------------------------------
# The public surface: each subpackage's ``__all__`` is sorted, names only what
# the package holds, and every function in it is one a user calls.

REPO = ROOT.parent
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))

# Helpers that were exported once and are internal (issue 26): a guard, a check,
# a sampler's pieces. The general rule below would catch each of them again;
# this list keeps the regression visible.
FORMER_EXPORTS = {
  "curvature": ["check_scalar_loss", "rademacher", "sample_batch_indices"],
  "discrete": ["reste_slope"],
  "gradstats": ["random_directions"],
  "influence": [
    "logra_project",
    "logra_projection",
    "module_name",
    "normalize_rows",
    "pearson",
    "rank",
  ],
  "models": ["RowPlan", "plan_rows", "row_probabilities", "winners"],
  "monte_carlo": ["measure_valued_estimation_mean", "measure_valued_estimation_std"],
  "policy": ["pacs_scores", "pacs_weights", "round_preserving_sum"],
  "transforms": [
    "all_finite",
    "decision_thresholds",
    "inline_guard",
    "inline_guarded_chain",
    "scale",  # SCALE is column_normalized_sgd: optax.scale multiplies by a constant
    "scale_labels",
    "spam_warmup_factor",
    "winsorize",
  ],
}


def _subpackage(name):
  return importlib.import_module(f"gradlab.{name}")


def test_every_all_is_sorted_unique_and_names_exactly_the_public_namespace():
  bad = []
  for name in PACKAGES:
    pkg = _subpackage(name)
    names = list(pkg.__all__)
    if names != sorted(set(names)):
      bad.append(f"{name}: __all__ is not sorted (or has duplicates)")
    bad += [f"{name}.{n}: private name exported" for n in names if n.startswith("_")]
    bad += [f"{name}.{n}: in __all__, not in the package" for n in names if not hasattr(pkg, n)]
    # a name imported into the package namespace is exported, or it is a submodule
    public = {
      n
      for n, v in vars(pkg).items()
      if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    bad += [f"{name}.{n}: in the namespace, not in __all__" for n in sorted(public - set(names))]
    bad += [
      f"{name}.{n}: internal, exported again" for n in FORMER_EXPORTS.get(name, []) if n in names
    ]
  assert not bad, bad


def _outside_sources():
  """(code, docs): the texts outside gradlab/ that use or document its names."""
  code = [p.read_text() for d in ("experiments", "benchmarks") for p in (REPO / d).rglob("*.py")]
  for p in (REPO / "notebooks").glob("*.ipynb"):
    code.append("\n".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"]))
  docs = [p.read_text() for p in (REPO / "README.md", REPO / "BUILD.md")]
  docs += [p.read_text() for p in (REPO / "docs").glob("*.md")]
  return code, docs


def _references(text):
  """``(package, name)`` pairs a text uses: ``pkg.name`` through any alias of
  ``from gradlab import pkg [as alias]``, ``gradlab.pkg.name``, and the names of
  ``from gradlab.pkg import ...``."""
  alias = {p: p for p in PACKAGES}
  for m in re.finditer(r"from gradlab import ([^\n]+)", text):
    for part in m.group(1).strip("()").split(","):
      bits = part.split()
      if bits and bits[0] in PACKAGES:
        alias[bits[-1]] = bits[0]
  for m in re.finditer(r"import gradlab\.(\w+) as (\w+)", text):
    alias[m.group(2)] = m.group(1)
  refs = {(alias[a], n) for a, n in re.findall(r"(?<![\w.])(\w+)\.(\w+)", text) if a in alias}
  refs |= set(re.findall(r"gradlab\.(\w+)\.(\w+)", text))
  for m in re.finditer(r"from gradlab\.(\w+) import (\([^)]*\)|[^\n]+)", text):
    refs |= {(m.group(1), n) for n in re.findall(r"\w+", m.group(2))}
  return refs


def _backticked(text):
  """Names written in backticks: ``name``, ``pkg.name``, ``gradlab.pkg.name``."""
  return {m.split(".")[-1] for m in re.findall(r"`+(?:gradlab\.)?((?:\w+\.)?\w+)", text)}


def test_every_exported_function_is_documented_or_used_outside_the_library():
  # A function in __all__ is one a user calls: its package docstring, README.md,
  # BUILD.md or docs/ names it in backticks, or an experiment, benchmark or
  # notebook calls it. A helper only other gradlab modules or the tests need is
  # imported from its module. Classes (the types of public results and states),
  # UPPER_CASE constants (an argument's valid values) and submodules are exempt.
  code, docs = _outside_sources()
  used = set().union(*map(_references, code + docs))
  documented = set().union(*map(_backticked, docs))
  bad = []
  for name in PACKAGES:
    pkg = _subpackage(name)
    own = _backticked(pkg.__doc__ or "")
    for n in pkg.__all__:
      obj = getattr(pkg, n)
      if inspect.isclass(obj) or n.isupper() or isinstance(obj, types.ModuleType):
        continue
      if (name, n) not in used and n not in own and n not in documented:
        bad.append(f"{name}.{n}")
  assert not bad, (
    "exported but neither documented nor used outside gradlab/: name each in its package "
    f"docstring, or import it from its module where it is needed: {bad}"
  )


def test_the_design_layout_lists_every_subpackage_and_top_level_module():
  text = (REPO / "docs" / "design.md").read_text()
  layout = text.split("## Layout", 1)[1].split("```")[1]
  listed = set(re.findall(r"^  (\w+/|\w+\.py) ", layout, re.M))
  want = {f"{p}/" for p in PACKAGES} | {
    p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"
  }
  assert want <= listed, sorted(want - listed)
