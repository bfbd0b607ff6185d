"""The metrics collector: system metrics with psutil, per-agent stats from the runners,
``metrics:update`` and ``system:alert`` events (see ``service.py``)."""
