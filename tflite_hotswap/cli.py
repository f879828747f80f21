"""The ``tflite-hotswap`` command: publish to a repository, show it, fetch into a store, demo."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

from .errors import HotswapError
from .training import cli as training_cli

#: The exit status of a command stopped by Ctrl+C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def _progress_bar(label: str) -> Callable[[int, int], None]:
    """A progress callback drawing a bar on stderr (only for downloads over 1 MB)."""
    started = time.monotonic()
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if total < 1 << 20 or (now - last[0] < 0.1 and done < total):
            return
        last[0] = now
        width = 30
        filled = int(width * done / total)
        rate = done / max(now - started, 1e-6) / 1e6
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done / 1e6:7.1f}/{total / 1e6:.1f} MB {rate:6.1f} MB/s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return report


def main(argv: list[str] | None = None) -> int:
    from . import __version__
    from .updater import cli as updater_cli
    parser = argparse.ArgumentParser(prog="tflite-hotswap", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tflite-hotswap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    updater_cli.add_commands(sub)

    p = sub.add_parser("publish", help="add a model version to a repository folder")
    p.add_argument("repo")
    p.add_argument("model_file", metavar="MODEL.tflite")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", required=True, help="version id")
    p.add_argument("--channel", help="point this channel (e.g. stable, beta) at the version")
    p.add_argument("--rollout", type=float, metavar="PERCENT", help="staged rollout to this share of devices")
    p.add_argument("--golden", metavar="FILE", help=".npz of inputs/<name> and outputs/<name> arrays")
    p.add_argument("--golden-tolerance", type=float, default=1e-5)
    p.add_argument("--allow-contract-change", action="store_true",
                   help="publish even if the I/O contract differs from the versions on the model's channels")
    p.add_argument("--signature", help="the signature devices run (needed for a model with several, e.g. "
                                       "infer for a trainable model)")

    r = sub.add_parser("repo", help="inspect a repository")
    r_sub = r.add_subparsers(dest="repo_command", required=True)
    r_show = r_sub.add_parser("show", help="print the manifest as a table")
    r_show.add_argument("repo")

    f = sub.add_parser("fetch", help="download a version into an on-device store")
    f.add_argument("source", help="repository: http(s):// URL, file:///absolute/path (three slashes) "
                                  "or a folder path (relative to the current directory)")
    f.add_argument("store", help="store folder")
    f.add_argument("--model", required=True)
    group = f.add_mutually_exclusive_group()
    group.add_argument("--version", help="version id (default: what --channel assigns this device)")
    group.add_argument("--channel", default="stable")
    f.add_argument("--device-id", default="cli", help="device id for rollouts and experiments")

    sub.add_parser("demo", help="run the hot-swap demo")
    training_cli.add_commands(sub)

    args = parser.parse_args(argv)
    try:
        if args.command == "publish":
            from .delivery.repository import publish, show
            manifest = publish(args.repo, args.model_file, model=args.model, version=args.version,
                               channel=args.channel, rollout=args.rollout, golden=args.golden,
                               golden_tolerance=args.golden_tolerance,
                               allow_contract_change=args.allow_contract_change,
                               signature=args.signature)
            print(show(manifest))
        elif args.command == "repo":
            from .delivery.repository import load_manifest, show
            from .delivery.rollouts import fleet_table
            manifest = load_manifest(args.repo, required=True)
            print(show(manifest))
            print(fleet_table(manifest))
        elif args.command in ("make-trainable", "train"):
            return training_cli.run(args)
        elif args.command == "fetch":
            from . import __version__
            from .delivery.manifest import choose_version
            from .delivery.sources import open_source
            from .delivery.store import Store
            source = open_source(args.source)
            store = Store(args.store)
            manifest, _ = store.refresh_manifest(source)
            if args.model not in manifest.models:
                raise HotswapError(f"model: expected one of {sorted(manifest.models)}, got {args.model!r}")
            vid = args.version or choose_version(manifest.models[args.model], args.device_id, args.channel,
                                                 __version__)
            version = manifest.version(args.model, vid)
            path = store.fetch(source, args.model, version, progress=_progress_bar(f"{args.model} {vid}"))
            print(f"{args.model} {vid}: {path} (sha256 {version.sha256[:12]}..., {version.size} bytes)")
        elif args.command in updater_cli.COMMANDS:
            return updater_cli.run(args)
        else:
            from .demo.__main__ import main as demo
            return demo([])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (HotswapError, OSError) as e:  # user errors and the environment's: one line, no traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
