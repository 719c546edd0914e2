"""`carl --batch metrics serve [--port P] [SOURCE…]`: a Prometheus scrape endpoint (/metrics, text format) with the
latest metrics and open health findings of carl's live runs and of each SOURCE (anything `observe --file`
takes). Bound to 127.0.0.1. Prints one JSON line {"url", "port", "sources"} when listening, then serves until
SIGINT/SIGTERM. See docs/observe.md."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("metrics", help="expose run metrics and health findings to Prometheus",
                       description="Serve the latest metrics and open findings of carl's live runs and of the "
                                   "given sources in Prometheus' text format on 127.0.0.1.")
    msub = p.add_subparsers(dest="metrics_cmd", metavar="CMD")
    s = msub.add_parser("serve", help="serve /metrics on 127.0.0.1:PORT until interrupted")
    s.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="anything `observe --file` takes (file or directory), a carl run id, or trackio:PROJECT")
    s.add_argument("--port", type=int, default=9464, help="port on 127.0.0.1 (default 9464; 0 = any free port)")
    s.set_defaults(func=run)
    p.set_defaults(func=_needs_cmd)


def _needs_cmd(args: argparse.Namespace) -> int:
    from engine.errors import ValidationError

    raise ValidationError("metrics needs a command", hint="carl --batch metrics serve [--port P] [SOURCE…]")


def run(args: argparse.Namespace) -> int:
    import threading

    from carl_tui.batch._io import emit, progress
    from engine.errors import ValidationError
    from engine.observe.metrics_serve import serve
    from engine.observe.sources import parse_source_spec

    if not 0 <= args.port <= 65535:
        raise ValidationError(f"--port {args.port} is not a port", hint="Pass 0..65535 (0 = any free port).")
    sources = [parse_source_spec(s) for s in args.sources]
    try:
        server, _thread, _ = serve(sources, port=args.port)
    except OSError as exc:
        raise ValidationError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}",
                              hint="Pick another --port (0 = any free port).") from exc
    port = server.server_address[1]
    emit({"url": f"http://127.0.0.1:{port}/metrics", "port": port,
          "sources": [{"source": s.label, "run": s.run, "reader": s.reader or s.kind} for s in sources]})
    progress(f"serving http://127.0.0.1:{port}/metrics (Ctrl-C to stop)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0
