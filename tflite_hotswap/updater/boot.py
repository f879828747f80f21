"""Opening a runtime from the on-device store, offline (``Runtime.from_store``)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any

from ..delivery.manifest import Version
from ..delivery.store import Store, atomic_write
from ..errors import InvalidModelError, StorageError
from ..serving.loader import ModelSource, read_model
from ..serving.runtime import Runtime
from .events import DiedDuringProbation, EventHandler, emit
from .state import UpdaterState, owner_alive, recover

logger = logging.getLogger(__name__)

#: Deaths during one version's probation after which it is marked bad.
MAX_DEATHS = 2


def open_from_store(store: str | Store, *, model: str, default: ModelSource | None = None,
                    default_version: str = "factory", max_deaths: int = MAX_DEATHS,
                    on_event: EventHandler | None = None, **runtime_args: Any) -> Runtime:
    """A Runtime serving what the store says, without any network.

    In order: crash-loop recovery (a probation whose process died is counted,
    the store goes back to last-known-good, and after ``max_deaths`` deaths the
    version is marked bad); then the store's current version, unless it is bad
    or on probation in another live process; then its last-known-good; then
    ``default`` (the model the device shipped with), which is added to the
    store as ``default_version`` and becomes current and last-known-good.
    A stored file that cannot be loaded is skipped (and marked bad).

    Args:
        store: the store folder (or a Store).
        model: the model name.
        default: path or bytes of the shipped model, for an empty store.
        default_version: the version name the shipped model gets.
        max_deaths: deaths during one probation that mark a version bad.
        on_event: receives a DiedDuringProbation event if recovery counted one.
        **runtime_args: passed to :class:`Runtime` (backend, workers, policy, ...).

    Raises:
        StorageError: if nothing is stored for ``model`` and no default is given,
            or the store cannot be read.
        InvalidModelError: if the default model cannot be loaded either.
    """
    store = store if isinstance(store, Store) else Store(store)
    state = UpdaterState(store.root)
    recovery = recover(store, state, model, max_deaths)
    st = store.state(model)
    probation = state.probation(model)
    busy = probation.version if probation and owner_alive(probation.owner) else None
    deaths = state.model(model)["deaths"]
    candidates = []
    for version in (st.current, st.last_known_good):
        if version and version not in st.bad and version != busy and deaths.get(version, 0) < max_deaths \
                and version not in candidates:
            candidates.append(version)
    rt: Runtime | None = None
    for version in candidates:
        try:
            rt = Runtime(store.path_of(model, version), version=version, **runtime_args)
        except StorageError as e:
            logger.warning("%s %s: stored file unusable (%s); trying the next", model, version, e)
            continue
        except InvalidModelError as e:
            store.mark_bad(model, version, f"could not be loaded from the store: {e}")
            logger.warning("%s %s: could not be loaded (%s); marked bad", model, version, e)
            continue
        if version != st.current:
            store.mark_current(model, version, good=version == st.last_known_good)
        break
    if rt is None:
        if default is None:
            raise StorageError(f"{store.root}: expected a usable stored version of {model!r} (current "
                               f"{st.current}, last-known-good {st.last_known_good}, bad {sorted(st.bad)}), "
                               f"found none and no default= model")
        rt = _from_default(store, model, default, default_version, runtime_args)
    if recovery is not None:
        emit(DiedDuringProbation(model=model, at=time.time(), version=recovery.version,
                                 deaths=recovery.deaths, serving=rt.info.version), on_event)
    logger.info("%s: serving %s from %s", model, rt.info.version, store.root)
    return rt


def _from_default(store: Store, model: str, default: ModelSource, version: str,
                  runtime_args: dict[str, Any]) -> Runtime:
    """Serve the shipped model and record it in the store as current and last-known-good."""
    data = read_model(default)
    rt = Runtime(data, version=version, **runtime_args)
    sha256 = hashlib.sha256(data).hexdigest()
    path = store.object_path(sha256)
    try:
        if not os.path.exists(path):
            atomic_write(path, data)
        store.record(model, Version(version, f"default/{version}", sha256, len(data), rt.info.contract,
                                    datetime.now(timezone.utc).isoformat(timespec="seconds")))
        store.mark_current(model, version)
    except BaseException:
        rt.close()
        raise
    return rt
