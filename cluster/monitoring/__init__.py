"""Monitoring a fleet: Prometheus alert rules, a Prometheus scrape configuration and a Grafana dashboard.

The files beside this package's modules (``alerts.yml``, ``prometheus.yml``, ``grafana/fleetwm.json``) are
rendered from ``rules.Thresholds``; ``python -m cluster.monitoring`` writes them again (docs/monitoring.md).
"""
