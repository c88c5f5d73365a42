"""iPXE scripts: Jinja2 templates rendered per request, never to disk.

Templates are data (`templates/` at the top of the repository, or a site directory searched first); the
values they get are built in Python as one plain mapping, and every string in it is checked before
rendering, so no newline, `$`, brace or quote can change what a script does. The environment is
sandboxed and fails on any undefined name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from ..shared.errors import InternalError
from ..shared.identifiers import script_safe

BUNDLED_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

ENTRY = "entry.ipxe.j2"
MENU = "menu.ipxe.j2"
MESSAGE = "message.ipxe.j2"
SANBOOT = "sanboot.ipxe.j2"
NETROOT = "netroot.ipxe.j2"


def _check(name: str, value: object) -> None:
    if isinstance(value, str):
        if not script_safe(value):
            raise InternalError(f"value {name} is not fit for an iPXE script")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check(f"{name}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(f"{name}[{index}]", item)
    elif not isinstance(value, int):
        raise InternalError(f"value {name} has type {type(value).__name__}, which no template takes")


class ScriptRenderer:
    def __init__(self, site_templates: Path | None = None) -> None:
        search = [str(site_templates)] if site_templates else []
        self._env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader([*search, str(BUNDLED_TEMPLATES)]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )

    def render(self, template: str, values: Mapping[str, object], expansions: Mapping[str, str] | None = None) -> str:
        """The script, from checked values; InternalError if a value is unfit or the template is broken.

        `expansions` are values built in Python that use iPXE's own `${setting}` expansion on purpose
        (the login URL); each must still be free of everything else unsafe."""
        for name, value in values.items():
            _check(name, value)
        for name, text in (expansions or {}).items():
            _check(name, re.sub(r"\$\{[a-z-]+(:[a-z]+)?\}", "", text))
        try:
            return self._env.get_template(template).render({**values, **(expansions or {})})
        except jinja2.TemplateError as e:
            raise InternalError(f"template {template}: {e}") from e
