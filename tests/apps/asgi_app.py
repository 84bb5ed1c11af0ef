"""An ASGI app, served by `uvicorn asgi_app:app --workers 2 --port $PORT`."""

from hosts import verdict


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    status, body = verdict(headers.get(b"host", b"").decode())
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
