"""Run a probe in a fresh interpreter and read back the one JSON line it prints.

The memory probes and ``bench/kernel_profile.py`` measure one contender per process (so that no
other contender's compiled code, caches or freed heap is counted). Each prints its figures as
``<TAG> <json>`` on stdout; everything else it prints (warnings, progress) is ignored.
"""

from __future__ import annotations

import json
import os
import subprocess


def json_line(cmd: list[str], tag: str, timeout: float, env: dict[str, str] | None = None,
              what: str = "") -> dict:
    """The JSON after the last stdout line starting with ``tag + " "`` of ``cmd`` (run offline,
    without progress bars, with ``env`` added), or ``{"error": "[what ]exited N: <stderr's last
    line>"}``. A run past ``timeout`` raises ``subprocess.TimeoutExpired``."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    prefix = tag + " "
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(prefix):
            return json.loads(line[len(prefix):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"{what + ' ' if what else ''}exited {proc.returncode}: {tail[:300]}"}
