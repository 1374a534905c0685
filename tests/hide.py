"""An interpreter without an extra, for the tests: a ``sitecustomize`` that hides a package."""

from __future__ import annotations

from pathlib import Path

_SITECUSTOMIZE = '''\
import sys

class _Hide:
    """Refuses {package!r} and its submodules, as if its extra were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == {package!r} or name.startswith({prefix!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _Hide())
'''


def hiding(package: str, folder: Path) -> Path:
    """A folder whose ``sitecustomize.py`` hides ``package``: put it first on PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    source = _SITECUSTOMIZE.format(package=package, prefix=f"{package}.")
    (folder / "sitecustomize.py").write_text(source, encoding="utf-8")
    return folder
