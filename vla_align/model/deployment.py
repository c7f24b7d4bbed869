"""What deployment must match: the training conditions a checkpoint records (DESIGN.md section 3).

A policy trained at 10 Hz in the frame ``panda_link0`` with one language model and one camera
geometry acts wrongly, without any error, when run at another rate (every twist is scaled), in
another frame, with another language model under the same folder name, or on frames of another
aspect ratio (the crop sees another field of view). The trainer writes a `DeploymentInfo` into
every checkpoint's metadata (``metadata['deployment']``); the policy node checks it against its
own settings with `compare_deployment` and can refuse the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
import hashlib
from pathlib import Path
import subprocess
import threading
from typing import Any, Optional

from vla_align.model.config import ConfigError, PolicyConfig
from vla_align.model.language import DEFAULT_LANGUAGE_PACKAGE, resolve_language_model_dir

#: Relative aspect-ratio difference below which two camera resolutions frame the same view.
ASPECT_TOLERANCE = 0.01
#: Files that define a transformers model: its config, tokenizer and weights. Others (README,
#: sentence-transformers pooling folders, .gitattributes) do not change what the encoder
#: computes, so editing them must not make a checkpoint look foreign.
MODEL_FILE_NAMES = frozenset({'config.json', 'tokenizer.json', 'tokenizer_config.json',
                              'special_tokens_map.json', 'added_tokens.json', 'vocab.txt',
                              'vocab.json', 'merges.txt'})
MODEL_FILE_SUFFIXES = ('.safetensors', '.bin', '.model')  # weights; sentencepiece vocabularies
_GIT_TIMEOUT_S = 5.0
_HASH_CHUNK = 1 << 22


@dataclass(frozen=True)
class DeploymentInfo:
    """Training conditions a deployment must reproduce; None where they are unknown.

    Every field may be None because old or hand-written metadata may lack it; the trainer fills
    all that it knows.
    """

    control_rate_hz: Optional[float]  # one action per control period
    action_frame: Optional[str]  # base frame the actions (and Servo twists) are expressed in
    image_size: Optional[int]  # PolicyConfig.image_size: the square the model sees
    image_crop: Optional[str]  # PolicyConfig.image_crop: how a frame becomes that square
    camera_width: Optional[int]  # the training frames' resolution, before the crop
    camera_height: Optional[int]
    camera_intrinsics: Optional[tuple[float, float, float, float]]  # fx, fy, cx, cy
    state_source: Optional[str]  # pose | tf | none, from the topic contract
    state_layout: Optional[tuple[str, ...]]  # vla_align.data.state.STATE_LABELS
    language_model: Optional[str]  # folder name, or the default model's package name
    language_model_hash: Optional[str]  # language_model_identity's content hash
    contract: Optional[str]  # topic contract name (None: data built in memory)
    git_commit: Optional[str]  # source tree at training start
    git_dirty: Optional[bool]  # uncommitted changes to tracked files at training start

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any) -> DeploymentInfo:
        """Read ``to_dict`` output; a missing key is None, a value of the wrong type raises
        ValueError (a checkpoint whose metadata cannot be trusted must not pass the check)."""
        if not isinstance(data, dict):
            raise ValueError(f'deployment metadata must be a mapping, got {type(data).__name__}')
        values = {}
        for name, check in _FIELD_CHECKS.items():
            value = data.get(name)
            values[name] = None if value is None else check(name, value)
        return cls(**values)


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'deployment {name} must be a number, got {value!r}')
    return float(value)


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'deployment {name} must be an integer, got {value!r}')
    return value


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'deployment {name} must be a string, got {value!r}')
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f'deployment {name} must be true or false, got {value!r}')
    return value


def _intrinsics(name: str, value: Any) -> tuple[float, float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f'deployment {name} must be 4 numbers (fx, fy, cx, cy), got {value!r}')
    fx, fy, cx, cy = (_float(name, v) for v in value)
    return fx, fy, cx, cy


def _labels(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f'deployment {name} must be a list of names, got {value!r}')
    return tuple(_str(name, v) for v in value)


_FIELD_CHECKS = {
    'control_rate_hz': _float, 'action_frame': _str, 'image_size': _int, 'image_crop': _str,
    'camera_width': _int, 'camera_height': _int, 'camera_intrinsics': _intrinsics,
    'state_source': _str, 'state_layout': _labels, 'language_model': _str,
    'language_model_hash': _str, 'contract': _str, 'git_commit': _str, 'git_dirty': _bool}


def deployment_from_metadata(metadata: dict[str, Any]) -> Optional[DeploymentInfo]:
    """``metadata['deployment']`` of a checkpoint, or None where it is absent (older ones)."""
    entry = metadata.get('deployment')
    return None if entry is None else DeploymentInfo.from_dict(entry)


# -- language model identity --------------------------------------------------------------------
_HASH_CACHE: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
_HASH_LOCK = threading.Lock()


def _model_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (top level: what transformers loads) that define the model."""
    return sorted(p for p in folder.iterdir() if p.is_file()
                  and (p.name in MODEL_FILE_NAMES or p.name.endswith(MODEL_FILE_SUFFIXES)))


