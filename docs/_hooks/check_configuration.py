"""mkdocs hook: fail the build when docs/configuration.md drifts from `girder.config.Settings`.

Each row of the settings table names a field, its environment variable, its type and its default.
This hook compares them with the model and logs a warning per difference; `mkdocs build --strict`
turns warnings into a failed build.
"""

from __future__ import annotations

import logging
import re
import types
import typing
from typing import Any

from girder.config import Settings

log = logging.getLogger("mkdocs.hooks.check_configuration")

_PAGE = "configuration.md"
_ROW = re.compile(r"^\|\s*`(?P<field>[a-z_]+)`\s*\|")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_CODE = re.compile(r"`([^`]*)`")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if typing.get_origin(annotation) is not None:
        args = ", ".join(_type_name(arg) for arg in typing.get_args(annotation))
        return f"{typing.get_origin(annotation).__name__}[{args}]"
    return str(getattr(annotation, "__name__", annotation))


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _documented(markdown: str) -> dict[str, tuple[str, str, str]]:
    rows: dict[str, tuple[str, str, str]] = {}
    for line in markdown.splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        cells = [cell.strip().replace("\\|", "|") for cell in _CELL_SPLIT.split(line)[1:-1]]
        if len(cells) < 5:
            log.warning("%s: the row of %r has %d cells, not 5", _PAGE, match["field"], len(cells))
            continue
        codes = [(_CODE.search(cell) or re.match(r"(.*)", cell)).group(1) for cell in cells[1:4]]
        rows[match["field"]] = (codes[0], codes[1], codes[2])
    return rows


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri != _PAGE:
        return markdown
    documented = _documented(markdown)
    fields = Settings.model_fields
    prefix = str(Settings.model_config.get("env_prefix", ""))
    for name in fields.keys() - documented.keys():
        log.warning("%s: setting %r of girder.config.Settings is not documented", _PAGE, name)
    for name in documented.keys() - fields.keys():
        log.warning("%s: documents %r, which girder.config.Settings does not have", _PAGE, name)
    for name in fields.keys() & documented.keys():
        field = fields[name]
        expected = (f"{prefix}{name}".upper(), _type_name(field.annotation), _default(field))
        for what, want, got in zip(
            ("variable", "type", "default"), expected, documented[name], strict=True
        ):
            if want != got:
                log.warning("%s: %s of %r is %s, the page says %s", _PAGE, what, name, want, got)
    common = fields.keys() & documented.keys()
    if [n for n in documented if n in common] != [n for n in fields if n in common]:
        log.warning("%s: rows are not in the order of girder.config.Settings", _PAGE)
    return markdown
