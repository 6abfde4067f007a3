"""Inductor's code generation in a forked child process, so its garbage never fragments ours.

Generating and building a graph's kernels churns through hundreds of MiB of short-lived Python
objects; the few that outlive the compile pin Python's 1 MiB object arenas half empty, and those
pages never return to the OS (SmolLM2 w4/8a8 + release: ~150 MiB more resident after a first
compile than after the same graphs came from Inductor's FX graph cache; README, "Freeing the
float weights"). With ``isolate_codegen`` the backend forks just before handing the rewritten
graph to Inductor: the child (a copy of this process, graph and fake tensors included, so
nothing is pickled) compiles it, which writes the result to Inductor's FX graph cache, sends
back what only a code-generating compile can measure (Inductor's kernel bytes, the post-grad
pass counts) and exits; this process then compiles the same graph and is served from the cache,
as after a restart.

Costs and limits: the compile takes the child's time plus a cache load (the report gives the
child's seconds). Linux only (fork), target "cpu" only (a forked child cannot use CUDA), only
with Inductor's FX graph cache on, and not under a max-autotune mode (which times kernels while
compiling). The child runs one torch thread and Inductor's in-process compile
(``compile_threads=1``): a fork copies no threads, so it must not wait on the parent's OpenMP
pool (libgomp would hang) or compile workers; Inductor still generates code for this process's
thread count, which is part of its cache key. A child that fails, or runs past
``CHILD_TIMEOUT_S`` (killed), changes nothing: the graph compiles here as without the option,
and the report says why. A graph the cache does not serve is compiled here anyway; the report
says so too.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

import torch

#: A child still compiling after this many seconds is killed and the graph compiled here.
CHILD_TIMEOUT_S = 1800.0


def why_not(config, target: str, inductor_options: dict | None = None) -> str | None:
    """None if this compile should run Inductor's code generation in a child, else why not
    (``inductor_options``: what the torch.compile mode sets)."""
    setting = config.isolate_codegen
    if setting is False:
        return "isolate_codegen=False"
    if setting == "auto" and not config.release_float_weights:
        return "isolate_codegen='auto' isolates only with release_float_weights=True"
    if target != "cpu":
        return f"target {target!r}: only target 'cpu' forks (a forked child cannot use CUDA)"
    if not sys.platform.startswith("linux"):
        return f"needs fork(), used here on Linux only (this is {sys.platform})"
    if any(k.startswith("max_autotune") and v for k, v in (inductor_options or {}).items()):
        # its timings would be taken on the child's one thread and baked into the cached graph
        return "a max-autotune mode times kernels while compiling, which a one-thread child cannot do for us"
    from torch._inductor import config as inductor_config

    if not inductor_config.fx_graph_cache:
        return "Inductor's FX graph cache is off (TORCHINDUCTOR_FX_GRAPH_CACHE=0): the child's result cannot reach us"
    return None


def _cache_hits() -> int:
    from torch._dynamo.utils import counters

    return counters["inductor"]["fxgraph_cache_hit"]


def _child(compile_once, write_fd: int) -> None:
    """In the child: compile, send back the stats or the error, and leave without cleanup
    (the parent's atexit handlers, buffers and threads are not ours to run)."""
    status = 1
    try:
        # A forked child has none of the OpenMP pool's threads: its first parallel region would
        # wait for them forever (libgomp; seen in a probe). One thread runs every ATen op
        # inline, while Inductor, which asks torch.get_num_threads() for the thread count it
        # generates code and its cache key for, is told this process's count.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        torch.get_num_threads = lambda: threads
        message = {"stats": compile_once()}
        status = 0
    except BaseException as e:  # everything goes back to the parent as text
        message = {"error": f"{type(e).__name__}: {e}"}
    try:
        data = json.dumps(message).encode()
        while data:
            data = data[os.write(write_fd, data):]
    finally:
        os._exit(status)


def _wait(pid: int, read_fd: int, timeout_s: float) -> tuple[dict | None, str | None]:
    """(message, None) from the child, or (None, why there is none); the child is reaped."""
    chunks, deadline, done = [], time.monotonic() + timeout_s, False
    try:
        while not done:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, f"the child ran past {timeout_s:.0f} s and was killed"
            ready, _, _ = select.select([read_fd], [], [], min(left, 5.0))
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                chunks.append(chunk)
                done = not chunk
    finally:
        os.close(read_fd)
        if not done:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    text = b"".join(chunks)
    if not text:
        return None, f"the child died without a word (wait status {status})"
    message = json.loads(text)
    if "error" in message:
        return None, f"the child's compile raised {message['error']}"
    return message, None


def compile_isolated(compile_once, compile_here, report, timeout_s: float | None = None):
    """``compile_once()`` (Inductor's compile, returning {"inductor_bytes", "inductor_kernels",
    "pass_counts"}) in a forked child, then ``compile_here()`` in this process, which the cache
    should serve; fills ``report.codegen`` and, where this process generated nothing, the
    child's stats."""
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(compile_once, write_fd)
    os.close(write_fd)
    message, why = _wait(pid, read_fd, CHILD_TIMEOUT_S if timeout_s is None else timeout_s)
    child_s = time.perf_counter() - start
    hits = _cache_hits()
    compiled = compile_here()
    served = _cache_hits() > hits
    if message is None:
        report.codegen = f"in this process: code generation in a forked child failed ({why})"
        report.note(f"isolate_codegen: {why}; the graph was compiled in this process instead")
        return compiled
    stats = message["stats"]
    if report.inductor_bytes is None and stats.get("inductor_bytes") is not None:
        report.inductor_bytes, report.inductor_kernels = stats["inductor_bytes"], stats["inductor_kernels"]
    for name, count in stats.get("pass_counts", {}).items():
        report.pass_counts.setdefault(name, count)
    if served:
        report.codegen = f"in a forked child ({child_s:.1f} s); this process loaded it from Inductor's FX graph cache"
    else:
        report.codegen = (f"in a forked child ({child_s:.1f} s) and again in this process: Inductor's cache "
                          "did not serve the graph here (nothing saved)")
        report.note("isolate_codegen: Inductor's FX graph cache did not serve the child's result, so the "
                    "graph was code-generated in this process as well")
    return compiled
