"""Plugin files from ``plugin_dirs`` as modules importable by name in any process.

A launcher worker (joblib/loky, submitit, ray) unpickles plugin classes by module name; the name
carries the file's path, so this package's finder can import the file there too.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

PREFIX = f"{__name__}."


def module_name(path: Path) -> str:
    """The importable module name of a plugin file: its stem and its absolute path, hex-encoded."""
    return f"{PREFIX}{path.stem}_{str(path.resolve()).encode().hex()}"


class _PluginFileFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if not fullname.startswith(PREFIX):
            return None
        file = bytes.fromhex(fullname.rsplit("_", 1)[1]).decode()
        return importlib.util.spec_from_file_location(fullname, file)


if not any(isinstance(f, _PluginFileFinder) for f in sys.meta_path):
    sys.meta_path.append(_PluginFileFinder())
