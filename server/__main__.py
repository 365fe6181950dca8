"""``python -m server``: the development server on the trained model (production: gunicorn)."""

from __future__ import annotations

import argparse
import os
import sys

from server.app import StartupError, create_app


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; a model or setting that cannot be served is one line, exit 1."""
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Development server for digit recognition. In production run gunicorn "
                    '(gunicorn --config gunicorn.conf.py "server:create_app()").',
    )
    parser.add_argument("--model", help="model file (default: $MODEL_PATH, else model.npz)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=os.environ.get("PORT", "5000"),
                        help="port (default: $PORT, else %(default)s)")
    parser.add_argument("--debug", action="store_true",
                        help="Flask debug mode: reloader and tracebacks in the browser")
    args = parser.parse_args(argv)
    config = {"MODEL_PATH": args.model} if args.model else None
    try:
        app = create_app(config)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    app.run(host=args.host, port=args.port, debug=args.debug, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
