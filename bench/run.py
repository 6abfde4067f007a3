"""Entry script of the bench: `python bench/run.py [--quick]` (what `make bench` runs).

The harness lives in the package (zq_compile/benchmarks/) so that `zeroquant bench` works after a
plain `pip install`; this file only forwards to it. See bench/README.md.
"""

import sys

from zq_compile.benchmarks.run import main

if __name__ == "__main__":
    sys.exit(main())
