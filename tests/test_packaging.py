"""What users install: the sdist builds, tests and documents the package; the wheel from it
carries the extension and the metadata a package index shows."""

from __future__ import annotations

import email.parser
import importlib.util
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("build") is None, reason="PyPA build is not installed (test extra)"
)


def project_files() -> list[str]:
    """The files a clone has: tracked, or new and not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return [name for name in listed if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An sdist, and a wheel built from it (what ``pip install`` does without a wheel)."""
    # From a copy of the project's files only: setuptools also packs whatever a stale
    # ``*.egg-info/SOURCES.txt`` in the working tree lists, which a fresh clone does not have.
    tree = tmp_path_factory.mktemp("tree")
    for name in project_files():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(tree)],
        check=True,
        capture_output=True,
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_the_sdist_holds_what_the_readme_commands_and_the_tests_need(
    dists: tuple[Path, Path], tmp_path: Path
) -> None:
    sdist, _ = dists
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        if hasattr(tarfile, "data_filter"):  # 3.10.12+: refuse paths outside tmp_path
            archive.extractall(tmp_path, filter="data")
        else:  # pragma: no cover
            archive.extractall(tmp_path)
    missing = sorted(set(project_files()) - names - {".gitignore"})
    assert missing == []
    assert not [name for name in names if name.endswith((".so", ".pyc"))]
    # Every test module collects from the unpacked sdist (conftest included).
    unpacked = next(tmp_path.iterdir())
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=unpacked,
        capture_output=True,
        text=True,
    )
    assert collected.returncode == 0, collected.stdout[-2000:]
    assert "error" not in collected.stdout.lower().splitlines()[-1]


def test_the_wheel_carries_the_extension_and_the_metadata(dists: tuple[Path, Path]) -> None:
    _, wheel = dists
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
    extension = "pytest_memguard/_allochook"
    assert any(n.startswith(extension) and n.endswith(".so") for n in names)
    assert "pytest_memguard/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.10"
    versions = {
        c.rsplit(":: ", 1)[1]
        for c in metadata.get_all("Classifier") or []
        if c.startswith("Programming Language :: Python :: 3.")
    }
    assert versions == {"3.10", "3.11", "3.12", "3.13", "3.14", "3.15"}
