"""ament_python package definition: `colcon build` installs nodes under lib/vla_align."""
from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'vla_align'


def tree(folder: str) -> list[tuple[str, list[str]]]:
    """Every file under `folder`, mapped to the same relative path in share/vla_align."""
    entries = []
    for root, _dirs, files in os.walk(folder):
        if files:
            entries.append((os.path.join('share', PACKAGE, root),
                            [os.path.join(root, name) for name in files]))
    return entries


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        *tree('config'),
        *tree('sim'),
        *tree('checkpoints'),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='vla_align maintainers',
    maintainer_email='maintainers@vla-align.invalid',
    description='Language-conditioned manipulation policies for ROS 2 with V-L-A alignment.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'vla-align = vla_align.cli:main',
            'camera_node = vla_align.ros.camera_node:main',
            'instruction_node = vla_align.ros.instruction_node:main',
            'policy_node = vla_align.ros.policy_node:main',
            'sim_node = vla_align.ros.sim_node:main',
            'bag_player_node = vla_align.ros.bag_player_node:main',
            'record = vla_align.ros.record:main',
            'episode_recorder = vla_align.ros.episode_recorder:main',
            'teleop_node = vla_align.ros.teleop_node:main',
            'scripted_operator = vla_align.ros.scripted_operator:main',
        ],
    },
)
