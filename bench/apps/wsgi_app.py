"""Row nginx-uwsgi-wsgi: the same answer from a bare WSGI callable (no framework at all)."""

import json


def application(environ, start_response):
    body = json.dumps({"hello": "world"}, separators=(",", ":")).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
