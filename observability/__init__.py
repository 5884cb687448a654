"""Observability as code: metric names (one source of truth), Grafana dashboards, alert rules.

``names`` is dependency-free and imported by the trainer and the operator; ``dashboards`` and
``rules`` are generators run by ``hack/generate.sh`` (``python -m tac2sol.observability.generate``).
"""
