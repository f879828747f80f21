"""A process for the crash and concurrency tests: fetch into a store, or publish.

    python store_child.py fetch STORE SOURCE_URL MODEL VERSION_JSON
    python store_child.py publish REPO MODEL_FILE MODEL VERSION
"""

import json
import sys

from tflite_hotswap.serving.contract import Contract
from tflite_hotswap.delivery.sources import FetchConfig, open_source
from tflite_hotswap.delivery.manifest import Version
from tflite_hotswap.delivery.repository import publish
from tflite_hotswap.delivery.store import Store

if sys.argv[1] == "fetch":
    _, _, root, url, model, version_json = sys.argv
    v = json.loads(version_json)
    version = Version(v["id"], v["url"], v["sha256"], v["size"], Contract((), ()), "t")
    store = Store(root, config=FetchConfig(read_timeout=5, deadline=60, backoff_base=0.01))
    path = store.fetch(open_source(url), model, version)
    store.mark_current(model, version.id)
    print(path)
else:
    _, _, repo, model_file, model, version = sys.argv
    publish(repo, model_file, model=model, version=version, channel="stable")
