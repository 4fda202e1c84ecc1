"""Which functions a worker resolves by name (`girder.security.resolve_allowed`)."""

from __future__ import annotations

import sys
from pathlib import Path

import gridfns
import pytest

from girder.config import Settings
from girder.security import resolve_allowed

IMPORTS_GRIDFNS = Settings(imports=["gridfns"])
NOTHING_IMPORTED = Settings()


@pytest.mark.parametrize(
    ("ref", "settings"),
    [
        (("os", "system"), IMPORTS_GRIDFNS),  # loaded, but not allowed and no grid function
        # reachable from gridfns (which imports asyncio), but defined elsewhere
        (("gridfns", "asyncio.create_subprocess_shell"), IMPORTS_GRIDFNS),
        (("gridfns", "touch.fn"), NOTHING_IMPORTED),  # a plain function of a module not allowed
    ],
)
def test_a_reference_outside_the_allowed_modules_is_refused(
    ref: tuple[str, str], settings: Settings
) -> None:
    with pytest.raises(LookupError) as caught:
        resolve_allowed(ref, settings)
    assert f"function {ref[0]}.{ref[1]} is not allowed here" in str(caught.value)
    assert "GIRDER_ALLOWED_MODULES" in str(caught.value)


def test_a_reference_to_something_else_than_a_function_is_refused() -> None:
    with pytest.raises(LookupError, match="a request needs a function first"):
        resolve_allowed(("gridfns", "calls"), IMPORTS_GRIDFNS)


def test_functions_of_imported_and_allowed_modules_resolve() -> None:
    assert resolve_allowed(("gridfns", "add"), IMPORTS_GRIDFNS) is gridfns.add
    plain = resolve_allowed(("json", "dumps"), Settings(allowed_modules=["json"]))
    assert plain(1) == "1"


def test_a_loaded_grid_function_resolves_anywhere() -> None:
    """How `Grid.local` finds decorated functions: no setting needed."""
    assert resolve_allowed(("gridfns", "add"), NOTHING_IMPORTED) is gridfns.add


def test_a_module_that_is_not_allowed_is_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "girder_bait_module.py").write_text(
        "import girder\n\n@girder.function\ndef f():\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LookupError, match="not allowed"):
        resolve_allowed(("girder_bait_module", "f"), IMPORTS_GRIDFNS)
    assert "girder_bait_module" not in sys.modules
