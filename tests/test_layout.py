"""The package's import rules: no private names across packages, and `train`
depends only on `sharding` (tasks, data, models and policies are the caller's)."""

import ast
import pathlib

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
