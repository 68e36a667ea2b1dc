"""reliable_execution: MyST-NB executes the chapters without nbclient's lost-wake-up stalls.

Loaded from ``_config.yml`` (``sphinx: local_extensions``). MyST-NB creates its own ``nbclient.NotebookClient``s
(through jupyter-cache), so the remedy of :mod:`vaebook.tooling.nbexec` is applied to the class itself: every kernel client
created during the build waits for messages in half-second slices. Without it, a chapter with a widget cell now and
then waited a whole cell timeout (300 s) for a reply that had already arrived -- a build measured ch07 at 330 s
instead of 30 s -- and the status page showed that stall as the chapter's run time.
"""

from __future__ import annotations

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)


def setup(app: Sphinx) -> dict:
    from vaebook.tooling.nbexec import DEFAULT_INTERVAL, patch_nbclient

    if patch_nbclient():
        logger.info(
            "[reliable_execution] nbclient kernel clients poll in "
            f"{DEFAULT_INTERVAL} s slices"
        )
    return {
        "version": "1.0",
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
