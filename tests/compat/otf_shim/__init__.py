"""Test-only stand-in for opentelemetry-instrumentation-flask (``tests/compat/test_otf_suite.py``).

This directory goes first on the ``PYTHONPATH`` of the subprocess that runs
that distribution's own tests, so that ``opentelemetry.instrumentation.flask``
is :mod:`.opentelemetry.instrumentation.flask` here. Each directory down to it
has an ``__init__.py`` (mypy names the files ``tests.compat.otf_shim.*``, not
``opentelemetry.*``); the two namespace levels extend their ``__path__``
with :func:`pkgutil.extend_path`, so every other installed
``opentelemetry.*`` module (``instrumentation.wsgi``, ``.instrumentor``,
``.propagators``, ``._semconv``, ``sdk``, ``test`` ...) stays importable.
"""
