"""What the gateway tells operators: request traces, JSON logs, Prometheus metrics."""
