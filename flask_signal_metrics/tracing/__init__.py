"""OpenTelemetry for the app's requests: the only package using the OTel API (with :mod:`.otlp`).

:mod:`.spans` makes the spans the receivers ask for, :mod:`.propagation` reads
a request's parent, :mod:`.attributes` builds (and redacts) span attributes,
:mod:`.logging` joins log records to traces; :mod:`._compat` holds every
private name of OpenTelemetry used.
"""
