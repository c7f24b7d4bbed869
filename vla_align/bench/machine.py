"""What the figures were measured on: device, library versions, threads, CPU, load."""
from __future__ import annotations

from dataclasses import asdict, dataclass
import datetime
import os
from pathlib import Path
import platform
from typing import Any, Optional

import torch

from vla_align.model.device import cpu_has_native_bf16


@dataclass(frozen=True)
class MachineInfo:
    device: str  # 'cpu' or 'cuda:N'
    device_name: str  # CPU model or GPU name
    cpu_model: str
    cpu_count: int  # logical CPUs visible to this process
    torch_threads: int  # torch intra-op threads used for the CPU measurements
    torch_version: str
    cuda_version: Optional[str]
    cpu_native_bf16: bool
    python_version: str
    platform: str
    #: 1/5/15-minute load average when the bench started: a loaded machine inflates latency.
    load_average_at_start: tuple[float, float, float]
    started_at: str  # ISO 8601, UTC

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def busy(self) -> bool:
        """The 1-minute load average was at least half the CPU count at the start."""
        return self.load_average_at_start[0] >= 0.5 * max(self.cpu_count, 1)


def available_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform says."""
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors='replace').splitlines():
            if line.lower().startswith('model name') and ':' in line:
                return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine() or 'unknown'


def describe_machine(device: torch.device) -> MachineInfo:
    cpu = cpu_model_name()
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu
    try:
        load = tuple(round(v, 2) for v in os.getloadavg())
    except OSError:  # not available on this platform
        load = (float('nan'),) * 3
    return MachineInfo(
        device=str(device), device_name=name, cpu_model=cpu,
        cpu_count=available_cpus(),
        torch_threads=torch.get_num_threads(), torch_version=torch.__version__,
        cuda_version=torch.version.cuda if device.type == 'cuda' else None,
        cpu_native_bf16=cpu_has_native_bf16(), python_version=platform.python_version(),
        platform=platform.platform(), load_average_at_start=load,
        started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
