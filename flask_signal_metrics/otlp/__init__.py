"""OTLP export of spans and metrics: the only package importing the OpenTelemetry SDK.

Opt-in, through :func:`.setup.configure_otlp` (the ``[otlp]`` extra).
:mod:`.environment` reads and checks the ``OTEL_*`` variables,
:mod:`.exporters` builds the exporters and counts what they lose,
:mod:`.bridge` sends what the receivers recorded as OTLP metrics, and
:mod:`.setup` puts them together.

Why a bridge rather than recording every request a second time through an OTel
meter: recording into SDK instruments would cost each request several times the
whole metrics path; the bridge costs the request nothing, and OTLP and
``/metrics`` then agree by construction.
"""
