"""``ZQ_DEBUG``: what the backend tells a user who is debugging it, without any code change.

    ZQ_DEBUG=1   print each graph's CompileReport to stderr when it has compiled
    ZQ_DEBUG=2   also write the graph before and after every pass (as ``dump_graphs`` does) to
                 ``$ZQ_DEBUG_DIR`` (default: <tempdir>/zeroquant_debug), one file per pass
    any value    the ``zeroquant`` CLI shows tracebacks instead of one-line errors

Read at the moment it is needed (never at import), so it can be set per process or per test.
Everything here also goes to the ``zeroquant`` logger.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

log = logging.getLogger("zeroquant")


def level() -> int:
    raw = os.environ.get("ZQ_DEBUG", "").strip()
    if not raw:
        return 0
    try:
        return max(int(raw), 0)
    except ValueError:
        return 1  # ZQ_DEBUG=yes / true: the basic level


def dump_folder(configured: str | None) -> str | None:
    """Where the passes write their graphs: the config's ``dump_graphs``, else ZQ_DEBUG=2's."""
    if configured:
        return configured
    if level() >= 2:
        return os.environ.get("ZQ_DEBUG_DIR") or os.path.join(tempfile.gettempdir(), "zeroquant_debug")
    return None


def on_compiled(report) -> None:
    if level() >= 1:
        print(f"[zeroquant] {report.summary()}", file=sys.stderr)
        folder = dump_folder(report.config.get("dump_graphs"))
        if folder:
            print(f"[zeroquant] graph {report.graph_id}: pass dumps in {folder}", file=sys.stderr)
    log.debug("zeroquant %s", report.summary())
