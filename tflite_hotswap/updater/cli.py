"""The updater's commands of ``tflite-hotswap``: status, follow, rollout, experiment."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from typing import Any

from ..errors import MisuseError

COMMANDS = ("status", "follow", "rollout", "experiment")


def add_commands(sub: Any) -> None:
    """Add the updater's subcommands to the ``tflite-hotswap`` parser's subparsers."""
    s = sub.add_parser("status", help="what a device store serves: current, last-known-good, bad, probation")
    s.add_argument("store")
    s.add_argument("--model", help="only this model")

    f = sub.add_parser("follow", help="a headless updater: serve from the store and follow a repository")
    f.add_argument("source", help="repository URL (http(s)://, file:///abs/path) or folder")
    f.add_argument("store")
    f.add_argument("--model", required=True)
    f.add_argument("--device-id", required=True)
    f.add_argument("--channel", default="stable")
    f.add_argument("--default", metavar="MODEL.tflite", help="the shipped model, for an empty store")
    f.add_argument("--interval", type=float, default=300.0, help="seconds between checks (default 300)")
    f.add_argument("--probation-calls", type=int, default=1000)
    f.add_argument("--probation-seconds", type=float, default=60.0)
    f.add_argument("--once", action="store_true", help="one round, then exit (0: no failure)")

    r = sub.add_parser("rollout", help="start, change or end a staged rollout")
    r.add_argument("repo")
    r.add_argument("model")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--version", help="the version to roll out")
    g.add_argument("--end", action="store_true", help="remove the rollout")
    r.add_argument("--percent", type=float, help="share of devices (0-100); raising only adds devices")

    e = sub.add_parser("experiment", help="add, replace or remove an A/B experiment")
    e.add_argument("repo")
    e.add_argument("model")
    e.add_argument("name")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--arm", action="append", metavar="VERSION:WEIGHT", help="an arm (repeat for each)")
    g.add_argument("--remove", action="store_true", help="remove the experiment")


def run(args: argparse.Namespace) -> int:
    """Run one of ``COMMANDS``; return the exit status.

    Raises:
        HotswapError: for user errors (printed in one line by the caller).
    """
    if args.command == "status":
        return _status(args)
    if args.command == "follow":
        return _follow(args)
    from ..delivery.rollouts import end_rollout, fleet_table, remove_experiment, set_experiment, set_rollout
    if args.command == "rollout":
        if args.end:
            manifest = end_rollout(args.repo, args.model)
        else:
            if args.percent is None:
                raise MisuseError("rollout: expected --percent with --version")
            manifest = set_rollout(args.repo, args.model, args.version, args.percent)
    elif args.remove:
        manifest = remove_experiment(args.repo, args.model, args.name)
    else:
        arms = []
        for text in args.arm:
            version, _, weight = text.rpartition(":")
            try:
                arms.append((version, float(weight)))
            except ValueError:
                raise MisuseError(f"--arm: expected VERSION:WEIGHT, got {text!r}") from None
        manifest = set_experiment(args.repo, args.model, args.name, arms)
    from ..delivery.repository import show
    print(show(manifest))
    print(fleet_table(manifest))
    return 0


def _status(args: argparse.Namespace) -> int:
    from ..delivery.store import Store
    from .state import UpdaterState, owner_alive
    if not os.path.isdir(args.store):
        raise MisuseError(f"store: expected a store folder, {args.store!r} is not a folder")
    store = Store(args.store)
    try:
        with open(os.path.join(store.root, "state.json")) as f:
            models = sorted(json.load(f).get("models", {}))
    except FileNotFoundError:
        models = []
    if args.model:
        models = [args.model]
    state = UpdaterState(store.root)
    print(f"store {store.root}: {len(models)} model(s)")
    for model in models:
        st = store.state(model)
        u = state.model(model)
        print(f"\nmodel {model}")
        print(f"  current          {st.current}")
        print(f"  last-known-good  {st.last_known_good}")
        print(f"  stored           {', '.join(sorted(st.versions)) or '-'}")
        p = u["probation"]
        if p:
            alive = owner_alive(p["owner"])
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p["started"]))
            print(f"  probation        {p['version']} since {since}"
                  f" (process {p['owner'].get('pid')}, {'running' if alive else 'died: counted at next start'})")
        for version, deaths in sorted(u["deaths"].items()):
            print(f"  died during probation of {version}: {deaths} time(s)")
        if u["arm"]:
            print(f"  experiment arm   {u['arm']}")
        for version, reason in sorted(st.bad.items()):
            print(f"  bad {version}: {reason}")
    return 0


def _follow(args: argparse.Namespace) -> int:
    from ..serving.runtime import Runtime
    from .core import Updater
    from .probation import Probation
    rt = Runtime.from_store(args.store, model=args.model, default=args.default)
    print(f"serving {args.model} {rt.info.version}; following {args.source} as {args.device_id} "
          f"on {args.channel}", flush=True)
    up = Updater(rt, args.source, args.store, args.model, args.device_id, args.channel, interval=args.interval,
                 probation=Probation(calls=args.probation_calls, seconds=args.probation_seconds),
                 on_event=lambda e: print(e.message(), flush=True))
    try:
        if args.once:
            result = up.check_now()
            print(f"{result.outcome}: serving {result.serving}" + (f" ({result.reason})" if result.reason else ""))
            return 1 if result.outcome == "failed" else 0
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        with up:
            while not done.wait(1.0):
                pass
        return 0
    finally:
        up.stop()
        rt.close()