def language_model_identity(config: PolicyConfig) -> tuple[str, str]:
    """Name and content hash of the language model folder ``config`` resolves to.

    The name alone proves nothing: the folder ``minilm`` on the robot may hold another model
    (or another revision) than ``minilm`` on the training machine, and its embeddings then differ
    silently. So the hash is a sha256 over, for each defining file in the sorted order of their
    relative paths (``config.json``, tokenizer files, weights ``*.safetensors`` / ``*.bin``,
    sentencepiece ``*.model``), the path, the size and the bytes. Files that do not change what
    the encoder computes (README, sentence-transformers extras) are left out.

    Hashing the default MiniLM (~90 MB) takes about 0.1 s once its files are in the page cache
    (0.08-0.11 s over 3 runs on a 2-core machine; longer from a cold disk), so the hash is
    cached in-process per (folder, file sizes, mtimes).
    A fine-tuned language model's weights live in the checkpoint; the hash is then that of the
    folder it started from (its tokenizer and config still come from there).
    """
    folder = resolve_language_model_dir(config.language_model).resolve()
    if not folder.is_dir():
        raise ConfigError(f'language model folder {folder} does not exist')
    name = Path(config.language_model).name if config.language_model else \
        DEFAULT_LANGUAGE_PACKAGE
    files = _model_files(folder)
    if not files:
        raise ConfigError(f'language model folder {folder} has no config, tokenizer or weights '
                          f'files to identify it by')
    stats = [path.stat() for path in files]
    key = (str(folder),
           tuple((p.name, st.st_size, st.st_mtime_ns) for p, st in zip(files, stats, strict=True)))
    with _HASH_LOCK:
        cached = _HASH_CACHE.get(key)
    if cached is not None:
        return name, cached
    digest = hashlib.sha256()
    for path, stat in zip(files, stats, strict=True):
        digest.update(f'{path.relative_to(folder).as_posix()}\0{stat.st_size}\0'.encode())
        with path.open('rb') as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    value = digest.hexdigest()
    with _HASH_LOCK:
        _HASH_CACHE[key] = value
    return name, value


