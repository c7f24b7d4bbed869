"""A minimal TF buffer for recorded ``/tf`` and ``/tf_static`` (tf2_msgs/TFMessage in bags).

tf2 itself is not installable here and a bag reader needs only one query: the pose of a tool
frame in the base frame at a frame's time, along whatever chain of transforms the bag holds
(``panda_link0 -> panda_link1 -> ... -> panda_hand_tcp``). Transforms are keyed by their header
stamps (or their message's log time), like every other sample the contract reader pairs; static
transforms hold for all time. Where a robot has ``tf2_ros``, the live nodes can use it instead.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Optional

import numpy as np
from scipy.spatial.transform import Rotation

from vla_align.data.state import unit_quaternion


class TransformBuffer:
    def __init__(self) -> None:
        # (parent, child) -> sorted lists of times and (translation, quaternion xyzw)
        self._times: dict[tuple[str, str], list[int]] = {}
        self._values: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        self._static: set[tuple[str, str]] = set()
        self._neighbours: dict[str, set[str]] = {}

    def add(self, parent: str, child: str, time_ns: int, translation: np.ndarray,
            quaternion_xyzw: np.ndarray, static: bool = False) -> None:
        parent, child = parent.lstrip('/'), child.lstrip('/')
        if not parent or not child or parent == child:
            raise ValueError(f'transform {parent!r} -> {child!r} names no edge')
        value = (np.asarray(translation, np.float64), unit_quaternion(quaternion_xyzw))
        if not np.all(np.isfinite(value[0])):
            raise ValueError('non-finite transform')
        key = (parent, child)
        times = self._times.setdefault(key, [])
        values = self._values.setdefault(key, [])
        if static:
            self._static.add(key)
            times[:], values[:] = [0], [value]
        else:
            index = int(np.searchsorted(times, time_ns, side='right'))
            times.insert(index, int(time_ns))
            values.insert(index, value)
        self._neighbours.setdefault(parent, set()).add(child)
        self._neighbours.setdefault(child, set()).add(parent)

    def add_message(self, msg: Any, time_ns: int, static: bool = False,
                    use_header: bool = False) -> None:
        """Every transform of a tf2_msgs/TFMessage, at ``time_ns`` or (``use_header``) at
        each transform's own non-zero header stamp."""
        for transform in msg.transforms:
            t, r = transform.transform.translation, transform.transform.rotation
            stamp = transform.header.stamp
            when = (int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)) if use_header else 0
            self.add(str(transform.header.frame_id), str(transform.child_frame_id),
                     when or time_ns, np.array([t.x, t.y, t.z]),
                     np.array([r.x, r.y, r.z, r.w]), static)

    def lookup(self, parent: str, child: str, time_ns: int,
               max_age_ns: int) -> Optional[np.ndarray]:
        """(7,) position + unit quaternion of ``child`` in ``parent`` at ``time_ns``, from
        the newest transform of each dynamic edge at most ``max_age_ns`` old; None when the
        chain is broken or too old."""
        path = self._path(parent.lstrip('/'), child.lstrip('/'))
        if path is None:
            return None
        rotation, translation = Rotation.identity(), np.zeros(3)
        for a, b in zip(path, path[1:], strict=False):  # consecutive frames
            edge = self._at((a, b), time_ns, max_age_ns)
            if edge is None:
                inverse = self._at((b, a), time_ns, max_age_ns)
                if inverse is None:
                    return None
                inv_rot = Rotation.from_quat(inverse[1]).inv()
                edge = (-inv_rot.apply(inverse[0]), inv_rot.as_quat())
            translation = translation + rotation.apply(edge[0])
            rotation = rotation * Rotation.from_quat(edge[1])
        return np.concatenate([translation, unit_quaternion(rotation.as_quat())])

    def _at(self, key: tuple[str, str], time_ns: int,
            max_age_ns: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        times = self._times.get(key)
        if not times:
            return None
        if key in self._static:
            return self._values[key][0]
        index = int(np.searchsorted(times, time_ns, side='right')) - 1
        if index < 0 or time_ns - times[index] > max_age_ns:
            return None
        return self._values[key][index]

    def _path(self, start: str, goal: str) -> Optional[list[str]]:
        """Frames from ``start`` to ``goal`` through the transform graph (breadth first)."""
        if start not in self._neighbours or goal not in self._neighbours:
            return None
        previous: dict[str, Optional[str]] = {start: None}
        queue = deque([start])
        while queue:
            frame = queue.popleft()
            if frame == goal:
                path = [goal]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return path[::-1]
            for neighbour in self._neighbours[frame]:
                if neighbour not in previous:
                    previous[neighbour] = frame
                    queue.append(neighbour)
        return None
