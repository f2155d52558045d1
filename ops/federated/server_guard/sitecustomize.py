"""Loaded by every Python process of the federation's server side (SuperLink, ServerApp) via ``PYTHONPATH``.

It makes "the server never reads a site's tiles" enforced rather than promised: an audit hook refuses every
``open``, ``os.listdir`` and ``os.scandir`` under the folders in ``$HISTOFACTORY_DENY_PATHS`` (``os.pathsep``-
separated) with ``PermissionError`` and appends the attempt to ``$HISTOFACTORY_DENY_LOG``, so a test can show both
that the guard bites and that nothing tried. It is not a security boundary (a hostile process could use ctypes);
on Kubernetes the boundary is that site volumes are only mounted in their own namespace.
"""

import os
import sys

_DENY = tuple(
    os.path.realpath(p) + os.sep for p in os.environ.get("HISTOFACTORY_DENY_PATHS", "").split(os.pathsep) if p
)
_LOG = os.environ.get("HISTOFACTORY_DENY_LOG")
_busy = False


def _guard(event: str, args: tuple) -> None:
    global _busy
    if _busy or event not in ("open", "os.listdir", "os.scandir") or not args or isinstance(args[0], int | None):
        return
    path = os.path.realpath(os.fsdecode(args[0])) + os.sep
    if not path.startswith(_DENY):
        return
    _busy = True
    try:
        if _LOG:
            with open(_LOG, "a") as log:
                log.write(f"{os.getpid()} {event} {path.rstrip(os.sep)}\n")
    finally:
        _busy = False
    raise PermissionError(f"the federation's server side may not read site data: {path.rstrip(os.sep)}")


if _DENY:
    sys.addaudithook(_guard)
