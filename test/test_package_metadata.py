"""The ament_python package is well formed: what colcon, rosdep and `ros2 run` rely on."""
import ast
from configparser import ConfigParser
import importlib
from pathlib import Path
import re
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP_PY = (ROOT / 'setup.py').read_text()
PACKAGE_XML = ET.parse(ROOT / 'package.xml').getroot()

#: Python libraries the code may import that have a rosdep key (rosdistro's rosdep/python.yaml),
#: by import name.
ROSDEP_KEYS = {
    'numpy': 'python3-numpy',
    'scipy': 'python3-scipy',
    'yaml': 'python3-yaml',
    'cv2': 'python3-opencv',
    'tqdm': 'python3-tqdm',
    'matplotlib': 'python3-matplotlib',
    'pytest': 'python3-pytest',
    'hypothesis': 'python3-hypothesis',
}
#: Python libraries without a rosdep key, by import name: their PyPI name, which must be in
#: requirements.txt (package.xml's comment says they come from there via pip).
PIP_ONLY = {
    'torch': 'torch',
    'torchvision': 'torchvision',
    'transformers': 'transformers',
    'safetensors': 'safetensors',
    'pybullet': 'pybullet',
    'pybullet_data': 'pybullet',
    'pybullet_utils': 'pybullet',
    'rosbags': 'rosbags',
    'mcap': 'mcap',
}


def depends(tag: str) -> set[str]:
    return {element.text.strip() for element in PACKAGE_XML.findall(tag)}


def imported_modules(files) -> dict[str, set[str]]:
    """Top-level names of every absolute import (module level or nested) -> importing files."""
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                found.setdefault(module.split('.')[0], set()).add(
                    str(path.relative_to(ROOT)))
    return found


def third_party(found: dict[str, set[str]], local: set[str]) -> dict[str, set[str]]:
    return {name: files for name, files in found.items()
            if name not in sys.stdlib_module_names and name not in local}


def package_imports() -> dict[str, set[str]]:
    """What the installed package imports: vla_align/ and the launch files."""
    files = sorted((ROOT / 'vla_align').rglob('*.py')) + sorted(ROOT.glob('launch/*.py'))
    return third_party(imported_modules(files), {'vla_align'})


def ros_package_imports() -> dict[str, set[str]]:
    """Imports that are neither a classified Python library: ROS packages."""
    return {name: files for name, files in package_imports().items()
            if name not in ROSDEP_KEYS and name not in PIP_ONLY}


def test_import_scan_sees_the_ros_packages_the_nodes_and_launch_files_use():
    # Guards the tests below against a scan that silently finds nothing.
    found = ros_package_imports()
    for name in ('rclpy', 'rcl_interfaces', 'builtin_interfaces', 'std_msgs', 'launch',
                 'launch_ros', 'ament_index_python'):
        assert name in found, name
    assert {'torch', 'numpy', 'pybullet'} <= set(package_imports())


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


def test_every_ros_package_the_code_imports_is_an_exec_depend():
    declared = depends('exec_depend')
    missing = {name: sorted(files) for name, files in ros_package_imports().items()
               if name not in declared}
    assert not missing, (
        f'imported but not declared in package.xml: {missing}; a ROS package needs '
        '<exec_depend>NAME</exec_depend>, a Python library belongs in ROSDEP_KEYS or PIP_ONLY')


def test_every_exec_depend_is_an_imported_ros_package_or_a_rosdep_key_of_an_imported_library():
    ros_packages = set(ros_package_imports())
    libraries = set(package_imports())
    for dep in sorted(depends('exec_depend')):
        if dep in ros_packages:
            continue
        assert dep in ROSDEP_KEYS.values(), (
            f'<exec_depend>{dep}</exec_depend> is neither a ROS package the code imports nor a '
            'rosdep key: rosdep install would fail (or pull in something unused)')
        library = next(name for name, key in ROSDEP_KEYS.items() if key == dep)
        assert library in libraries, f'{dep}: nothing in vla_align/ or launch/ imports {library}'


def test_every_python_library_the_code_imports_is_declared_or_pinned_in_requirements():
    declared = depends('exec_depend')
    requirements = {re.split(r'[=<>~!\[ ;]', line, maxsplit=1)[0].strip().lower()
                    for line in (ROOT / 'requirements.txt').read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith('#')}
    for name in sorted(package_imports()):
        if name in ROSDEP_KEYS:
            assert ROSDEP_KEYS[name] in declared, f'{name}: declare {ROSDEP_KEYS[name]}'
        elif name in PIP_ONLY:
            assert PIP_ONLY[name] in requirements, f'{name}: {PIP_ONLY[name]} not pinned'


def test_no_pip_only_or_rmw_keys_and_the_comment_names_the_pip_installed_libraries():
    keys = depends('exec_depend') | depends('depend') | depends('test_depend')
    assert not [k for k in keys if k.endswith('-pip')], 'python3-*-pip are not rosdep keys'
    assert not [k for k in keys if k.startswith('rmw_')], "the RMW is the user's choice"
    comments = ' '.join(re.findall(r'<!--(.*?)-->', (ROOT / 'package.xml').read_text(), re.S))
    assert 'requirements.txt' in comments
    for name in sorted(set(PIP_ONLY.values())):
        assert name in comments, f'package.xml does not say where {name} comes from'


def test_every_test_depend_is_used_by_the_tests_and_test_imports_are_declared():
    test_files = sorted((ROOT / 'test').glob('*.py'))
    local = {'vla_align'} | {path.stem for path in test_files}
    used = third_party(imported_modules(test_files), local)
    test_depends = depends('test_depend')
    for dep in sorted(test_depends):
        library = next((name for name, key in ROSDEP_KEYS.items() if key == dep), dep)
        assert library in used, f'<test_depend>{dep}</test_depend>: no test imports {library}'
    declared = depends('exec_depend') | test_depends
    for name in sorted(used):
        if name in ROSDEP_KEYS:
            assert ROSDEP_KEYS[name] in declared, f'tests import {name}: declare it'
        elif name not in PIP_ONLY:
            assert name in declared, f'tests import the ROS package {name}: declare it'


def setup_keywords() -> dict[str, ast.expr]:
    calls = [node for node in ast.walk(ast.parse(SETUP_PY)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id == 'setup']
    assert len(calls) == 1
    return {keyword.arg: keyword.value for keyword in calls[0].keywords}


def test_setup_py_uses_extras_require_test_not_the_deprecated_tests_require():
    keywords = setup_keywords()
    assert 'tests_require' not in keywords, 'tests_require is deprecated (setuptools 72+)'
    extras = ast.literal_eval(keywords['extras_require'])
    assert 'pytest' in extras['test']


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
