"""ldmkit's console: the messages and progress bars of every command, on stderr."""

from __future__ import annotations

from rich.console import Console

# soft_wrap: a message is one line also off a terminal (rich would wrap it at 80 columns in a log file or a pipe)
console = Console(stderr=True, soft_wrap=True)
