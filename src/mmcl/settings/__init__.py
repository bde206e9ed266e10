"""Settings: the kinds of continual-learning problem mmcl runs, registered by name (see `base`)."""
from __future__ import annotations

from mmcl.settings.base import SETTINGS, EvalResult, Evaluator, Setting, make_setting, register_setting
from mmcl.settings.modality import ModalitySetting
from mmcl.settings.scenario import ScenarioSetting


def build_stream(cfg: dict):
    """The stream of a resolved config, built by its setting."""
    return make_setting(cfg).build_stream()


__all__ = ["SETTINGS", "EvalResult", "Evaluator", "ModalitySetting", "ScenarioSetting", "Setting", "build_stream",
           "make_setting", "register_setting"]
