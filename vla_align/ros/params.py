"""Declaring node parameters once, with descriptions and ranges, and refusing bad values.

rclpy enforces the ranges of a ``ParameterDescriptor`` when a parameter is declared; the
helpers here turn its exceptions (and values outside an allowed set, which descriptors cannot
express) into a ``ParameterConfigError`` whose message names the node, the parameter, the
value and what is expected. ``runner.run_node`` logs that message and exits with status 1.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node


class StartupError(RuntimeError):
    """A node cannot start (bad configuration, missing device or checkpoint): log and exit 1."""


class ParameterConfigError(StartupError):
    """A parameter value was refused at start-up."""


def _declare(node: Node, name: str, default: Any, descriptor: ParameterDescriptor,
             expected: str) -> Any:
    try:
        return node.declare_parameter(name, default, descriptor).value
    except ParameterException as exc:
        raise ParameterConfigError(
            f'{node.get_name()}: parameter {name!r} refused ({exc}); expected {expected}. '
            f'{name}: {descriptor.description}') from None


def declare_float(node: Node, name: str, default: float, description: str,
                  low: Optional[float] = None, high: Optional[float] = None,
                  read_only: bool = True) -> float:
    """A double parameter, optionally within [low, high] (write 10.0, not 10, in YAML)."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    expected = 'a float (e.g. 10.0, not 10)'
    if low is not None or high is not None:
        lo = -1e300 if low is None else float(low)
        hi = 1e300 if high is None else float(high)
        descriptor.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi,
                                                              step=0.0)]
        expected = f'a float in [{lo:g}, {hi:g}]'
    return float(_declare(node, name, float(default), descriptor, expected))


def declare_int(node: Node, name: str, default: int, description: str,
                low: Optional[int] = None, high: Optional[int] = None,
                read_only: bool = True) -> int:
    """An integer parameter, optionally within [low, high]."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    expected = 'an integer'
    if low is not None or high is not None:
        lo = -(2 ** 62) if low is None else int(low)
        hi = 2 ** 62 if high is None else int(high)
        descriptor.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=0)]
        expected = f'an integer in [{lo}, {hi}]'
    return int(_declare(node, name, int(default), descriptor, expected))


def declare_bool(node: Node, name: str, default: bool, description: str,
                 read_only: bool = True) -> bool:
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    return bool(_declare(node, name, bool(default), descriptor, 'true or false'))


def declare_str(node: Node, name: str, default: str, description: str,
                choices: Optional[Sequence[str]] = None, read_only: bool = True) -> str:
    """A string parameter; with ``choices`` any other value is refused."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    expected = 'a string'
    if choices:
        descriptor.additional_constraints = f'one of: {", ".join(choices)}'
        expected = f'one of {", ".join(repr(c) for c in choices)}'
    value = str(_declare(node, name, str(default), descriptor, expected))
    if choices and value not in choices:
        raise ParameterConfigError(f'{node.get_name()}: parameter {name!r} = {value!r} '
                                   f'refused; expected {expected}. {name}: {description}')
    return value


def declare_str_list(node: Node, name: str, default: Sequence[str], description: str,
                     read_only: bool = True) -> list[str]:
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    return [str(v) for v in _declare(node, name, list(default), descriptor,
                                     'a list of strings')]


def declare_text_or_int(node: Node, name: str, default: str, description: str,
                        read_only: bool = True) -> str:
    """A string parameter that also accepts a bare integer (``source: 0`` for a device)."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only,
                                     dynamic_typing=True)
    value = _declare(node, name, default, descriptor, 'a string or an integer')
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ParameterConfigError(f'{node.get_name()}: parameter {name!r} = {value!r} '
                                   f'refused; expected a string or an integer. {name}: '
                                   f'{description}')
    return str(value)
