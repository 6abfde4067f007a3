"""Tests that run the Triton kernels under the Triton interpreter, on CPU tensors.

Triton decides between compiling and interpreting when a ``@triton.jit`` kernel is defined, from
``TRITON_INTERPRET`` in the environment, and never again. Setting the variable from inside a
pytest run that other tests share would either come too late (the kernels already imported) or
leak into every test after it. So these files are collected only in a process started with
``TRITON_INTERPRET=1``: ``tests/triton/test_interpreted_suites.py`` starts one per file, and a
developer can run ``TRITON_INTERPRET=1 pytest tests/triton_interp`` directly.
"""

import os

if os.environ.get("TRITON_INTERPRET") != "1":
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config):
    # numpy warns on the NaN / Inf arithmetic the special-row tests perform on purpose.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")
