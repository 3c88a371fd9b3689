"""Operations side of the bridge: Prometheus metrics, the /metrics /healthz /readyz listener,
JSON logging and progress lines.

Nothing is re-exported here on purpose: ``bridge.cli`` imports ``bridge.ops.logs`` before
anything else runs, and that must not pull in prometheus_client or pynetdicom.
"""
