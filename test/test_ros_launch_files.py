"""launch/*.launch.py are checked by reading them: ros2 launch is not installable here.

Each file must compile, declare (with a description) every launch argument it uses and use
every one it declares, start only executables that setup.py installs, take parameters from a
config file that exists and has a section for every node it starts, and return every action
it builds. Where launch_ros is installed, the description is also built for real.
"""
import ast
from pathlib import Path
import py_compile
import re

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
SCRIPTS = set(re.findall(r"'([\w-]+) = [\w.]+:\w+'", (ROOT / 'setup.py').read_text()))


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, 'attr', None)
            if called == name:
                found.append(node)
    return found


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def literal_first_arg(call: ast.Call) -> str:
    assert call.args and isinstance(call.args[0], ast.Constant), ast.dump(call)
    return call.args[0].value


def config_files(tree: ast.AST) -> list[str]:
    """'X' of every os.path.join(share_dir, 'config', 'X')."""
    names = []
    for call in calls(tree, 'join'):
        parts = [a.value for a in call.args if isinstance(a, ast.Constant)]
        if len(parts) == 2 and parts[0] == 'config':
            names.append(parts[1])
    return names


def test_the_three_graphs_have_launch_files():
    assert {p.name for p in LAUNCH_FILES} >= {'robot.launch.py', 'sim.launch.py',
                                             'replay.launch.py'}


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_consistent(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / 'compiled.pyc'), doraise=True)
    tree = ast.parse(path.read_text())
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert 'generate_launch_description' in functions

    declared = {}
    for call in calls(tree, 'DeclareLaunchArgument'):
        description = keyword(call, 'description')
        assert isinstance(description, ast.Constant) and description.value.strip(), (
            f'{literal_first_arg(call)} has no description')
        declared[literal_first_arg(call)] = call
    used = {literal_first_arg(c) for c in calls(tree, 'LaunchConfiguration')}
    assert used == set(declared), f'used {sorted(used)} vs declared {sorted(declared)}'

    nodes = calls(tree, 'Node')
    assert nodes, 'starts no node'
    node_names = []
    for node in nodes:
        executable, name = keyword(node, 'executable'), keyword(node, 'name')
        assert keyword(node, 'package').value == 'vla_align'
        assert executable.value in SCRIPTS, f'{executable.value} is not installed by setup.py'
        assert name.value == executable.value  # the params file is keyed by this name
        assert keyword(node, 'parameters') is not None
        node_names.append(name.value)

    files = config_files(tree)
    params = [f for f in files if f.endswith('.yaml')]
    assert len(params) == 1, files
    for name in files:
        assert (ROOT / 'config' / name).is_file(), f'config/{name} does not exist'
    sections = yaml.safe_load((ROOT / 'config' / params[0]).read_text())
    for name in node_names:
        assert 'ros__parameters' in sections.get(name, {}), f'{params[0]} lacks {name}'

    returned = calls(tree, 'LaunchDescription')[-1].args[0]
    listed = {e.id for e in returned.elts if isinstance(e, ast.Name)}
    assigned = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name)
                and isinstance(n.value, ast.Call)
                and getattr(n.value.func, 'id', '') in ('Node', 'DeclareLaunchArgument',
                                                        'SetEnvironmentVariable')}
    assert assigned <= listed, f'built but not launched: {sorted(assigned - listed)}'


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_description_builds_where_launch_ros_is_installed(path):
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (no ros2 launch here)')
    import importlib.util

    ament = pytest.importorskip('ament_index_python.packages')
    try:
        ament.get_package_share_directory('vla_align')
    except ament.PackageNotFoundError:
        pytest.skip('vla_align is not installed in an ament prefix (colcon build)')
    spec = importlib.util.spec_from_file_location(path.stem.replace('.', '_'), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert description.get_launch_arguments()
