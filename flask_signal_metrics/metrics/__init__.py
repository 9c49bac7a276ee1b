"""The Prometheus metrics of the extension, in one process: names, families, rendering."""
