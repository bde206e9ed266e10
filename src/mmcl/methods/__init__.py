"""Continual-learning methods: one file each, registered by name.

A method subclasses `Method`, declares its hyper-parameters as a dataclass `Hparams`, and
overrides only the hooks it needs. `mmcl list` shows every registered method.
"""
from __future__ import annotations

import importlib
import pkgutil

from mmcl.methods.base import METHODS, Method, register

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")


def method_hparams(name: str) -> type:
    return METHODS[name].Hparams


__all__ = ["METHODS", "Method", "register", "method_hparams"]
