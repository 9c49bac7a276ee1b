"""User registration and activity logging, from the tutorials, with metrics.

``user-registered`` is sent with the new user; a receiver sends the welcome
email (logged here). ``user-action`` is the activity log: every action a user
takes, with its kind. Both become counters, their labels bounded::

    flask_signal_user_registered_total{plan="free"} 2.0
    flask_signal_user_action_total{action="register"} 2.0
    flask_signal_user_action_total{action="_OTHER"} 1.0

    flask --app examples.registration run
"""

from __future__ import annotations

import logging

from blinker import Namespace
from flask import Flask
from flask import request

from flask_signal_metrics import SignalMetrics

signals = Namespace()
user_registered = signals.signal("user-registered")
user_action = signals.signal("user-action")

app = Flask(__name__)
signal_metrics = SignalMetrics(app)
log = logging.getLogger(__name__)

#: The actions the activity log knows; anything else is counted as _OTHER.
ACTIONS = {"register", "login", "logout", "checkout"}


@signal_metrics.count(
    user_registered,
    labels={"plan": lambda sender, **kw: kw["plan"]},
    allowed={"plan": {"free", "pro"}},
)
def send_welcome_email(sender: object, user: str, **extra: object) -> None:
    log.info("Welcome email sent to %s", user)


signal_metrics.count(
    user_action,
    labels={"action": lambda sender, **kw: kw["action"]},
    allowed={"action": ACTIONS},
)


@user_action.connect_via(app)
def log_activity(sender: Flask, user: str, action: str, **extra: object) -> None:
    log.info("user %s did %s", user, action)


@app.post("/register")
def register() -> tuple[str, int]:
    user = request.form.get("user", "anonymous")
    plan = request.form.get("plan", "free")
    user_registered.send(app, user=user, plan=plan)
    user_action.send(app, user=user, action="register")
    return f"welcome {user}", 201


@app.post("/act/<action>")
def act(action: str) -> str:
    # A user-supplied action: the allow-list keeps it from becoming a label value.
    user_action.send(app, user=request.form.get("user", "anonymous"), action=action)
    return "ok"
