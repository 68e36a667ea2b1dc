"""Executing notebooks without the lost-wakeup stall of nbclient's asyncio message channels.

The problem (found while grading and building the book, reproduced here): nbclient waits for a cell's
``execute_reply`` with ``await kc.shell_channel.get_msg(timeout=cell_timeout)``, an asyncio poll of a ZeroMQ socket.
ZeroMQ signals a socket's readiness through an *edge-triggered* file descriptor, and now and then the wake-up for a
reply that has already arrived is lost: the reply sits in the socket, the kernel is idle, the client sleeps. When
the poll's timeout finally fires, pyzmq polls the socket once more, finds the reply, and execution goes on as if
nothing had happened -- no error, just ``cell_timeout`` seconds lost. It happens mostly on cells that display
widgets (``ipywidgets.interact``), which send bursts of comm messages; in 300 consecutive ``interact`` cells run by a
plain ``NotebookClient`` with a 5 s timeout, one cell took exactly 5.0 s (the others 0.1 s), and a chapter of the book
built by MyST-NB took 330 s instead of 30 s (a 300 s cell timeout). It is nbclient issue #312 (open; a widget cell
"sometimes blocks" until the timeout).

The remedy here does not touch nbclient's logic: :func:`harden` wraps the ``get_msg`` of a kernel client's shell and
IOPub channels so that one long wait becomes a series of short ones (``interval`` seconds each, 0.5 by default), each
ending with pyzmq's final check of the socket. A lost wake-up then costs at most ``interval`` seconds; a message that
arrives normally is returned at once, as before; a real timeout is still a timeout, at the same deadline.

* :class:`HardenedNotebookClient` is ``nbclient.NotebookClient`` with hardened channels (the grader and the tests use it);
* :func:`patch_nbclient` makes every ``NotebookClient`` created afterwards harden its channels (the book build calls
  it from ``book/_ext/reliable_execution.py``, since MyST-NB creates its own clients).
"""

from __future__ import annotations

import functools
import time
from queue import Empty

DEFAULT_INTERVAL = (
    0.5  # seconds: the longest a lost wake-up can delay a message
)

# Messages that were returned only when a slice ended: (almost always) lost
# wake-ups that a long wait would have missed.
stats = {"found_at_slice_end": 0}

__all__ = [
    "DEFAULT_INTERVAL",
    "HardenedNotebookClient",
    "harden",
    "patch_nbclient",
    "sliced_get_msg",
    "stats",
]


def sliced_get_msg(get_msg, interval: float = DEFAULT_INTERVAL):
    """``get_msg`` (an async ``channel.get_msg(timeout=None)``) as a series of waits of at most ``interval`` seconds.

    Same contract as the original: returns the next message, or raises ``queue.Empty`` once ``timeout`` seconds
    (``None``: never) have passed without one.
    """
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval!r}")

    @functools.wraps(get_msg)
    async def wrapper(timeout: float | None = None):
        deadline = (
            None
            if timeout is None
            else time.monotonic() + max(0.0, float(timeout))
        )
        while True:
            remaining = (
                None if deadline is None else deadline - time.monotonic()
            )
            step = (
                interval
                if remaining is None
                else max(0.0, min(interval, remaining))
            )
            started = time.monotonic()
            try:
                msg = await get_msg(timeout=step)
                if step > 0 and time.monotonic() - started >= step:
                    stats["found_at_slice_end"] += (
                        # most likely a lost wake-up,
                        # recovered after <= step s
                        1
                    )
                return msg
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    wrapper.__vaebook_sliced__ = True
    return wrapper


def harden(kc, interval: float = DEFAULT_INTERVAL):
    """Wrap the shell and IOPub ``get_msg`` of an *asynchronous* kernel client ``kc`` (in place); returns ``kc``.

    Blocking clients (``BlockingKernelClient``, used by nbval) poll with a plain ``zmq_poll`` and are left alone, as
    are channels already wrapped.
    """
    import inspect

    for name in ("shell_channel", "iopub_channel"):
        channel = getattr(kc, name, None)
        get_msg = getattr(channel, "get_msg", None)
        if get_msg is None or getattr(get_msg, "__vaebook_sliced__", False):
            continue
        if not inspect.iscoroutinefunction(get_msg):
            continue
        channel.get_msg = sliced_get_msg(get_msg, interval)
    return kc


def _hardened_start(original, interval):
    @functools.wraps(original)
    async def async_start_new_kernel_client(self, *args, **kwargs):
        kc = await original(self, *args, **kwargs)
        return harden(kc, interval)

    async_start_new_kernel_client.__vaebook_sliced__ = True
    return async_start_new_kernel_client


def _client_class():
    from nbclient import NotebookClient
    from nbclient.util import run_sync

    class HardenedNotebookClient(NotebookClient):
        """``nbclient.NotebookClient`` whose kernel client waits for messages in slices (see the module docstring)."""

        reply_poll_interval = DEFAULT_INTERVAL

        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            return harden(kc, self.reply_poll_interval)

        # nbclient binds the synchronous twin (used by
        # ``setup_kernel``) to the base class's coroutine: rebind it.
        start_new_kernel_client = run_sync(async_start_new_kernel_client)

    return HardenedNotebookClient


def __getattr__(
    name,
    # HardenedNotebookClient is built on first use: importing vaebook does not
    # import nbclient
):
    if name == "HardenedNotebookClient":
        cls = _client_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def patch_nbclient(interval: float = DEFAULT_INTERVAL) -> bool:
    """Make every ``nbclient.NotebookClient`` harden its kernel client; returns False if it already did."""
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
    from nbclient.client import NotebookClient

    from nbclient.util import run_sync

    original = NotebookClient.async_start_new_kernel_client
    if getattr(original, "__vaebook_sliced__", False):
        return False
    NotebookClient.async_start_new_kernel_client = _hardened_start(
        original, interval
    )
    NotebookClient.start_new_kernel_client = run_sync(
        NotebookClient.async_start_new_kernel_client
    )
    return True
