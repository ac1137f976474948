"""The floor of ``make bench-serving``: an HTTP server that does no work, run as the API is.

The same ASGI server as ``python -m serving`` (uvicorn with its defaults: uvloop, httptools),
with the same worker processes, log level and no access log; its one app reads the request
body and answers 200 with a fixed JSON body of the size the API's response has. The CPU it
spends per request at the bench's rate is what serving a request over HTTP costs on this
machine before any of the API's own work: the rest of ``api_cpu_ms_per_req`` is the API's.

Run: ``python -m bench.floor_api --port P --workers N --bytes B`` (uvicorn's workers import
the app afresh, so the body size reaches them through ``USERSIGNALS_FLOOR_BYTES``).
"""
from __future__ import annotations

import argparse
import os

BYTES_ENV = "USERSIGNALS_FLOOR_BYTES"


def body_of(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (at least 10)."""
    if size < 10:
        raise ValueError(f"a floor body is at least 10 bytes, not {size}")
    return b'{"pad":"' + b"x" * (size - 10) + b'"}'


def make_app(body: bytes):
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def app(scope, receive, send) -> None:  # http only: run with lifespan off
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def create_app():
    """uvicorn's factory, in each worker."""
    return make_app(body_of(int(os.environ.get(BYTES_ENV, "1000"))))


def main(argv=None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--bytes", type=int, default=1000, help="size of the response body")
    args = ap.parse_args(argv)
    body_of(args.bytes)  # a size it cannot serve fails here, not in every worker
    os.environ[BYTES_ENV] = str(args.bytes)
    uvicorn.run("bench.floor_api:create_app", factory=True, host=args.host, port=args.port,
                workers=args.workers if args.workers > 1 else None, log_level="warning", access_log=False,
                lifespan="off")


if __name__ == "__main__":
    main()
