"""Where the package's data files (config/, sim/, launch/) live, installed or in a checkout."""
from __future__ import annotations

from pathlib import Path
import sys

PACKAGE = 'vla_align'
_REPO_ROOT = Path(__file__).resolve().parent.parent


def share_dir() -> Path:
    """The package share directory.

    Order: a colcon/ament install (``ament_index_python``), the source checkout this module
    was imported from (editable installs and tests), then ``<prefix>/share/vla_align`` of a
    pip install.
    """
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # noqa: BLE001 - not built with colcon, or ament_index absent
        pass
    if (_REPO_ROOT / 'package.xml').is_file():
        return _REPO_ROOT
    return Path(sys.prefix) / 'share' / PACKAGE


def share_path(*parts: str) -> Path:
    """A file under the share directory, e.g. ``share_path('config', 'sim.yaml')``."""
    return share_dir().joinpath(*parts)
