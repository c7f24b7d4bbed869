"""`colcon build` of the package, and what a ROS user relies on in the install space.

The real colcon (colcon-core + colcon-ros, pinned in requirements.txt) builds the repository
into a temporary build/install/log space; the installed ``policy_node`` then runs from a
working directory outside the repository with the environment of ``install/setup.sh``, so its
code must come from the install space and the shipped checkpoint from ``share/vla_align``.
"""
from collections.abc import Iterator
from dataclasses import dataclass
import filecmp
import os
from pathlib import Path
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ros]
pytest_plugins = ('ros_isolation',)  # fixture: ros_environment

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = 'vla_align'
COLCON = Path(sys.executable).with_name('colcon')
EXECUTABLES = ('camera_node', 'instruction_node', 'policy_node', 'sim_node', 'bag_player_node',
               'record')
#: Variables a previously sourced ROS / colcon environment would leak into the test.
OVERLAY_VARIABLES = ('AMENT_PREFIX_PATH', 'COLCON_PREFIX_PATH', 'CMAKE_PREFIX_PATH',
                     'PYTHONPATH', 'COLCON_CURRENT_PREFIX')
POLICY_ARGS = ('--ros-args', '-p', 'checkpoint:=checkpoints/default', '-p', 'device:=cpu',
               '-p', 'use_proprioception:=true')
PROBE = """
import importlib.metadata, sys
sys.path[0] = sys.argv[1]  # as when the installed script runs: its own directory first
import vla_align
from vla_align.ros.sources import resolve_checkpoint_path
print('module', vla_align.__file__)
print('distribution', importlib.metadata.distribution('vla-align').locate_file(''))
print('checkpoint', resolve_checkpoint_path('checkpoints/default'))
"""


@dataclass(frozen=True)
class Build:
    base: Path
    install: Path
    output: str

    @property
    def prefix(self) -> Path:
        return self.install / PACKAGE

    @property
    def share(self) -> Path:
        return self.prefix / 'share' / PACKAGE

    @property
    def lib(self) -> Path:
        return self.prefix / 'lib' / PACKAGE

    @property
    def site_packages(self) -> Path:
        version = f'python{sys.version_info.major}.{sys.version_info.minor}'
        return self.prefix / 'lib' / version / 'site-packages'


def clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OVERLAY_VARIABLES}
    env.update(extra)
    return env


