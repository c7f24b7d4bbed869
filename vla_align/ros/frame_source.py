"""Frames for the camera node from OpenCV: a camera device, a video file or a folder of images.

``open_frame_source(spec)`` picks the kind from the spec (an integer is a device index, a
directory is an image folder, any other existing file is a video or a single image) and raises
``FrameSourceError`` with a sentence a user can act on when nothing usable is there.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


class FrameSourceError(RuntimeError):
    """The source cannot be opened or read."""


def bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an OpenCV frame (BGR, BGRA or grayscale)."""
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def fit_frame(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` resized to width x height (0 keeps that dimension as it is)."""
    h, w = rgb.shape[:2]
    size = (width or w, height or h)
    if size == (w, h):
        return rgb
    shrinking = size[0] * size[1] < w * h
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


class FrameSource(ABC):
    """Yields RGB frames; ``read`` returns None when a finite source has no more frames."""

    description: str

    @abstractmethod
    def read(self) -> Optional[np.ndarray]:
        """The next (H, W, 3) uint8 RGB frame, or None at the end of a non-looping source."""

    def close(self) -> None:  # noqa: B027 - sources without a handle need no cleanup
        """Release the device or file."""


class CaptureSource(FrameSource):
    """A camera device or a video file through ``cv2.VideoCapture``."""

    def __init__(self, target: int | str, loop: bool) -> None:
        self._target = target
        self._loop = loop and isinstance(target, str)
        self._capture = cv2.VideoCapture(target)
        if isinstance(target, int):
            self.description = f'camera device {target}'
            hint = f'is a camera connected and /dev/video{target} readable by this user?'
        else:
            self.description = f'video file {target}'
            hint = 'is it a video format this OpenCV build can decode?'
        if not self._capture.isOpened():
            self._capture.release()
            raise FrameSourceError(f'cannot open {self.description}: {hint}')

    def read(self) -> Optional[np.ndarray]:
        ok, frame = self._capture.read()
        if not ok and self._loop:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
        if not ok:
            if isinstance(self._target, int):
                raise FrameSourceError(f'{self.description} stopped delivering frames')
            return None
        return bgr_to_rgb(frame)

    def close(self) -> None:
        self._capture.release()


class FolderSource(FrameSource):
    """Image files in name order (one file: a still image), optionally looping."""

    def __init__(self, files: list[Path], loop: bool, description: str) -> None:
        if not files:
            raise FrameSourceError(f'{description} has no image files '
                                   f'({", ".join(IMAGE_SUFFIXES)})')
        self._files = files
        self._loop = loop
        self._index = 0
        self.description = description
        self.unreadable: list[Path] = []

    def read(self) -> Optional[np.ndarray]:
        for _ in range(len(self._files)):
            if self._index >= len(self._files):
                if not self._loop:
                    return None
                self._index = 0
            path = self._files[self._index]
            self._index += 1
            frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if frame is not None and frame.dtype == np.uint8:
                return bgr_to_rgb(frame)
            if path not in self.unreadable:
                self.unreadable.append(path)
        raise FrameSourceError(f'no readable 8-bit image in {self.description}')


def open_frame_source(spec: str, loop: bool = True) -> FrameSource:
    """Open ``spec``: a device index ('0'), an image folder, a video file or an image file."""
    text = str(spec).strip()
    if not text:
        raise FrameSourceError('no camera source given (a device index, a video file or an '
                               'image folder)')
    if text.isdigit():
        return CaptureSource(int(text), loop=False)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return FolderSource(files, loop, f'image folder {path}')
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return FolderSource([path], loop=True, description=f'image file {path}')
        return CaptureSource(str(path), loop)
    raise FrameSourceError(f'no camera device, video file or image folder at {text!r}')
