"""ldmkit's console: the messages and progress bars of every command, on stderr."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)
