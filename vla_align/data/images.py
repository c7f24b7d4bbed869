"""The one image decoder: sensor_msgs/Image or CompressedImage -> (H, W, 3) uint8 RGB.

Used by the policy node (rclpy messages), the bag readers (rosbags messages) and the replay
tools alike: both message kinds have the same fields, so ``decode_image`` reads either.

* ``sensor_msgs/Image``: rgb8, bgr8, rgba8, bgra8, mono8 (8 bits per channel), and mono16 /
  16UC1 scaled to 8 bits; any row padding (``step``); big-endian 16-bit data too. Tightly packed
  rgb8 is returned as a read-only view on the message buffer (no copy).
* ``sensor_msgs/CompressedImage``: jpeg and png, decoded with OpenCV; ``format`` may be
  ``jpeg``, ``png``, ``rgb8; jpeg compressed bgr8`` (image_transport's form), ...

Every problem is an ``ImageDecodeError`` (a ``ValueError``) with a one-line reason.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

#: Channels and the source channel of R, G, B for the 8-bit raw encodings.
RAW_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    'rgb8': (3, (0, 1, 2)), 'bgr8': (3, (2, 1, 0)), 'rgba8': (4, (0, 1, 2)),
    'bgra8': (4, (2, 1, 0)), 'mono8': (1, (0, 0, 0)), '8uc1': (1, (0, 0, 0)),
    '8uc3': (3, (2, 1, 0)),  # OpenCV's default channel order is BGR
}
#: 16-bit single-channel encodings (depth-like or infrared cameras): scaled to 8 bits.
MONO16_ENCODINGS = ('mono16', '16uc1')
COMPRESSED_FORMATS = ('jpeg', 'jpg', 'png')


class ImageDecodeError(ValueError):
    """An image message that cannot be read as the documented encoding and size."""


def is_compressed(msg: Any) -> bool:
    """A CompressedImage carries ``format`` and no ``encoding``."""
    return hasattr(msg, 'format') and not hasattr(msg, 'encoding')


def decode_image(msg: Any, max_pixels: Optional[int] = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an Image or CompressedImage message (rclpy or rosbags).

    ``max_pixels`` refuses larger images before any pixel is touched (None: no limit).
    """
    if is_compressed(msg):
        return _decode_compressed(msg, max_pixels)
    return _decode_raw(msg, max_pixels)


def _decode_raw(msg: Any, max_pixels: Optional[int]) -> np.ndarray:
    encoding = str(msg.encoding).lower()
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'image has no pixels ({width}x{height})')
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(f'image of {width}x{height} pixels is larger than the '
                               f'{max_pixels} pixels allowed (max_image_pixels)')
    if encoding in MONO16_ENCODINGS:
        channels, itemsize = 1, 2
    elif encoding in RAW_ENCODINGS:
        channels, itemsize = RAW_ENCODINGS[encoding][0], 1
    else:
        known = ', '.join([*RAW_ENCODINGS, *MONO16_ENCODINGS])
        raise ImageDecodeError(f'unsupported image encoding {str(msg.encoding)[:40]!r}; '
                               f'expected one of {known}, or a CompressedImage')
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ImageDecodeError(f'{encoding} image step {step} is shorter than a row of '
                               f'{width} pixels ({row_bytes} bytes)')
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * height:
        raise ImageDecodeError(f'image data has {data.size} bytes, expected step x height '
                               f'= {step} x {height} = {step * height}')
    rows = data.reshape(height, step)[:, :row_bytes]
    if itemsize == 2:
        order = '>' if int(getattr(msg, 'is_bigendian', 0)) else '<'
        values = np.ascontiguousarray(rows).view(f'{order}u2').reshape(height, width)
        scaled = (values >> 8).astype(np.uint8)  # the top 8 bits of 16
        return np.ascontiguousarray(np.broadcast_to(scaled[..., None], (height, width, 3)))
    pixels = rows.reshape(height, width, channels)
    if encoding == 'rgb8':
        return pixels if step == row_bytes else np.ascontiguousarray(pixels)
    if channels == 1:
        return np.ascontiguousarray(np.broadcast_to(pixels, (height, width, 3)))
    return np.ascontiguousarray(pixels[..., list(RAW_ENCODINGS[encoding][1])])


def _decode_compressed(msg: Any, max_pixels: Optional[int]) -> np.ndarray:
    import cv2

    fmt = str(msg.format).lower()
    if fmt and not any(name in fmt for name in COMPRESSED_FORMATS):
        raise ImageDecodeError(f'compressed image format {str(msg.format)[:40]!r} is not '
                               f'jpeg or png')
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ImageDecodeError('compressed image has no data')
    if max_pixels is not None:
        # Read the header only: a decompression bomb is refused before it is decoded.
        ok, header = _compressed_size(data)
        if ok and header[0] * header[1] > max_pixels:
            raise ImageDecodeError(f'compressed image of {header[1]}x{header[0]} pixels is '
                                   f'larger than the {max_pixels} pixels allowed')
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageDecodeError(f'compressed image ({str(msg.format)[:40]!r}, {data.size} '
                               f'bytes) cannot be decoded')
    if max_pixels is not None and bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise ImageDecodeError(f'compressed image of {bgr.shape[1]}x{bgr.shape[0]} pixels is '
                               f'larger than the {max_pixels} pixels allowed')
    return np.ascontiguousarray(bgr[..., ::-1])


def _compressed_size(data: np.ndarray) -> tuple[bool, tuple[int, int]]:
    """(height, width) from a PNG or baseline/progressive JPEG header, without decoding."""
    raw = data.tobytes()
    if raw[:8] == b'\x89PNG\r\n\x1a\n' and len(raw) >= 24:
        return True, (int.from_bytes(raw[20:24], 'big'), int.from_bytes(raw[16:20], 'big'))
    if raw[:2] == b'\xff\xd8':
        index = 2
        while index + 9 < len(raw):
            if raw[index] != 0xFF:
                return False, (0, 0)
            marker = raw[index + 1]
            length = int.from_bytes(raw[index + 2:index + 4], 'big')
            if marker in (0xC0, 0xC1, 0xC2):  # start of frame: height, width follow
                return True, (int.from_bytes(raw[index + 5:index + 7], 'big'),
                              int.from_bytes(raw[index + 7:index + 9], 'big'))
            index += 2 + length
    return False, (0, 0)
