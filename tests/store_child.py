"""A process for the crash and concurrency tests: fetch into a store, publish, or race prune.

    python store_child.py fetch STORE SOURCE_URL MODEL VERSION_JSON
    python store_child.py publish REPO MODEL_FILE MODEL VERSION
    python store_child.py fetch-loop STORE REPO N   fetch REPO's versions of "m" in turn, N times;
                                                    print how many returned paths were missing
    python store_child.py prune-loop STORE           prune until killed
    python store_child.py zygote                     for each line "STORE REPO" on stdin, fork a
                                                     fetch loop and a prune loop on STORE (forever)
                                                     and print their pids: many SIGKILL trials
                                                     without paying for the imports each time
"""

import hashlib
import json
import os
import signal
import sys
import time

from tflite_hotswap.delivery.manifest import Version
from tflite_hotswap.delivery.repository import load_manifest, publish
from tflite_hotswap.delivery.sources import FetchConfig, open_source
from tflite_hotswap.delivery.store import Store
from tflite_hotswap.serving.contract import Contract

LOOP_CONFIG = FetchConfig(read_timeout=5, deadline=60, backoff_base=0.01, disk_margin_bytes=0, lock_timeout=30)


def fetch_loop(root, repo, n=None):
    store = Store(root, keep=1, config=LOOP_CONFIG)
    source = open_source(repo)
    versions = sorted(load_manifest(repo).models["m"].versions.values(), key=lambda v: v.id)
    misses = i = 0
    while n is None or i < n:
        version = versions[i % len(versions)]
        path = store.fetch(source, "m", version)
        try:
            with open(path, "rb") as f:
                misses += hashlib.sha256(f.read()).hexdigest() != version.sha256
        except FileNotFoundError:
            misses += 1
        store.mark_current("m", version.id)
        i += 1
    return misses


def prune_loop(root):
    store = Store(root, keep=1, config=LOOP_CONFIG)
    while True:
        store.prune()
        time.sleep(0.001)  # the state lock is polled, not queued: leave the other process a chance


def forked(work):
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(1)
    return pid


if sys.argv[1] == "fetch":
    _, _, root, url, model, version_json = sys.argv
    v = json.loads(version_json)
    version = Version(v["id"], v["url"], v["sha256"], v["size"], Contract((), ()), "t")
    store = Store(root, config=FetchConfig(read_timeout=5, deadline=60, backoff_base=0.01))
    path = store.fetch(open_source(url), model, version)
    store.mark_current(model, version.id)
    print(path)
elif sys.argv[1] == "publish":
    _, _, repo, model_file, model, version = sys.argv
    publish(repo, model_file, model=model, version=version, channel="stable", allow_contract_change=True)
elif sys.argv[1] == "fetch-loop":
    print(fetch_loop(sys.argv[2], sys.argv[3], int(sys.argv[4])))
elif sys.argv[1] == "prune-loop":
    prune_loop(sys.argv[2])
elif sys.argv[1] == "zygote":
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed children are reaped at once
    for line in sys.stdin:
        root, repo = line.split()
        pids = (forked(lambda: fetch_loop(root, repo)), forked(lambda: prune_loop(root)))
        print(*pids, flush=True)
