"""OpenCV frame sources of the camera node: folders, videos, clear errors."""
import cv2
import numpy as np
import pytest

from vla_align.ros.frame_source import FrameSourceError, fit_frame, open_frame_source


def solid(value: int, size=(24, 32)) -> np.ndarray:
    """An RGB frame whose red channel is `value` (green 0, blue 255)."""
    frame = np.zeros((*size, 3), np.uint8)
    frame[..., 0], frame[..., 2] = value, 255
    return frame


def write_rgb_png(path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_folder_frames_come_in_name_order_as_rgb_and_loop(tmp_path):
    for name, value in (('b.png', 20), ('a.png', 10), ('c.jpg', 30)):
        write_rgb_png(tmp_path / name, solid(value))
    (tmp_path / 'notes.txt').write_text('not an image')
    source = open_frame_source(str(tmp_path), loop=True)
    reds = [int(source.read()[..., 0].mean().round()) for _ in range(4)]
    assert reds[:2] == [10, 20] and abs(reds[2] - 30) <= 2 and reds[3] == 10
    frame = open_frame_source(str(tmp_path)).read()
    assert frame.shape == (24, 32, 3) and frame[..., 2].min() >= 250  # blue stays blue


def test_folder_without_loop_ends_and_skips_unreadable_files(tmp_path):
    write_rgb_png(tmp_path / 'a.png', solid(10))
    (tmp_path / 'b.png').write_bytes(b'not a png')
    source = open_frame_source(str(tmp_path), loop=False)
    assert source.read() is not None
    assert source.read() is None
    assert [p.name for p in source.unreadable] == ['b.png']


def test_video_file_is_read_to_its_end(tmp_path):
    path = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (32, 24))
    assert writer.isOpened()
    for value in (0, 120, 240):
        writer.write(cv2.cvtColor(solid(value), cv2.COLOR_RGB2BGR))
    writer.release()
    source = open_frame_source(str(path), loop=False)
    frames = [source.read() for _ in range(3)]
    reds = [int(frame[..., 0].mean()) for frame in frames]
    assert np.allclose(reds, [0, 120, 240], atol=8)
    assert source.read() is None
    source.close()
    looping = open_frame_source(str(path), loop=True)
    assert all(looping.read() is not None for _ in range(7))


@pytest.mark.parametrize('spec,message', [
    ('/no/such/camera.mp4', 'no camera device, video file or image folder'),
    ('', 'no camera source given'),
])
def test_missing_sources_say_what_was_expected(spec, message):
    with pytest.raises(FrameSourceError, match=message):
        open_frame_source(spec)


def test_empty_folder_and_undecodable_video_are_refused(tmp_path):
    with pytest.raises(FrameSourceError, match='no image files'):
        open_frame_source(str(tmp_path))
    bogus = tmp_path / 'clip.mp4'
    bogus.write_bytes(b'\x00' * 64)
    with pytest.raises(FrameSourceError, match='cannot open video file'):
        open_frame_source(str(bogus))


def test_absent_camera_device_is_refused():
    with pytest.raises(FrameSourceError, match='cannot open camera device 63'):
        open_frame_source('63')


def test_fit_frame_resizes_only_what_is_asked():
    frame = solid(5, (48, 64))
    assert fit_frame(frame, 0, 0) is frame
    assert fit_frame(frame, 32, 0).shape == (48, 32, 3)
    assert fit_frame(frame, 128, 96).shape == (96, 128, 3)
