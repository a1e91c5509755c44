"""The Colab cell's install path: `pip install "ppo-lab @ git+<repository>"` into a fresh venv.

(pip parses the `name @ git+file://` form badly, so the test uses the plain `git+file://` URL.)
The fresh venv sees the already-installed third-party packages through a ``.pth`` file (so the
test needs no downloads), but ``ppo_lab`` itself only through what pip installs from the
repository: package discovery, the version, the console script and the re-exported API.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.book, pytest.mark.slow]


def test_package_installs_alone_from_the_repository(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "repo"
    # The working tree as it is now (committed or not), as a git repository pip can install from.
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    shutil.copytree(ROOT / "ppo_lab", clone / "ppo_lab", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        if (ROOT / f).exists():
            (clone / f).write_bytes((ROOT / f).read_bytes())
    subprocess.run(["git", "-C", str(clone), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "wip",
                    "--allow-empty"], check=True)

    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    deps = sysconfig.get_paths()["purelib"]
    Path(site, "book_deps.pth").write_text(deps + "\n")

    pip = subprocess.run([py, "-m", "pip", "install", "-q", "--no-build-isolation", f"git+file://{clone}"],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    out = subprocess.check_output(
        [py, "-c", "import ppo_lab, pathlib; print(ppo_lab.__version__); print(pathlib.Path(ppo_lab.__file__).parent)"],
        text=True, cwd=tmp_path,
    ).split("\n")
    import ppo_lab

    assert out[0] == ppo_lab.__version__
    assert Path(out[1]).is_relative_to(env_dir), f"ppo_lab imported from {out[1]}, not the fresh venv"
    help_text = subprocess.check_output([env_dir / "bin" / "ppo-lab", "--help"], text=True)
    assert "doctor" in help_text and "train" in help_text
