"""README's Python examples run as written (workdir redirected to a temp dir)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_blocks_run(tmp_path):
  text = open(os.path.join(ROOT, "README.md")).read()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert len(blocks) >= 2
  namespace: dict = {}
  for block in blocks:
    exec(
      compile(
        re.sub(r'"/tmp/(run\w*)"', lambda m: repr(str(tmp_path / m.group(1))), block),
        "README.md",
        "exec",
      ),
      namespace,
    )
  assert namespace["last"]["step"] == 400  # the second block resumed the first's run
  assert namespace["last"]["curvature/lambda_max"] > 0
  assert (tmp_path / "run" / "metrics.jsonl").exists()
  assert namespace["nnx_last"]["step"] == 100  # the Flax NNX block
  assert (tmp_path / "run_nnx" / "metrics.jsonl").exists()
