"""Events out (JSON lines, syslog RFC 5424 / CEF) and Prometheus metrics."""
