"""Run a call with a bounded wait, without ever blocking the caller longer.

Python cannot kill a thread, so a call that hangs keeps its thread. What a
cache can promise is that *its caller* gets an answer in bounded time and that
the stuck threads stay bounded in number: :class:`Deadline` runs each call in
a daemon thread (a hung embedder never keeps the process from exiting), waits
at most ``seconds``, and once ``max_stuck`` calls are still running past their
deadline it refuses new ones at once instead of starting more threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Deadline", "DeadlineExceeded"]

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """The call did not return in time, or too many earlier calls are still stuck."""


class _Call(Generic[T]):
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None


class Deadline:
    """Call functions with a timeout, in daemon threads.

    Parameters
    ----------
    seconds : float
        Longest wait for one call.
    max_stuck : int
        Calls allowed to run on past their deadline before new calls are refused
        without being started.
    """

    def __init__(self, seconds: float, max_stuck: int = 4) -> None:
        self.seconds = float(seconds)
        self.max_stuck = int(max_stuck)
        self._lock = threading.Lock()
        self._stuck = 0

    @property
    def stuck(self) -> int:
        """Calls that timed out and have not returned yet."""
        with self._lock:
            return self._stuck

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, or :class:`DeadlineExceeded` after ``seconds``.

        Exceptions raised by ``fn`` are re-raised in the caller.
        """
        with self._lock:
            if self._stuck >= self.max_stuck:
                raise DeadlineExceeded(
                    f"{self._stuck} earlier calls are still running past their "
                    f"{self.seconds:g} s deadline; not starting another"
                )
        call: _Call[T] = _Call()
        timed_out = threading.Event()

        def run() -> None:
            try:
                call.value = fn()
            except BaseException as exc:  # handed to the caller, who decides
                call.error = exc
            finally:
                with self._lock:
                    call.done.set()
                    if timed_out.is_set():
                        self._stuck -= 1

        threading.Thread(target=run, name="semcache-deadline", daemon=True).start()
        if not call.done.wait(self.seconds):
            with self._lock:
                # Checked under the lock run() takes to finish, so a call that ends just
                # now is either seen done here or counted stuck and uncounted by run().
                if not call.done.is_set():
                    timed_out.set()
                    self._stuck += 1
                    raise DeadlineExceeded(f"no answer within {self.seconds:g} s")
        if call.error is not None:
            raise call.error
        return call.value  # type: ignore[return-value]