def colcon(*args: str, base: Path, timeout: float = 180.0) -> subprocess.CompletedProcess:
    assert COLCON.is_file(), f'{COLCON} missing: pip install -r requirements.txt'
    # COLCON_HOME: a user's ~/.colcon/defaults.yaml (e.g. symlink-install) must not apply.
    env = clean_environment(COLCON_HOME=str(base / 'colcon_home'))
    return subprocess.run([str(COLCON), '--log-base', str(base / 'log'), *args], cwd=base,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def build(tmp_path_factory) -> Build:
    base = tmp_path_factory.mktemp('colcon')
    result = colcon('build', '--base-paths', str(ROOT), '--build-base', str(base / 'build'),
                    '--install-base', str(base / 'install'), '--event-handlers',
                    'console_direct-', base=base)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return Build(base, base / 'install', output)


def setup_sh_environment(build: Build) -> dict[str, str]:
    """The environment after ``. install/setup.sh`` in a shell with no ROS overlay sourced."""
    result = subprocess.run(['sh', '-c', '. "$0/setup.sh" && env -0', str(build.install)],
                            env=clean_environment(), capture_output=True, timeout=30,
                            check=True)
    entries = (entry.split(b'=', 1) for entry in result.stdout.split(b'\0') if b'=' in entry)
    return {key.decode(): value.decode() for key, value in entries}


@pytest.fixture
def outside_cwd(tmp_path) -> Iterator[Path]:
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    assert not (cwd / 'checkpoints').exists()
    yield cwd


def test_colcon_crawl_finds_only_this_package_not_the_checkouts_venv_or_runs(build):
    # colcon crawls --base-paths recursively, but stops at the first package.xml: the
    # repository root, so .venv/, runs/, build/ etc. of the checkout need no COLCON_IGNORE.
    assert re.findall(r'^Starting >>> (\S+)', build.output, re.M) == [PACKAGE], build.output
    assert re.findall(r'^Finished <<< (\S+)', build.output, re.M) == [PACKAGE], build.output


def test_executables_install_under_lib_vla_align_with_a_python_shebang(build):
    for name in EXECUTABLES:
        path = build.lib / name
        assert path.is_file(), f'{name} not installed: {sorted(os.listdir(build.lib))}'
        assert os.access(path, os.X_OK), f'{path} is not executable'
        shebang = path.read_text().splitlines()[0]
        assert shebang.startswith('#!') and 'python' in shebang, f'{name}: {shebang!r}'
        assert os.access(shebang[2:].split()[0], os.X_OK), f'{name}: no interpreter {shebang}'


def test_launch_config_checkpoint_and_task_suites_install_to_share(build):
    expected = [
        *ROOT.glob('launch/*.launch.py'),
        *ROOT.glob('config/*.yaml'),
        ROOT / 'config' / 'fastdds_large_messages.xml',
        *(path for path in ROOT.glob('checkpoints/default/*') if path.is_file()),
        *ROOT.glob('sim/task_suites/*.yaml'),
        ROOT / 'package.xml',
    ]
    for folder in ('launch', 'config', 'checkpoints/default', 'sim/task_suites'):
        assert any(path.parent == ROOT / folder for path in expected), f'no files in {folder}'
    assert ROOT / 'checkpoints' / 'default' / 'model.safetensors' in expected
    for source in expected:
        installed = build.share / source.relative_to(ROOT)
        assert installed.is_file(), f'{source.relative_to(ROOT)} not installed to share'
        assert filecmp.cmp(source, installed, shallow=False), f'{installed} differs'
    marker = build.prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / PACKAGE
    assert marker.is_file(), 'no ament index entry: ros2 run / get_package_share_directory fail'


def test_installed_code_and_shipped_checkpoint_come_from_the_install_space(build, outside_cwd):
    env = setup_sh_environment(build)
    assert env['AMENT_PREFIX_PATH'].split(os.pathsep)[0] == str(build.prefix)
    assert str(build.site_packages) in env['PYTHONPATH'].split(os.pathsep)
    interpreter = (build.lib / 'policy_node').read_text().splitlines()[0][2:].split()[0]

    def probe(environment: dict[str, str]) -> dict[str, str]:
        result = subprocess.run([interpreter, '-c', PROBE, str(build.lib)], cwd=outside_cwd,
                                env=environment, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-3000:]
        return dict(line.split(' ', 1) for line in result.stdout.splitlines())

    found = probe(env)
    assert Path(found['module']) == build.site_packages / PACKAGE / '__init__.py', found
    assert Path(found['distribution']) == build.site_packages, found
    assert Path(found['checkpoint']) == build.share / 'checkpoints' / 'default', found
    # Without the ament index (install/setup.sh not sourced) nothing else would supply it:
    # not the working directory, not the source checkout.
    no_index = {k: v for k, v in env.items() if k != 'AMENT_PREFIX_PATH'}
    assert probe(no_index)['checkpoint'] == 'checkpoints/default'


def test_installed_policy_node_starts_from_the_shipped_checkpoint_and_stops_on_sigint(
        build, outside_cwd, ros_environment):
    env = setup_sh_environment(build)
    env['PYTHONUNBUFFERED'] = '1'
    process = subprocess.Popen([str(build.lib / 'policy_node'), *POLICY_ARGS], cwd=outside_cwd,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        for line in process.stdout:
            output.append(line)
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        started = time.monotonic()
        deadline = started + 120.0
        startup = None
        while startup is None and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if 'source=checkpoint' in line:
                startup = line
        assert startup is not None, f'no start-up line (exit {process.poll()}):\n' + \
            ''.join(output)[-4000:]
        assert '[policy_node]' in startup and 'control_rate=' in startup, startup
        print(f'policy_node start-up took {time.monotonic() - started:.1f} s')
        process.send_signal(signal.SIGINT)
        returncode = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
    log = ''.join(output)
    assert returncode == 0, log[-4000:]
    assert 'stopping:' in log, log[-4000:]
    assert 'FATAL' not in log and 'Traceback' not in log, log[-4000:]
