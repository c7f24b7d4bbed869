"""The ament_python package is well formed: what colcon and `ros2 run` rely on is present."""
from configparser import ConfigParser
import importlib
from pathlib import Path
import re
import xml.etree.ElementTree as ET

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP_PY = (ROOT / 'setup.py').read_text()


def console_scripts() -> dict[str, str]:
    entries = re.findall(r"'([\w-]+) = ([\w.]+:\w+)'", SETUP_PY)
    assert entries, 'setup.py declares no console_scripts'
    return dict(entries)


def test_package_xml_is_format_3_ament_python_named_like_the_package():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.attrib['format'] == '3'
    assert root.findtext('name') == 'vla_align'
    assert root.find('export/build_type').text == 'ament_python'
    assert (ROOT / 'resource' / 'vla_align').is_file()


def test_runtime_ros_dependencies_are_declared():
    root = ET.parse(ROOT / 'package.xml').getroot()
    declared = {e.text for e in root.findall('exec_depend')}
    for dep in ('rclpy', 'std_msgs', 'std_srvs', 'sensor_msgs', 'geometry_msgs',
                'diagnostic_msgs', 'launch', 'launch_ros', 'ament_index_python'):
        assert dep in declared, f'package.xml lacks <exec_depend>{dep}</exec_depend>'


def test_executables_install_under_lib_package_for_ros2_run():
    cfg = ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    assert cfg['develop']['script_dir'] == '$base/lib/vla_align'
    assert cfg['install']['install_scripts'] == '$base/lib/vla_align'


@pytest.mark.parametrize('name,target', sorted(console_scripts().items()))
def test_every_entry_point_resolves_to_a_callable(name, target):
    module_name, func = target.split(':')
    module = importlib.import_module(module_name)
    assert callable(getattr(module, func)), f'{name} -> {target} is not callable'


def test_launch_config_and_sim_assets_are_installed_to_share():
    assert "glob('launch/*.launch.py')" in SETUP_PY
    assert "tree('config')" in SETUP_PY and "tree('sim')" in SETUP_PY
    assert list((ROOT / 'launch').glob('*.launch.py')), 'no launch files to install'
    assert list((ROOT / 'config').glob('*.yaml')), 'no config files to install'


def test_cli_lists_every_subcommand_and_each_module_has_the_parser_hooks():
    from vla_align import cli

    for name, (module_name, _summary) in cli.SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(getattr(module, 'configure_parser', None)), name
        assert callable(getattr(module, 'run', None)), name
