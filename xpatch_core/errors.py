"""Exceptions raised by xpatch."""

from __future__ import annotations


class XpatchError(ValueError):
    """Base class of the errors xpatch raises for bad input or parameters."""


class ImageDecodeError(XpatchError):
    """An image could not be read; ``reason`` says why in a few words."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ModelError(XpatchError):
    """A model could not be loaded or does not support the request."""


class ParameterError(XpatchError):
    """A parameter is invalid; raised before any work is done."""
