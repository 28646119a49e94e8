"""Row nginx-uwsgi-flask: the hello world of the classic stack, as a Flask app.

The body is serialised per request (as Fastify does) and is byte-for-byte what every other row
answers: {"hello":"world"} with Content-Type application/json; charset=utf-8. Flask's own
jsonify would append a newline, so the Response is built explicitly.
"""

import json

from flask import Flask, Response

app = Flask(__name__)


@app.get("/")
def hello():
    return Response(
        json.dumps({"hello": "world"}, separators=(",", ":")),
        content_type="application/json; charset=utf-8",
    )
