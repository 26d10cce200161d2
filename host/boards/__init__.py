"""Boards: the emulators (`emulate`), and the tools they need (`tools`)."""

from .emulate import KINDS, BoardError, EmulatedBoard, emulate

__all__ = ["KINDS", "BoardError", "EmulatedBoard", "emulate"]
