"""What a user installs: the distribution's name, its install lines, types and version."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import girder

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "girder-grid"
_INSTALL = re.compile(r"pip install\s+(?:-q\s+)?(?P<target>-e\s+\S+|'[^']+'|\"[^\"]+\"|\S+)")


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _install_lines() -> list[tuple[str, str]]:
    """(where, what is installed) for every `pip install` in the README, docs and package."""
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "girder").rglob("*.py")]
    found = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in _INSTALL.finditer(line):
                found.append((f"{path.relative_to(ROOT)}:{number}", match["target"]))
    return found


def test_the_distribution_has_a_name_of_its_own() -> None:
    # "girder" on PyPI is another project: installing it must never be what the docs suggest.
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    assert project["name"] == DISTRIBUTION
    assert project["version"] == girder.__version__


def test_every_install_line_names_girder_grid_or_the_checkout() -> None:
    lines = _install_lines()
    assert lines, "no install lines found: the pattern is wrong"
    wrong = [
        (where, target)
        for where, target in lines
        if not (target.startswith("-e ") or target.strip("'\"").startswith(DISTRIBUTION))
    ]
    assert wrong == []


def test_the_package_ships_py_typed() -> None:
    assert (ROOT / "girder" / "py.typed").is_file()
    wheel = _pyproject()["tool"]
    assert isinstance(wheel, dict)
    # The wheel takes the whole package folder, py.typed with it (nothing excludes it).
    assert wheel["hatch"]["build"]["targets"]["wheel"]["packages"] == ["girder"]
    assert "exclude" not in wheel["hatch"]["build"]["targets"]["wheel"]


def test_project_urls_are_declared() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    urls = project["urls"]
    assert {"Documentation", "Repository", "Issues"} <= set(urls)


@pytest.mark.slow
def test_the_wheel_holds_py_typed_and_the_lua_scripts(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(tmp_path)],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("girder_grid-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "girder/py.typed" in names
    scripts = {f"girder/backends/lua/{p.name}" for p in (ROOT / "girder/backends/lua").iterdir()}
    assert scripts <= names
