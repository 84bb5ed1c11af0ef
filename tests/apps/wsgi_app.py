"""A WSGI app, served by `gunicorn --workers 2 wsgi_app:application` (gunicorn binds
to $PORT by itself)."""

from hosts import verdict

REASONS = {200: "200 OK", 400: "400 Bad Request"}


def application(environ, start_response):  # type: ignore[no-untyped-def]
    status, body = verdict(environ.get("HTTP_HOST", ""))
    start_response(
        REASONS[status], [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