# -- source tree --------------------------------------------------------------------------------
def _git(args: list[str], cwd: Path) -> Optional[str]:
    try:
        result = subprocess.run(['git', *args], capture_output=True, text=True, cwd=cwd,
                                timeout=_GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def git_state(package: Optional[Path] = None) -> tuple[Optional[str], Optional[bool]]:
    """Commit and dirty flag of the git checkout vla_align runs from (or of the package folder
    ``package`` of another checkout); (None, None) outside a git checkout.

    Dirty means tracked files differ from the commit (``git status --porcelain
    --untracked-files=no`` is not empty): the commit alone then does not say what code ran.
    A package installed into a virtualenv that happens to sit inside some checkout is not that
    checkout's code, so the package's ``__init__.py`` must be tracked by the repository found.
    """
    package = Path(__file__).resolve().parents[1] if package is None else Path(package)
    commit = _git(['rev-parse', 'HEAD'], package)
    if not commit or _git(['ls-files', '--error-unmatch', '--', '__init__.py'], package) is None:
        return None, None
    status = _git(['status', '--porcelain', '--untracked-files=no'], package)
    return commit.strip(), None if status is None else bool(status.strip())


# -- comparison ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mismatch:
    """One way the deployment differs from training."""

    field: str
    trained: Any
    deployed: Any
    message: str  # one line, saying what goes wrong


def compare_deployment(info: Optional[DeploymentInfo], *, control_rate_hz: float,
                       action_frame: str, language_model_hash: Optional[str] = None,
                       camera_width: Optional[int] = None, camera_height: Optional[int] = None,
                       state_source: Optional[str] = None) -> list[Mismatch]:
    """Every difference between the checkpoint's training conditions and the deployment's.

    What either side does not know (None, or an empty action frame: a contract that does not
    check frames) is not compared. ``info`` None (a checkpoint from before deployment metadata)
    is one mismatch of field 'deployment': nothing can be checked.
    """
    if info is None:
        return [Mismatch('deployment', None, None, 'the checkpoint predates deployment '
                         'metadata: its control rate, frame, camera and language model cannot '
                         'be checked')]
    found = []
    trained_rate = info.control_rate_hz
    if trained_rate is not None and abs(trained_rate - control_rate_hz) > 1e-6 * trained_rate:
        found.append(Mismatch(
            'control_rate_hz', trained_rate, control_rate_hz,
            f'control rate: trained at {trained_rate:g} Hz, the node runs at '
            f'{control_rate_hz:g} Hz: every twist would be scaled '
            f'{control_rate_hz / trained_rate:.3g}x'))
    if info.action_frame and action_frame and info.action_frame != action_frame:
        found.append(Mismatch(
            'action_frame', info.action_frame, action_frame,
            f'action frame: trained in {info.action_frame!r}, the node commands in '
            f'{action_frame!r}: every motion would go in the wrong direction'))
    if (info.language_model_hash and language_model_hash
            and info.language_model_hash != language_model_hash):
        found.append(Mismatch(
            'language_model_hash', info.language_model_hash, language_model_hash,
            f'language model: trained with {info.language_model or "?"} '
            f'({info.language_model_hash[:12]}), the node loads another '
            f'({language_model_hash[:12]}): instruction embeddings would differ'))
    found.extend(_compare_camera(info, camera_width, camera_height))
    if info.state_source and state_source and info.state_source != state_source:
        found.append(Mismatch(
            'state_source', info.state_source, state_source,
            f'state source: trained on {info.state_source!r} state, the node reads '
            f'{state_source!r}'))
    return found


def _compare_camera(info: DeploymentInfo, width: Optional[int],
                    height: Optional[int]) -> list[Mismatch]:
    if None in (info.camera_width, info.camera_height, width, height):
        return []
    trained, deployed = (info.camera_width, info.camera_height), (width, height)
    if trained == deployed:
        return []
    trained_aspect, deployed_aspect = trained[0] / trained[1], deployed[0] / deployed[1]
    text = f'camera: trained on {trained[0]}x{trained[1]} frames, the node gets ' \
           f'{deployed[0]}x{deployed[1]}'
    if abs(deployed_aspect - trained_aspect) > ASPECT_TOLERANCE * trained_aspect:
        return [Mismatch('camera_aspect_ratio', trained, deployed,
                         f'{text}: another aspect ratio ({trained_aspect:.3f} vs '
                         f'{deployed_aspect:.3f}), the {info.image_crop or "image"} crop would '
                         f'see another field of view')]
    return [Mismatch('camera_resolution', trained, deployed,
                     f'{text}: same aspect ratio, another resolution (same view only if the '
                     f'lens and intrinsics are the same)')]
