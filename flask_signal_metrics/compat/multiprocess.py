"""prometheus-flask-exporter's multiprocess classes, on the extension's multiprocess mode.

With ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported,
every worker writes its own files and a scrape sums them; the server
started here is :func:`~flask_signal_metrics.start_metrics_server`, and a
worker's exit is :func:`~flask_signal_metrics.worker_exited`.
"""

from __future__ import annotations

import os
import typing as t
import warnings

from ..extension import start_metrics_server
from ..extension import worker_exited
from . import PrometheusMetrics

if t.TYPE_CHECKING:
    from flask import Flask

_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


def _check_multiproc_env_var() -> None:
    """The directory must be named, and be one, before anything else."""
    for variable in _VARIABLES:
        if variable in os.environ:
            if os.path.isdir(os.environ[variable]):
                return
            break
    raise ValueError(
        "one of env PROMETHEUS_MULTIPROC_DIR or env prometheus_multiproc_dir must be set"
        " and be a directory"
    )


class MultiprocessPrometheusMetrics(PrometheusMetrics):
    """For several worker processes; the metrics are served by :meth:`start_http_server`.

    Subclasses say in which process the server starts (:meth:`should_start_http_server`).
    """

    def __init__(self, app: Flask | None = None, **kwargs: t.Any) -> None:
        _check_multiproc_env_var()
        kwargs.pop("path", None)
        super().__init__(app=app, path=None, **kwargs)

    def start_http_server(
        self,
        port: int,
        host: str = "0.0.0.0",
        endpoint: str | None = None,
        ssl: dict[str, str] | None = None,
    ) -> None:
        """Serve every worker's metrics on ``host:port`` if this is the process to."""
        if self.should_start_http_server():
            start_metrics_server(port, host)

    def should_start_http_server(self) -> bool:
        """Whether this process serves the metrics: only one of the group may."""
        raise NotImplementedError


class _ServedByTheApp(MultiprocessPrometheusMetrics):
    """The metrics of every worker served on the app's own ``path``: no separate server."""

    def __init__(self, app: Flask | None = None, path: str = "/metrics", **kwargs: t.Any) -> None:
        super().__init__(app=app, **kwargs)
        self.path = path
        if app is not None:
            self.register_endpoint(path, app)

    def init_app(self, app: Flask) -> None:
        super().init_app(app)
        if self.path:
            self.register_endpoint(self.path, app)

    def should_start_http_server(self) -> bool:
        return False

    @classmethod
    def start_http_server_when_ready(cls, port: int, host: str = "0.0.0.0") -> None:
        warnings.warn(
            f"{cls.__name__} serves the metrics on the app: start_http_server_when_ready"
            " starts nothing (GunicornPrometheusMetrics starts a server).",
            UserWarning,
            stacklevel=2,
        )


class MultiprocessInternalPrometheusMetrics(_ServedByTheApp):
    """Several worker processes, the metrics served on the app's own ``path``."""


class UWsgiPrometheusMetrics(MultiprocessPrometheusMetrics):
    """uWSGI: the server starts in the master process."""

    def should_start_http_server(self) -> bool:
        import uwsgi  # type: ignore[import-untyped]  # only inside uWSGI

        return os.getpid() == uwsgi.masterpid()  # type: ignore[no-any-return]


class GunicornPrometheusMetrics(MultiprocessPrometheusMetrics):
    """gunicorn: a server for the process group, started in ``when_ready``.

    .. code-block:: python

        def when_ready(server):
            GunicornPrometheusMetrics.start_http_server_when_ready(9100)

        def child_exit(server, worker):
            GunicornPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
    """

    def should_start_http_server(self) -> bool:
        return True

    @classmethod
    def start_http_server_when_ready(cls, port: int, host: str = "0.0.0.0") -> None:
        """From the gunicorn config's ``when_ready``: serve every worker's metrics."""
        _check_multiproc_env_var()
        start_metrics_server(port, host)

    @classmethod
    def mark_process_dead_on_child_exit(cls, pid: int) -> None:
        """From the gunicorn config's ``child_exit``: the worker's series are folded."""
        worker_exited(pid)


class GunicornInternalPrometheusMetrics(_ServedByTheApp, GunicornPrometheusMetrics):
    """gunicorn, the metrics served on the app's own ``path`` (every worker's)."""
