"""camera_node: frames from OpenCV as sensor_msgs/Image + CameraInfo at a fixed rate.

``source`` is a device index (``0``), a video file or a folder of images (name order); frames
are resized to ``width`` x ``height`` (0 keeps the native size) and published in
``encoding`` (rgb8 by default) with sensor-data QoS. CameraInfo describes an undistorted
pinhole camera with the vertical field of view ``fov_deg`` (for a calibrated camera, use the
driver of that camera instead of this node). A source that cannot be opened is reported in one
log line and the node exits with status 1.
"""
from __future__ import annotations

import time
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from vla_align.ros import qos, topics
from vla_align.ros.conversions import (
    ENCODING_CHANNELS,
    camera_info_msg,
    diagnostic_array,
    diagnostic_status,
    rgb_to_image,
)
from vla_align.ros.frame_source import FrameSourceError, fit_frame, open_frame_source
from vla_align.ros.metrics import RateMeter
from vla_align.ros.params import (
    StartupError,
    declare_bool,
    declare_float,
    declare_int,
    declare_str,
    declare_text_or_int,
)
from vla_align.ros.runner import run_node
from vla_align.sim.types import CameraConfig

NODE_NAME = 'camera_node'


class CameraNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._source = None  # first: destroy_node runs even after a failed start
        self._published = 0
        spec = declare_text_or_int(self, 'source', '0',
                                   'camera device index, video file, image file or image folder')
        rate = declare_float(self, 'rate_hz', 30.0, 'frames published per second', 0.1, 1000.0)
        self.width = declare_int(self, 'width', 0, 'output width in pixels (0: native)', 0,
                                 16384)
        self.height = declare_int(self, 'height', 0, 'output height in pixels (0: native)', 0,
                                  16384)
        self.frame_id = declare_str(self, 'frame_id', 'camera_color_optical_frame',
                                    'frame_id of images and camera info')
        loop = declare_bool(self, 'loop', True, 'restart a video file or folder at its end')
        self.fov_deg = declare_float(self, 'fov_deg', 60.0,
                                     'vertical field of view for CameraInfo (degrees)', 1.0,
                                     179.0)
        self.encoding = declare_str(self, 'encoding', 'rgb8', 'published pixel encoding',
                                    tuple(ENCODING_CHANNELS))
        try:
            self._source = open_frame_source(spec, loop=loop)
        except FrameSourceError as exc:
            raise StartupError(f'{NODE_NAME}: {exc}') from None
        self._failing = False
        self._ended = False
        self._unreadable_reported = 0
        self._rate = RateMeter()

        self._image_pub = self.create_publisher(Image, topics.IMAGE, qos.SENSOR_DATA)
        self._info_pub = self.create_publisher(CameraInfo, topics.CAMERA_INFO, qos.SENSOR_DATA)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS,
                                                      qos.DEFAULT)
        self._timer = self.create_timer(1.0 / rate, self._on_timer)
        self._diagnostics_timer = self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(f'publishing {self._source.description} at {rate:g} Hz')

    def _on_timer(self) -> None:
        try:
            rgb = self._source.read()
        except FrameSourceError as exc:
            if not self._failing:
                self.get_logger().error(str(exc))
                self._failing = True
            return
        self._report_unreadable_files()
        if rgb is None:
            self.get_logger().info(f'end of {self._source.description} after '
                                   f'{self._published} frames (loop is off)')
            self._timer.cancel()
            self._ended = True
            return
        if self._failing:
            self.get_logger().info(f'{self._source.description} delivers frames again')
            self._failing = False
        rgb = fit_frame(rgb, self.width, self.height)
        height, width = rgb.shape[:2]
        stamp = self.get_clock().now().to_msg()
        intrinsics = CameraConfig(width=width, height=height, fov_deg=self.fov_deg).intrinsics()
        self._image_pub.publish(rgb_to_image(rgb, stamp, self.frame_id, self.encoding))
        self._info_pub.publish(camera_info_msg(width, height, intrinsics, stamp, self.frame_id))
        self._published += 1
        self._rate.tick(time.monotonic())

    def _publish_diagnostics(self) -> None:
        if self._failing:
            level, message = DiagnosticStatus.ERROR, 'source stopped delivering frames'
        elif self._ended:
            level, message = DiagnosticStatus.WARN, 'end of source (loop is off)'
        else:
            level, message = DiagnosticStatus.OK, 'publishing'
        values = {'source': self._source.description, 'frames': self._published,
                  'rate_hz': self._rate.rate(time.monotonic()),
                  'unreadable_files': self._unreadable_reported}
        status = diagnostic_status(f'{self.get_name()}: camera', self._source.description,
                                   level, message, values)
        self._diagnostics_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))

    def _report_unreadable_files(self) -> None:
        unreadable = getattr(self._source, 'unreadable', [])
        for path in unreadable[self._unreadable_reported:]:
            self.get_logger().warning(f'skipping unreadable image {path}')
        self._unreadable_reported = len(unreadable)

    def destroy_node(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
        self.get_logger().info(f'stopping after {self._published} frames')
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    return run_node(CameraNode, NODE_NAME, args)


if __name__ == '__main__':
    raise SystemExit(main())
