"""Layers point one way: data and model never import the simulator or the ROS layer."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / 'vla_align'


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize('layer', ['data', 'model'])
def test_data_and_model_import_neither_sim_nor_ros(layer):
    offenders = {}
    for path in sorted((ROOT / layer).rglob('*.py')):
        bad = sorted(m for m in imported_modules(path)
                     if m.startswith(('vla_align.sim', 'vla_align.ros', 'rclpy'))
                     or m in ('vla_align.sim', 'vla_align.ros'))
        if bad:
            offenders[path.relative_to(ROOT).as_posix()] = bad
    assert not offenders, offenders


def test_the_scan_sees_imports():
    assert 'vla_align.data.contract' in imported_modules(ROOT / 'data' / 'contract_reader.py')
