#!/usr/bin/env bash
# The demo, set-up included: the instrumented shop under gunicorn on
# 127.0.0.1, a round of traffic, and where to look. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup >/dev/null
exec .venv/bin/python -m examples.demo "$@"
