"""``python -m bench``: run the benchmark (see docs/benchmarks.md)."""

import sys

from bench.run import main

sys.exit(main())
