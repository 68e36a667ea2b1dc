"""vaebook.tooling.nbexec: waiting for kernel messages in slices, so that a lost wake-up costs half a second, not a timeout.

The lost wake-up itself is rare and timing-dependent (one widget cell in a few hundred), so the unit tests simulate
it with a channel whose long waits never see the message (exactly what was observed: the message is only found by
the final check when a wait times out); the integration tests run real kernels through the hardened client, on both
of nbclient's code paths (``execute()`` and ``setup_kernel()`` + ``execute_cell``), and the Sphinx patch.
"""
from __future__ import annotations

import asyncio
import time
from queue import Empty

import nbformat
import pytest

from vaebook.tooling import nbexec


class LostWakeupChannel:
    """A message arrives after ``arrival`` s, but a waiting poll is never woken: it is found only when the wait ends."""

    def __init__(self, arrival: float | None):
        self.t0 = time.monotonic()
        self.arrival = arrival
        self.calls = []

    async def get_msg(self, timeout=None):
        self.calls.append(timeout)
        available = self.arrival is not None and time.monotonic() - self.t0 >= self.arrival
        if available:  # already there when the wait starts: returned at once, as a real poll does
            return {"msg": "reply"}
        if timeout is None:
            await asyncio.sleep(3600)  # never woken
        await asyncio.sleep(timeout)
        if self.arrival is not None and time.monotonic() - self.t0 >= self.arrival:
            return {"msg": "reply"}  # pyzmq's final check at the end of the wait
        raise Empty


def _timed(coro):
    start = time.monotonic()
    try:
        result = asyncio.run(coro)
    except Empty:
        result = Empty
    return result, time.monotonic() - start


def test_the_simulated_channel_reproduces_the_stall():
    """The unwrapped wait lasts the whole timeout although the reply came after 0.1 s (the bug, simulated)."""
    result, took = _timed(LostWakeupChannel(arrival=0.1).get_msg(timeout=2.0))
    assert result == {"msg": "reply"} and took >= 1.9


def test_sliced_wait_recovers_a_lost_wakeup_within_one_interval():
    chan = LostWakeupChannel(arrival=0.1)
    result, took = _timed(nbexec.sliced_get_msg(chan.get_msg, interval=0.2)(timeout=30.0))
    assert result == {"msg": "reply"}
    assert took < 1.0, f"took {took:.2f} s for a reply that arrived after 0.1 s"
    assert all(t is not None and t <= 0.2 + 1e-9 for t in chan.calls), chan.calls


def test_sliced_wait_without_timeout_also_recovers():
    chan = LostWakeupChannel(arrival=0.3)
    result, took = _timed(nbexec.sliced_get_msg(chan.get_msg, interval=0.2)(timeout=None))
    assert result == {"msg": "reply"} and took < 1.0


def test_sliced_wait_keeps_the_deadline_of_a_real_timeout():
    chan = LostWakeupChannel(arrival=None)  # no reply ever
    result, took = _timed(nbexec.sliced_get_msg(chan.get_msg, interval=0.2)(timeout=0.7))
    assert result is Empty
    assert 0.65 <= took < 1.2, took
    assert len(chan.calls) >= 3  # 0.2 + 0.2 + 0.2 + 0.1


def test_a_message_already_there_is_returned_at_once():
    chan = LostWakeupChannel(arrival=0.0)
    result, took = _timed(nbexec.sliced_get_msg(chan.get_msg, interval=0.2)(timeout=5.0))
    assert result == {"msg": "reply"} and took < 0.1 and chan.calls == [0.2]


@pytest.mark.parametrize("interval", [0, -1, float("nan")])
def test_bad_interval_is_refused(interval):
    with pytest.raises(ValueError, match="interval must be > 0"):
        nbexec.sliced_get_msg(LostWakeupChannel(None).get_msg, interval=interval)
    with pytest.raises(ValueError, match="interval must be > 0"):
        nbexec.patch_nbclient(interval=interval)


def test_harden_wraps_async_channels_once_and_leaves_blocking_ones_alone():
    class Sync:
        def get_msg(self, timeout=None):
            return {}

    class KC:
        shell_channel = LostWakeupChannel(None)
        iopub_channel = Sync()

    kc = KC()
    nbexec.harden(kc)
    wrapped = kc.shell_channel.get_msg
    assert getattr(wrapped, "__vaebook_sliced__", False)
    assert not getattr(kc.iopub_channel.get_msg, "__vaebook_sliced__", False)  # blocking: zmq_poll is level-triggered
    nbexec.harden(kc)
    assert kc.shell_channel.get_msg is wrapped  # not wrapped twice


# ---------------------------------------------------------------------------------------------------------------
# Real kernels

def _widget_notebook(n: int = 3):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    cell = ("import ipywidgets as widgets\n"
            "def f(lam=1.0):\n    print(f'lambda = {lam:.2f}')\n"
            "widgets.interact(f, lam=widgets.FloatSlider(value=1.0, min=0, max=2));")
    nb.cells = [nbformat.v4.new_code_cell(cell) for _ in range(n)] + [nbformat.v4.new_code_cell("print(6 * 7)")]
    return nb


def _assert_hardened(client):
    for name in ("shell_channel", "iopub_channel"):
        assert getattr(getattr(client.kc, name).get_msg, "__vaebook_sliced__", False), name


def test_hardened_client_executes_widget_cells_through_execute():
    nb = _widget_notebook()
    seen = {}
    client = nbexec.HardenedNotebookClient(nb, timeout=60, kernel_name="python3",
                                           on_notebook_complete=lambda notebook: seen.update(done=True))
    client.on_cell_executed = lambda cell, cell_index, execute_reply: (
        seen.setdefault("hardened", _assert_hardened(client) or True))
    client.execute()
    assert seen == {"hardened": True, "done": True}
    assert nb.cells[-1].outputs[0].text == "42\n"
    assert any(o.get("output_type") == "display_data" for o in nb.cells[0].outputs)  # the widget view


def test_hardened_client_through_setup_kernel_and_execute_cell():
    """The grader's path: nbclient binds the synchronous start to the base class; the subclass rebinds it."""
    nb = _widget_notebook(1)
    client = nbexec.HardenedNotebookClient(nb, timeout=60, kernel_name="python3")
    with client.setup_kernel():
        _assert_hardened(client)
        for i, cell in enumerate(nb.cells):
            client.execute_cell(cell, i)
    assert nb.cells[-1].outputs[0].text == "42\n"


def test_patch_nbclient_hardens_every_client_and_is_idempotent():
    from nbclient import NotebookClient

    saved = (NotebookClient.async_start_new_kernel_client, NotebookClient.start_new_kernel_client)
    try:
        nbexec.patch_nbclient()
        assert getattr(NotebookClient.async_start_new_kernel_client, "__vaebook_sliced__", False)
        assert nbexec.patch_nbclient() is False  # already applied: not wrapped twice
        nb = _widget_notebook(1)
        client = NotebookClient(nb, timeout=60, kernel_name="python3")
        with client.setup_kernel():
            _assert_hardened(client)
            client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
        assert nb.cells[-1].outputs[0].text == "42\n"
    finally:
        NotebookClient.async_start_new_kernel_client, NotebookClient.start_new_kernel_client = saved
