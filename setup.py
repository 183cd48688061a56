"""Build the fork: pristine mlx-lm 0.32.2 + patches/series, as `mlx-lm`.

The upstream sources are not in this repository: they are downloaded
(sha256-pinned sdist) and patched at build time by tools/patchq.py, so
`pip install git+<url>` and `pip install -e .` both give a patched mlx_lm.
"""

import os
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))
import patchq  # noqa: E402

try:
    patchq.materialize()
except patchq.QueueError as e:
    sys.exit(f"mlx-lm-kvq: cannot build the patched tree: {e}")

# 0.32.2+kvq.N: N is the number of patches in patches/series.
VERSION = f"0.32.2+kvq.{len(patchq.series())}"
project = tomllib.loads(patchq.upstream_pyproject())["project"]

# Upstream pulls mlx only on macOS; Linux needs a backend. Plain installs get
# the CPU one; set MLX_LM_KVQ_BACKEND=none when installing a CUDA extra.
# Upstream's console scripts, and one per command a patch adds.
scripts = dict(project["scripts"])
if (ROOT / "mlx_lm" / "kv_plan.py").exists():
    scripts["mlx_lm.kv_plan"] = "mlx_lm.kv_plan:main"

requires = list(project["dependencies"])
if os.environ.get("MLX_LM_KVQ_BACKEND", "cpu") == "cpu":
    requires.append("mlx[cpu]>=0.32.2; platform_system == 'Linux'")


class BuildPy(build_py):
    """Stamp the fork's version into the built mlx_lm/_version.py."""

    def run(self):
        super().run()
        path = Path(self.build_lib) / "mlx_lm" / "_version.py"
        if path.parent.exists():
            path.write_text(f"__version__ = {VERSION!r}\n")


setup(
    name="mlx-lm",
    version=VERSION,
    description=project["description"] + " (kvq: bounded, quantized KV caches)",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    author="MLX Contributors; mlx-lm-kvq",
    python_requires=project["requires-python"],
    packages=find_packages(include=["mlx_lm", "mlx_lm.*"]),
    package_data={"mlx_lm": ["*.md", "py.typed"]},
    install_requires=requires,
    extras_require=project["optional-dependencies"],
    entry_points={"console_scripts": [f"{k} = {v}" for k, v in scripts.items()]},
    cmdclass={"build_py": BuildPy},
)
