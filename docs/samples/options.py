"""Keyword options override config keys; ``registry=`` takes a registry of yours."""

from __future__ import annotations

from flask import Flask
from prometheus_client import CollectorRegistry

from flask_signal_metrics import SignalMetrics

my_registry = CollectorRegistry()
app = Flask(__name__)
SignalMetrics(app, naming="classic", buckets=[0.1, 0.5, 1], registry=my_registry)
