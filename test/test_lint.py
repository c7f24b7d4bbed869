"""ament-style lint test: one style (ruff, ROS 2 conventions from pyproject.toml) for all code."""
from pathlib import Path
import shutil
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_reports_no_problems():
    ruff = shutil.which('ruff') or str(Path(sys.executable).parent / 'ruff')
    result = subprocess.run([ruff, 'check', '--no-cache', str(ROOT)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
