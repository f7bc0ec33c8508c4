"""The service's settings: `model_lib.settings.ServiceSettings`, where every `CATDOG_*`
setting is declared once (type, default, doc); read once from the environment by
bento/service.py. Light: pydantic-settings and model_lib's torch-free modules only."""

from __future__ import annotations

from model_lib.settings import MiB, available_cpus
from model_lib.settings import ServiceSettings as Settings

__all__ = ["MiB", "Settings", "available_cpus"]
