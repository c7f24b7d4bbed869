"""The one image decoder, on rclpy and rosbags messages alike: encodings, padding, compression."""
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from vla_align.data import ros_messages as rm
from vla_align.data.images import ImageDecodeError, decode_image


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


def raw(pixels: np.ndarray, encoding: str, pad: int = 0, kind: str = 'rclpy',
        bigendian: int = 0):
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    rows = np.concatenate([rows, np.zeros((height, pad), rows.dtype)], axis=1) if pad else rows
    data = np.ascontiguousarray(rows).tobytes()
    fields = dict(height=height, width=width, encoding=encoding, is_bigendian=bigendian,
                  step=len(data) // height)
    if kind == 'rclpy':
        msg = Image(**fields)
        msg.data = data
        return msg
    return rm.TYPESTORE.types[rm.IMAGE](header=rm.header(0, 'cam'),
                                        data=np.frombuffer(data, np.uint8), **fields)


@pytest.mark.parametrize('kind', ['rclpy', 'rosbags'])
@pytest.mark.parametrize('pad', [0, 3])
def test_colour_encodings_give_the_same_rgb(rgb, kind, pad):
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    cases = {'rgb8': rgb, 'bgr8': rgb[..., ::-1], 'rgba8': np.concatenate([rgb, alpha], 2),
             'bgra8': np.concatenate([rgb[..., ::-1], alpha], 2)}
    for encoding, pixels in cases.items():
        out = decode_image(raw(np.ascontiguousarray(pixels), encoding, pad, kind))
        assert out.shape == rgb.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)


def test_mono_and_16_bit_images_become_grey_rgb(rgb):
    grey = rgb[..., 0]
    out = decode_image(raw(np.ascontiguousarray(grey[..., None]), 'mono8'))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    wide = grey.astype(np.uint16) * 256 + 17  # the top byte carries the picture
    for bigendian, order in ((0, '<u2'), (1, '>u2')):
        data = np.ascontiguousarray(wide.astype(order)).view(np.uint8).reshape(grey.shape[0], -1)
        msg = raw(data, '16UC1', bigendian=bigendian)
        msg.width = grey.shape[1]
        out = decode_image(msg)
        np.testing.assert_array_equal(out[..., 1], grey)


def test_packed_rgb8_is_a_view_without_a_copy(rgb):
    msg = raw(rgb, 'rgb8', kind='rosbags')
    out = decode_image(msg)
    assert np.shares_memory(out, msg.data)


@pytest.mark.parametrize('fmt,ext', [('jpeg', '.jpg'), ('png', '.png'),
                                     ('rgb8; jpeg compressed bgr8', '.jpg')])
def test_compressed_images_decode_to_rgb(fmt, ext):
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 48)[None, :].astype(np.uint8)  # red ramp
    smooth[..., 2] = 90
    ok, encoded = cv2.imencode(ext, smooth[..., ::-1])
    assert ok
    msg = CompressedImage(format=fmt)
    msg.data = encoded.tobytes()
    out = decode_image(msg)
    assert out.shape == smooth.shape
    tolerance = 0 if ext == '.png' else 12
    assert np.abs(out.astype(int) - smooth.astype(int)).max() <= tolerance


def test_oversized_compressed_images_are_refused_from_the_header():
    big = np.zeros((300, 400, 3), np.uint8)
    for ext in ('.png', '.jpg'):
        msg = CompressedImage(format=ext[1:])
        msg.data = cv2.imencode(ext, big)[1].tobytes()
        with pytest.raises(ImageDecodeError, match='larger than'):
            decode_image(msg, max_pixels=1000)


@pytest.mark.parametrize('mutate,words', [
    (lambda m: setattr(m, 'encoding', 'yuv422'), 'unsupported image encoding'),
    (lambda m: setattr(m, 'step', 2), 'shorter than a row'),
    (lambda m: setattr(m, 'height', 6), 'bytes, expected'),
    (lambda m: setattr(m, 'width', 0), 'no pixels'),
])
def test_malformed_raw_images_are_refused_with_the_reason(rgb, mutate, words):
    msg = raw(rgb, 'rgb8')
    mutate(msg)
    with pytest.raises(ImageDecodeError, match=words):
        decode_image(msg)


def test_garbage_compressed_data_is_refused():
    msg = CompressedImage(format='jpeg')
    msg.data = b'\xff\xd8not a jpeg at all'
    with pytest.raises(ImageDecodeError, match='cannot be decoded'):
        decode_image(msg)
    msg = CompressedImage(format='tiff')
    msg.data = b'II*\x00'
    with pytest.raises(ImageDecodeError, match='not jpeg or png'):
        decode_image(msg)
