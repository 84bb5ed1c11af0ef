"""Small apps of the shapes users deploy: a WSGI app under gunicorn's worker
processes, an ASGI app under uvicorn's, a server that daemonises, one that takes
its time to shut down. Each is a few lines; the tests copy them into a project."""
