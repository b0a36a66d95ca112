"""Fake of modules/fifo_lock.py: a lock that serves waiters first come, first served.

Not re-entrant, and (like the real one) it has no ``locked()``: probe with ``acquire(False)``.
"""

import collections
import threading


class FIFOLock:
    def __init__(self):
        self._lock = threading.Lock()
        self._inner_lock = threading.Lock()
        self._pending_threads = collections.deque()

    def acquire(self, blocking=True):
        with self._inner_lock:
            if self._lock.acquire(False):
                return True
            if not blocking:
                return False
            turn = threading.Event()
            self._pending_threads.append(turn)
        turn.wait()
        return self._lock.acquire()

    def release(self):
        with self._inner_lock:
            if self._pending_threads:
                self._pending_threads.popleft().set()
            self._lock.release()

    __enter__ = acquire

    def __exit__(self, exc_type, exc, tb):
        self.release()
