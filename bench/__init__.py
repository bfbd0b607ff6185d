"""The Team Dashboard benchmark suite (GitHub issue 7): ``python -m bench [--quick]``.

It starts its own stack (embedded Redis, ``teamdash gateway`` processes, a runner with
bench agents), drives it with load-generator processes speaking the real protocol, and
writes ``bench/results/<id>.json`` and ``.md``. Start with :mod:`bench.run`; what each
scenario measures and how is in :mod:`bench.scenarios` and ``docs/benchmarks.md``.
"""
