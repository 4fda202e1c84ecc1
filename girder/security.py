"""Safe by default (invariant 8): what a node trusts, and the secret that `girder up` makes.

Whoever can write to a shared backend could otherwise run code on every node, in two ways:
through pickles, which is why payloads and outcomes are signed (`girder.serialization`), and
through a function reference naming any importable callable, such as `("os", "system")`. So a node
refuses a shared backend without a secret unless told to be insecure (`require_secret`), and a
worker resolves functions by name only from the modules it was told to trust (`resolve_allowed`),
even when it is insecure.
"""

from __future__ import annotations

import functools
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from girder.backends.base import StateBackend
from girder.config import Settings
from girder.errors import ConfigurationError
from girder.functions import FunctionRef, GridFunction, resolve_function


def require_secret(settings: Settings, backend: StateBackend, log: Any) -> None:
    """Refuse a shared backend without a secret, unless `settings.insecure`; then warn."""
    if not backend.shared or settings.secret is not None:
        return
    if not settings.insecure:
        raise ConfigurationError(
            f"the backend {backend.url} is shared with other processes and no secret is set, so "
            "whoever can write to it could run code here: set GIRDER_SECRET to the same long "
            "random string on every node and client (`girder up` writes one to "
            f"{default_secret_file()}), or set GIRDER_INSECURE=1 to run unsigned anyway"
        )
    log.warning(
        "INSECURE: no secret on a shared backend (GIRDER_INSECURE=1); whoever can write to it "
        "can run code on this node",
        backend=backend.url,
    )


# -- functions by name -----------------------------------------------------------------------------


def allowed_prefixes(settings: Settings) -> tuple[str, ...]:
    """The modules (with their submodules) a worker runs functions from by name."""
    return ("__main__", *settings.imports, *settings.allowed_modules)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `module` is one of `prefixes` or inside one; `*` stands for every module (a
    private grid's workers: nobody else has its secret)."""
    return any(prefix in ("*", module) or module.startswith(prefix + ".") for prefix in prefixes)


def may_import(module: str, settings: Settings) -> bool:
    """Whether a worker may import `module` to find something named in a request (a topology)."""
    return _within(module, allowed_prefixes(settings))


def _loaded(module: str, qualname: str) -> Any:
    """The object a reference names in the modules already imported (None if there is none);
    never imports anything."""
    target: Any = sys.modules.get(module)
    try:
        for part in qualname.split("."):
            target = getattr(target, part, None)
    except Exception:  # a module's own __getattr__ may raise anything
        return None
    return target


@functools.lru_cache(maxsize=4096)
def _allowed(module: str, qualname: str, prefixes: tuple[str, ...]) -> GridFunction[..., Any]:
    # Only an allowed module is imported; a missing one raises LookupError saying so.
    function = resolve_function((module, qualname)) if _within(module, prefixes) else None
    target = _loaded(module, qualname)
    if isinstance(target, GridFunction):
        return target
    # Defined in an allowed module, not merely reachable from one (like `tasks.os.system`).
    if function is not None and _within(str(getattr(target, "__module__", "")), prefixes):
        return function
    raise LookupError(
        f"function {module}.{qualname} is not allowed here: a worker runs by name only the "
        "functions defined in the modules it imports (GIRDER_IMPORTS, --import) or allows "
        "(GIRDER_ALLOWED_MODULES), and grid functions already loaded"
    )


def resolve_allowed(ref: FunctionRef, settings: Settings) -> GridFunction[..., Any]:
    """The grid function `ref` names, if this worker may run it; else `LookupError`.

    A by-value function (bytes) came inside a payload that was signed, or accepted unsigned in
    insecure mode, so it is as trusted as the payload. A reference by name must name a function
    defined in an allowed module, or a grid function already loaded here (how `Grid.local` finds
    functions defined anywhere). Modules that are not allowed are never imported to find out.
    """
    if isinstance(ref, bytes):
        return resolve_function(ref)
    module, qualname = ref
    return _allowed(module, qualname, allowed_prefixes(settings))


# -- the secret of `girder up` ---------------------------------------------------------------------


def default_secret_file() -> Path:
    """Where `girder up` keeps the secret it generates: `$XDG_CONFIG_HOME/girder/secret`."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "girder" / "secret"


def read_or_create_secret(path: Path) -> str:
    """The secret in `path`, created (mode 0600, atomically) when missing.

    Reusing it keeps a restarted `girder up`, its clients and its cached results on one secret.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(draft, path)  # fails if another `girder up` made one first: use that
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return _read_private(path)


def _read_private(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigurationError(
            f"the secret file {path} is readable by other users (mode {mode:o}); "
            f"run: chmod 600 {path}"
        )
    secret = path.read_text().strip()
    if not secret:
        raise ConfigurationError(f"the secret file {path} is empty; delete it to get a new one")
    return secret
