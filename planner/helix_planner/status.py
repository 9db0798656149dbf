"""One status line on stderr for commands that take more than a moment (planning, simulating).

On a terminal the line is redrawn in place with the latest message and the elapsed time (and the
time limit, when there is one), ticking once a second even while a step has nothing new to say:
HiGHS can search for a minute between incumbents, and a silent minute reads as a hang. Off a
terminal (logs, CI, pipes) and with --quiet nothing is drawn, so captured output holds results only.
"""

import shutil
import sys
import threading
import time
from types import TracebackType
from typing import TextIO


class StatusLine:
    """Use as a context manager; call it with each progress message. Cleared on exit."""

    def __init__(self, task: str, *, limit: float | None = None, quiet: bool = False,
                 stream: TextIO | None = None, tick: float = 1.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self.task, self.limit, self.tick = task, limit, tick
        self.message = ""
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="status-line", daemon=True)

    def __enter__(self) -> "StatusLine":
        if self.enabled:
            self._draw()
            self._ticker.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.enabled:
            self._stop.set()
            self._ticker.join()
            with self._lock:
                self.stream.write("\r\033[K")
                self.stream.flush()

    def __call__(self, message: str) -> None:
        """Replace the message on the line."""
        self.message = " ".join(message.split())
        if self.enabled:
            self._draw()

    def keep(self, message: str) -> None:
        """A line worth keeping on screen (a result on the way), printed above the status line."""
        if self.enabled:
            with self._lock:
                self.stream.write(f"\r\033[K{message}\n")
            self._draw()

    def text(self) -> str:
        """`planning geo-demo  12 s of 60 s  milp 10.1s incumbent ...`, cut to the terminal's width."""
        elapsed = time.monotonic() - self.started
        clock = f"{elapsed:.0f} s" + (f" of {self.limit:.0f} s" if self.limit is not None else "")
        line = f"{self.task}  {clock}  {self.message}".rstrip()
        return line[:shutil.get_terminal_size().columns - 1]

    def _draw(self) -> None:
        with self._lock:
            self.stream.write(f"\r\033[K{self.text()}")
            self.stream.flush()

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.tick):
            self._draw()
