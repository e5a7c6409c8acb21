"""Dataclass configs <-> argparse: a field's ``help`` metadata becomes its ``--help`` text.

Library code takes dataclasses; only the CLI turns argv into them::

    @dataclass
    class TrainConfig:
        steps: int = field(default=5000, metadata={"help": "optimiser steps"})

    add_dataclass_arguments(parser, TrainConfig)      # --steps N
    config = dataclass_from_namespace(TrainConfig, args)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = ()
) -> None:
    """Add one ``--flag`` per dataclass field (underscores become dashes)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tp, _ = _unwrap_optional(hints[f.name])
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kwargs: dict[str, Any] = {"default": default, "dest": f.name}
        if get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
        elif get_origin(tp) in (tuple, list):
            item = get_args(tp)[0]
            kwargs["type"] = item
            kwargs["nargs"] = "+"
        else:
            kwargs["type"] = tp
        # The CLI's ArgumentDefaultsHelpFormatter appends "(default: ...)" to every flag's help.
        parser.add_argument(flag, help=help_text, metavar=f.metadata.get("metavar"), **kwargs)


def dataclass_from_namespace(cls: type, namespace: argparse.Namespace, **overrides: Any):
    """Build ``cls`` from parsed arguments (fields missing from the namespace keep their defaults)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif hasattr(namespace, f.name):
            value = getattr(namespace, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


# The GAN networks' hidden-layer activations (ModelConfig / TrainConfig.activation; their modules:
# simgan.gan_networks.ACTIVATIONS, which a test keeps equal to these names)
Activation = Literal["silu", "relu", "hardswish"]
ACTIVATION_NAMES: tuple[str, ...] = get_args(Activation)


def check_activation(activation: Any) -> None:
    """Raise a ValueError unless ``activation`` is one of :data:`ACTIVATION_NAMES`."""
    if not isinstance(activation, str) or activation not in ACTIVATION_NAMES:
        raise ValueError(f"activation: expected one of {list(ACTIVATION_NAMES)}, got {activation!r}")


def check_hidden_sizes(name: str, sizes: Any, *, allow_empty: bool = False) -> None:
    """Raise a ValueError naming ``name`` unless ``sizes`` is a sequence of positive layer widths."""
    valid = isinstance(sizes, (tuple, list)) and all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in sizes
    )
    if not valid or (not sizes and not allow_empty):
        need = "positive layer widths" + ("" if allow_empty else " (at least one)")
        raise ValueError(f"{name}: expected {need}, got {sizes!r}")
