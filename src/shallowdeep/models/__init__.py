"""Backbones (one file per family) behind one strict registry."""

from . import mobilenet, resnet, small, vgg, wrn  # noqa: F401  (importing registers the builders)
from .base import CNN
from .registry import build_cnn, list_archs, register

__all__ = ["CNN", "build_cnn", "list_archs", "register"]
