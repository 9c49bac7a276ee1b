"""The tutorials' signal patterns, reworked as examples: each runs and shows its metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def _metrics(client: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from flask.testing import FlaskClient

    assert isinstance(client, FlaskClient)
    samples = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_model_saved() -> None:
    from examples.model_saved import app

    client = app.test_client()
    before = _metrics(client).get(("flask_signal_model_saved_total", (("model", "Order"),)), 0)
    assert client.post("/orders/teapot").status_code == 201
    assert client.post("/orders/kettle").status_code == 201
    after = _metrics(client)[("flask_signal_model_saved_total", (("model", "Order"),))]
    assert after == before + 2


def test_registration_and_activity() -> None:
    from examples.registration import app

    client = app.test_client()
    before = _metrics(client)
    client.post("/register", data={"user": "ann", "plan": "free"})
    client.post("/register", data={"user": "bob", "plan": "gold-lifetime"})
    client.post("/act/checkout", data={"user": "ann"})
    client.post("/act/<script>", data={"user": "eve"})
    after = _metrics(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("flask_signal_user_registered_total", plan="free") == 1
    assert delta("flask_signal_user_registered_total", plan="_OTHER") == 1
    assert delta("flask_signal_user_action_total", action="register") == 2
    assert delta("flask_signal_user_action_total", action="checkout") == 1
    assert delta("flask_signal_user_action_total", action="_OTHER") == 1


def test_audit_log_and_timed_export() -> None:
    from examples.audit import app
    from examples.audit import audit_log

    client = app.test_client()
    before = len(audit_log)
    client.get("/dashboard")
    assert client.post("/reports/export.csv").status_code == 200
    assert len(audit_log) == before + 2
    samples = _metrics(client)
    assert samples[("flask_signal_access_event_total", (("module", "dashboard_module"),))] >= 1
    assert samples[("flask_signal_access_event_total", (("module", "reports_module"),))] >= 1
    name = "flask_signal_export_started_to_export_finished_duration_seconds"
    assert samples[(f"{name}_count", (("format", "csv"),))] >= 1
    assert samples[(f"{name}_sum", (("format", "csv"),))] >= 0.01


def test_exception_monitoring() -> None:
    from examples.exceptions import app
    from examples.exceptions import reported

    client = app.test_client()
    assert client.get("/compute/4").text == "25"
    assert client.get("/compute/0").status_code == 500
    assert reported[-1] == "ZeroDivisionError"
    samples = _metrics(client)
    key = (
        "flask_request_exceptions_total",
        (
            ("error_type", "ZeroDivisionError"),
            ("http_request_method", "GET"),
            ("http_route", "/compute/<int:n>"),
        ),
    )
    assert samples[key] >= 1
