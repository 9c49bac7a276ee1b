"""The metrics in prometheus_client's multiprocess mode: this process's files and the directory."""
