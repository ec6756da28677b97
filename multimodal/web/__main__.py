"""A local web demo of an unCLIP run: text to image, zero-shot classification of your own picture, index search.

    python -m multimodal.web --unclip runs/unclip-demo [--clip RUN] [--index DIR] [--port 7860]

then open http://127.0.0.1:7860. It listens on this machine's loopback only, unless --host names another address
and --allow-remote says so. The models load before the server starts; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from ..cli import HelpFormatter, add_device_argument, add_threads_argument, run_cli

__all__ = ["is_loopback", "main"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or "localhost") is this machine's loopback, unreachable from other machines."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _check_port_free(host: str, port: int) -> None:
    """An OSError that names ``port`` unless it can be listened on now (before the models spend time loading)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or --host") from None


def run(args: argparse.Namespace) -> None:
    """Check the address, load the models, and serve the app until interrupted."""
    if not is_loopback(args.host) and not args.allow_remote:
        raise ValueError(
            f"--host {args.host} is not this machine's loopback: other machines could use the demo; "
            "pass --allow-remote as well to mean it, or leave --host out (127.0.0.1)"
        )
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be from 1 to 65535, got {args.port}")
    if args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    _check_port_free(args.host, args.port)
    try:
        import uvicorn

        from .app import TEMPLATES, Limits, create_app, load_demo
    except ImportError as e:
        raise ValueError(
            f"the web demo needs fastapi, uvicorn and python-multipart ({e}): pip install -e '.[web]'"
        ) from None
    demo = load_demo(
        args.unclip, clip=args.clip, index=args.index, device=args.device, templates=args.template or TEMPLATES
    )
    app = create_app(demo, limits=Limits(max_images=args.max_images))
    if not is_loopback(args.host):
        print(
            f"warning: serving on {args.host}, reachable from other machines: anyone who reaches port {args.port} "
            "can run the models",
            file=sys.stderr,
        )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving the demo on http://{shown}:{args.port} (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multimodal.web", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--unclip", required=True, help="unCLIP run root (holding prior/ and decoder/) or saved pipeline folder"
    )
    parser.add_argument("--clip", help="CLIP run for zero-shot (default: the unCLIP stack's own CLIP)")
    parser.add_argument("--index", help="embedding index folder to search (the search panel shows only with it)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument(
        "--allow-remote", action="store_true", help="let --host be an address other machines reach (prints a warning)"
    )
    parser.add_argument("--max-images", type=int, default=16, help="most images one generation may ask for")
    parser.add_argument(
        "--template",
        action="append",
        help="zero-shot prompt template with {} for the label (repeatable; default: 'a {}.' and 'a photo of a {}.')",
    )
    add_device_argument(parser, help="torch device the models run on")
    add_threads_argument(parser)
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
