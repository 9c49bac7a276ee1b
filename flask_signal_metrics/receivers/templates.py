"""Template renders and flashed messages: their durations, spans and counts."""

from __future__ import annotations

import contextvars
import typing as t

from flask import signals

from .. import labels
from ..state import EXTENSION_KEY
from ..state import START_KEY
from ..tracing.spans import Tracing
from .environ import current_context
from .environ import MISSING
from .environ import perf_counter
from .failures import failed

if t.TYPE_CHECKING:
    from flask import Flask
    from jinja2 import Template

    from ..state import State
    from ..tracing.spans import RenderSpan


class _Render(t.NamedTuple):
    """A render begun and not ended."""

    template: int  # the template's id
    began: float
    span: RenderSpan | None
    owner: int  # the id of the request context it began under, or 0


#: The renders of this context, innermost last.
_renders: contextvars.ContextVar[list[_Render]] = contextvars.ContextVar(
    "flask_signal_metrics_renders"
)
#: A render that raised never sends template_rendered; past this depth the
#: stack holds only such leftovers and is cleared.
_MAX_RENDER_DEPTH = 64


def end_renders(owner: int | None = None) -> None:
    """End the innermost renders (those begun under request context ``owner``) as failed."""
    stack = _renders.get(None)
    failure: Exception | None = None
    while stack and (owner is None or stack[-1].owner == owner):
        render = stack.pop().span
        if render is not None:
            try:
                Tracing.render_ended(render, failed=True)
            except Exception as e:  # a span processor's: end the others first
                failure = failure or e
    if failure is not None:
        raise failure


def release_renders() -> None:
    """Release the spans of this context's open renders (a stream's first teardown)."""
    stack = _renders.get(None)
    if stack:
        for index in range(len(stack) - 1, -1, -1):  # innermost first, as tokens nest
            render = stack[index]
            if render.span is not None:
                stack[index] = render._replace(span=Tracing.release(render.span))


def _in_excluded_request(found: t.Any = MISSING) -> bool:
    if found is MISSING:
        found = current_context(None)
    return found is not None and found.request.environ.get(START_KEY, MISSING) is None


def on_before_render_template(sender: Flask, template: Template, **extra: object) -> None:
    try:
        stack = _renders.get(None)
        if stack is None:
            stack = []
            _renders.set(stack)
        elif len(stack) >= _MAX_RENDER_DEPTH:
            end_renders()
        render = None
        ctx = current_context(None)
        began = perf_counter()
        tracing: Tracing | None = sender.extensions[EXTENSION_KEY].tracing
        if tracing is not None and began >= tracing.idle_until:
            tracer = tracing.tracer()
            # The exclusion lookup only when a span would be made (no SDK: none).
            if tracer is not None and not _in_excluded_request(ctx):
                render = Tracing.render_started(tracer, labels.template(template.name))
        stack.append(_Render(id(template), began, render, 0 if ctx is None else id(ctx)))
    except Exception as e:
        failed(sender, signals.before_render_template.name, e)


def on_template_rendered(sender: Flask, template: Template, **extra: object) -> None:
    try:
        end = perf_counter()
        stack = _renders.get(None)
        while stack:
            template_id, start, render, _ = stack.pop()
            if render is not None:
                # An entry left by a render that raised ends as failed.
                Tracing.render_ended(render, failed=template_id != id(template))
            if template_id == id(template):
                # _in_excluded_request inline, and the series kept by name:
                # no call and no label lookup in the family on every render.
                ctx = current_context(None)
                if ctx is None or ctx.request.environ.get(START_KEY, MISSING) is not None:
                    state: State = sender.extensions[EXTENSION_KEY]
                    name = template.name
                    observe = state.renders.get(name) or state.render_observer(name)
                    observe(end - start)
                return
    except Exception as e:
        failed(sender, signals.template_rendered.name, e)


def on_message_flashed(sender: Flask, category: object = "message", **extra: object) -> None:
    try:
        if not _in_excluded_request():
            state: State = sender.extensions[EXTENSION_KEY]
            assert state.metrics is not None
            state.metrics.flashes.child((str(category),)).inc()
            if state.tracing is not None:
                state.tracing.flashed(str(category))
    except Exception as e:
        failed(sender, signals.message_flashed.name, e)
