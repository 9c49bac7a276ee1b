"""The ``opentelemetry.instrumentation`` namespace, extended over every installed portion of it."""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
