"""Play Colab: an edition notebook run top to bottom in a fresh environment, outside the repository.

A fresh venv sees the pinned third-party packages through a ``.pth`` file (as
``test_install.py`` does; nothing is downloaded: ``PIP_NO_INDEX=1``), but not ``ppo_lab``. A
fake ``google.colab`` module makes the notebook's first cell take its Colab branch, and that
cell's ``%pip install "ppo-lab[llm] @ git+<repository.url>@v<__version__>"`` runs against a local
clone of the working tree tagged ``v<__version__>`` (URL substituted, tag kept). The rest of the
notebook then runs with nbclient in that venv's kernel, in a folder outside the repository, so
everything it reads (the benchmark results included) must come from the installed package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest
import yaml

import ppo_lab
from conftest import ROOT

pytestmark = [pytest.mark.book, pytest.mark.slow]

REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text("utf-8"))["repository"]["url"]
CHAPTER = "04_gae"  # short (about a minute), and it reads package data: ppo_lab.results


def _tagged_clone(dest: Path) -> Path:
    """The working tree as it is now (committed or not), as a git repository tagged v<version>."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)], check=True)
    shutil.copytree(ROOT / "ppo_lab", dest / "ppo_lab", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        (dest / f).write_bytes((ROOT / f).read_bytes())
    git = ["git", "-C", str(dest), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "wip", "--allow-empty"], check=True)
    subprocess.run([*git, "tag", f"v{ppo_lab.__version__}"], check=True)
    return dest


def _fresh_venv(dest: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(dest)
    py = dest / "bin" / "python"
    # The venv's own old setuptools would hide the pinned one (torch asks for a recent one).
    subprocess.run([py, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True, capture_output=True)
    site = subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    Path(site, "book_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


def test_edition_notebook_runs_as_on_colab(tmp_path, monkeypatch):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    from nbclient import NotebookClient

    clone = _tagged_clone(tmp_path / "repo")
    py = _fresh_venv(tmp_path / "colab-venv")
    kernels = tmp_path / "jupyter" / "kernels" / "colab"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(py), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab (simulated)", "language": "python",
        # No package index (everything pinned is already visible), no isolated build env
        # (it would fetch setuptools), no Hugging Face hub.
        "env": {"PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    nb = nbformat.read(ROOT / "notebooks" / f"{CHAPTER}.ipynb", as_version=4)
    install = nb.cells[0]
    spec = f"git+{REPO_URL}@v{ppo_lab.__version__}"
    assert spec in install.source and 'if "google.colab" in sys.modules:' in install.source
    # pip needs a host in a git+file URL inside a "name @ url" requirement
    install.source = install.source.replace(f"git+{REPO_URL}@", f"git+file://localhost{clone}@")
    play_colab = nbformat.v4.new_code_cell('import sys, types\nsys.modules["google.colab"] = types.ModuleType("google.colab")')
    where = nbformat.v4.new_code_cell(
        "import pathlib, ppo_lab\n"
        "print(pathlib.Path(ppo_lab.__file__).resolve())\nprint(pathlib.Path.cwd().resolve())")
    nb.cells = [play_colab, install, where, *nb.cells[1:]]

    workdir = tmp_path / "colab-session"
    workdir.mkdir()
    NotebookClient(nb, timeout=600, kernel_name="colab", resources={"metadata": {"path": str(workdir)}}).execute()

    install_text = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert "error" not in install_text.lower(), install_text[-2000:]
    imported, cwd = nb.cells[2].outputs[0]["text"].split()
    assert Path(imported).is_relative_to(tmp_path / "colab-venv"), f"ppo_lab imported from {imported}"
    assert not Path(cwd).is_relative_to(ROOT)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[:1]
