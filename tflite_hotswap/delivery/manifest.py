"""The model repository's manifest: what versions exist and who gets which.

A repository is a folder of static files: ``manifest.json`` plus the model
files it lists by relative URL.  The manifest has a schema version and a serial
that only grows; per model it lists versions (URL, sha256, size, I/O contract,
created time, optional minimum client version and golden sample), channels
naming a version, an optional staged rollout and A/B experiments.

Parsing is strict: an unknown schema version or field, a missing field, a
malformed hash, a URL that escapes the repository or a serial lower than one
already seen is a :class:`ManifestError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import DeliveryError, ManifestError, MisuseError, SerialRollbackError
from ..serving.contract import Contract, TensorSpec

SCHEMA_VERSION = 1
#: The largest integer a manifest may hold (serial, sizes, shapes): a signed 64-bit one.
MAX_INT = 2**63 - 1
#: Used with ``fullmatch`` (``$`` would also accept a trailing newline).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Golden:
    """A golden sample: inputs with expected outputs (an ``.npz``), and a tolerance."""

    url: str
    sha256: str
    size: int
    tolerance: float


@dataclass(frozen=True)
class Version:
    """One published version of a model."""

    id: str
    url: str
    sha256: str
    size: int
    contract: Contract
    created: str
    min_client_version: str | None = None
    golden: Golden | None = None


@dataclass(frozen=True)
class Rollout:
    """Staged rollout: ``percent`` of devices (by a salted hash of their id) get ``version``."""

    version: str
    percent: float
    salt: str


@dataclass(frozen=True)
class Arm:
    version: str
    weight: float


@dataclass(frozen=True)
class Experiment:
    """A/B experiment: each device is assigned an arm, stickily, by a salted hash of its id."""

    name: str
    salt: str
    arms: tuple[Arm, ...]


@dataclass(frozen=True)
class ModelEntry:
    versions: dict[str, Version]
    channels: dict[str, str]
    rollout: Rollout | None = None
    experiments: tuple[Experiment, ...] = ()


@dataclass(frozen=True)
class Manifest:
    serial: int
    models: dict[str, ModelEntry] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def version(self, model: str, version: str) -> Version:
        """Raises: ManifestError: if the model or version is not listed."""
        try:
            return self.models[model].versions[version]
        except KeyError:
            listed = sorted(self.models[model].versions) if model in self.models else sorted(self.models)
            raise ManifestError(f"manifest: expected model {model!r} version {version!r}, "
                                f"listed are {listed}") from None

    def to_json(self) -> bytes:
        return (json.dumps(_dump(self), indent=2, sort_keys=True) + "\n").encode()


# ----------------------------------------------------------------- assignment


def device_fraction(salt: str, device_id: str) -> float:
    """A stable number in [0, 1) for this device and salt."""
    digest = hashlib.sha256(f"{salt}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assigned_arm(experiment: Experiment, device_id: str) -> Arm:
    """The device's arm of ``experiment`` (weighted, sticky: by a salted hash of its id)."""
    point = device_fraction(experiment.salt, device_id) * sum(a.weight for a in experiment.arms)
    for arm in experiment.arms:
        if point < arm.weight:
            return arm
        point -= arm.weight
    return experiment.arms[-1]


def rollout_applies(entry: ModelEntry, channel: str) -> bool:
    """Whether ``entry``'s staged rollout still applies to devices on ``channel``.

    A rollout moves a channel forward: it is over once the channel serves the
    rollout's version (it completed) or a version created after it (the
    channel moved on).  So a rollout never keeps devices on a version older
    than their channel's.  (``publish --channel`` also ends a rollout of
    another version, which covers versions created within the same second.)
    """
    rollout = entry.rollout
    if rollout is None or channel not in entry.channels:
        return False
    channel_version = entry.versions[entry.channels[channel]]
    return channel_version.id != rollout.version and entry.versions[rollout.version].created >= channel_version.created


def choose_version(entry: ModelEntry, device_id: str, channel: str = "stable",
                   client_version: str | None = None, exclude: Collection[str] = ()) -> str:
    """The version this device should run.

    In order: the device's arm of the first experiment, then the staged
    rollout if it still applies (``rollout_applies``) and the device falls
    within its percentage, then the channel.  A candidate needing a newer
    client than ``client_version``, or listed in ``exclude`` (versions this
    device found bad), is passed over.  Assignment is sticky: it depends only
    on the salts and the device id.

    Raises:
        MisuseError: if the channel does not exist.
        DeliveryError: if no candidate is left.
    """
    if channel not in entry.channels:
        raise MisuseError(f"channel: expected one of {sorted(entry.channels)}, got {channel!r}")
    candidates = [assigned_arm(experiment, device_id).version for experiment in entry.experiments[:1]]
    if entry.rollout and rollout_applies(entry, channel) \
            and device_fraction(entry.rollout.salt, device_id) * 100 < entry.rollout.percent:
        candidates.append(entry.rollout.version)
    candidates.append(entry.channels[channel])
    for version in candidates:
        if version in exclude:
            continue
        needed = entry.versions[version].min_client_version
        if needed is None or client_version is None or _version_tuple(client_version) >= _version_tuple(needed):
            return version
    raise DeliveryError(f"no version among {candidates} is usable here: expected one not marked bad "
                        f"({sorted(set(exclude) & set(candidates))} are) that supports client version "
                        f"{client_version}")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


# -------------------------------------------------------------------- parsing


def parse_manifest(data: bytes, *, min_serial: int | None = None) -> Manifest:
    """Parse and validate manifest JSON.

    Args:
        data: the manifest file's bytes.
        min_serial: the highest serial already accepted; a lower one is refused.

    Raises:
        ManifestError: for anything that does not follow the schema.
        SerialRollbackError: if the serial is lower than ``min_serial``.
    """
    try:
        doc = json.loads(data, parse_float=_finite, parse_constant=_finite)
    except RecursionError:
        raise ManifestError("manifest: expected JSON nested a few levels deep, got deeper nesting than "
                            "the parser supports") from None
    except (ValueError, UnicodeDecodeError) as e:  # ManifestError from _finite is a ValueError too
        raise ManifestError(f"manifest: expected JSON with finite numbers, got {e}") from None
    obj = _Obj(doc, "manifest")
    schema = obj.take("schema_version", int)
    if schema != SCHEMA_VERSION:
        raise ManifestError(f"manifest.schema_version: expected {SCHEMA_VERSION}, got {schema}")
    serial = obj.take("serial", int)
    if serial < 0:
        raise ManifestError(f"manifest.serial: expected >= 0, got {serial}")
    if min_serial is not None and serial < min_serial:
        raise SerialRollbackError(f"manifest.serial: expected >= {min_serial} (already seen), got {serial}")
    models = {}
    for name, value in obj.take("models", dict).items():
        check_name(name, "manifest.models key")
        models[name] = _model(_Obj(value, f"manifest.models[{name!r}]"))
    obj.done()
    return Manifest(serial, models, schema)


class _Obj:
    """A JSON object being consumed field by field; leftovers are unknown fields."""

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected an object, got {type(value).__name__}")
        self.value = dict(value)
        self.where = where

    def take(self, key: str, kind: type, optional: bool = False) -> Any:
        if key not in self.value:
            if optional:
                return None
            raise ManifestError(f"{self.where}: expected field {key!r}, it is missing")
        value = self.value.pop(key)
        if value is None and optional:
            return None
        return _typed(value, kind, f"{self.where}.{key}")

    def take_list(self, key: str, kind: type, optional: bool = False) -> list[Any]:
        """A list field whose items are all of ``kind``."""
        items = self.take(key, list, optional) or []
        return [_typed(item, kind, f"{self.where}.{key}[{i}]") for i, item in enumerate(items)]

    def done(self) -> None:
        if self.value:
            raise ManifestError(f"{self.where}: unknown field(s) {sorted(self.value)}")


def _typed(value: Any, kind: type, where: str) -> Any:
    """``value`` if it is a JSON value of ``kind``; integers must fit in 64 bits and also serve as floats.

    Raises:
        ManifestError: otherwise.
    """
    if type(value) is int and kind in (int, float):
        if abs(value) > MAX_INT:
            raise ManifestError(f"{where}: expected an integer from -{MAX_INT} to {MAX_INT}, "
                                f"got one of {value.bit_length()} bits")
        return float(value) if kind is float else value
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ManifestError(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _finite(text: str) -> float:
    """JSON's number parser for manifests: NaN, Infinity and overflowing numbers are refused."""
    number = float(text)
    if not math.isfinite(number):
        raise ManifestError(f"expected a finite number, got {text[:40]}")
    return number


def _model(obj: _Obj) -> ModelEntry:
    versions = {}
    for vid, value in obj.take("versions", dict).items():
        check_name(vid, f"{obj.where}.versions key")
        versions[vid] = _version(vid, _Obj(value, f"{obj.where}.versions[{vid!r}]"))
    channels = obj.take("channels", dict)
    for channel, vid in channels.items():
        check_name(channel, f"{obj.where}.channels key")
        if not isinstance(vid, str):
            raise ManifestError(f"{obj.where}.channels[{channel!r}]: expected str, got {type(vid).__name__}")
        _check_listed(vid, versions, f"{obj.where}.channels[{channel!r}]")
    rollout = None
    raw = obj.take("rollout", dict, optional=True)
    if raw is not None:
        r = _Obj(raw, f"{obj.where}.rollout")
        rollout = Rollout(r.take("version", str), r.take("percent", float), r.take("salt", str))
        r.done()
        _check_listed(rollout.version, versions, r.where + ".version")
        if not 0 <= rollout.percent <= 100:
            raise ManifestError(f"{r.where}.percent: expected 0 to 100, got {rollout.percent}")
    experiments = []
    for i, raw in enumerate(obj.take("experiments", list, optional=True) or []):
        e = _Obj(raw, f"{obj.where}.experiments[{i}]")
        name, salt = e.take("name", str), e.take("salt", str)
        arms = []
        for j, raw_arm in enumerate(e.take("arms", list)):
            a = _Obj(raw_arm, f"{e.where}.arms[{j}]")
            arm = Arm(a.take("version", str), a.take("weight", float))
            a.done()
            _check_listed(arm.version, versions, a.where + ".version")
            if not arm.weight > 0:
                raise ManifestError(f"{a.where}.weight: expected > 0, got {arm.weight}")
            arms.append(arm)
        if not arms:
            raise ManifestError(f"{e.where}.arms: expected at least one arm, got none")
        e.done()
        experiments.append(Experiment(name, salt, tuple(arms)))
    obj.done()
    return ModelEntry(versions, dict(channels), rollout, tuple(experiments))


def _version(vid: str, obj: _Obj) -> Version:
    url = check_relative_url(obj.take("url", str), obj.where + ".url")
    sha256 = _check_sha256(obj.take("sha256", str), obj.where + ".sha256")
    size = obj.take("size", int)
    if size <= 0:
        raise ManifestError(f"{obj.where}.size: expected > 0, got {size}")
    contract = _contract(_Obj(obj.take("contract", dict), obj.where + ".contract"))
    created = obj.take("created", str)
    min_client = obj.take("min_client_version", str, optional=True)
    if min_client is not None and not (len(min_client) <= 64 and _version_tuple(min_client)):
        raise ManifestError(f"{obj.where}.min_client_version: expected a version like '1.2', got {min_client!r:.60}")
    golden = None
    raw = obj.take("golden", dict, optional=True)
    if raw is not None:
        g = _Obj(raw, obj.where + ".golden")
        golden = Golden(check_relative_url(g.take("url", str), g.where + ".url"),
                        _check_sha256(g.take("sha256", str), g.where + ".sha256"),
                        g.take("size", int), g.take("tolerance", float))
        g.done()
    obj.done()
    return Version(vid, url, sha256, size, contract, created, min_client, golden)


def _contract(obj: _Obj) -> Contract:
    """An I/O contract, each tensor spec checked field by field."""
    lists = []
    for kind in ("inputs", "outputs"):
        specs = []
        for i, raw in enumerate(obj.take(kind, list)):
            t = _Obj(raw, f"{obj.where}.{kind}[{i}]")
            specs.append(TensorSpec(t.take("name", str), t.take("dtype", str), tuple(t.take_list("shape", int)),
                                    tuple(t.take_list("scales", float, optional=True)),
                                    tuple(t.take_list("zero_points", int, optional=True))))
            t.done()
        lists.append(tuple(specs))
    obj.done()
    return Contract(lists[0], lists[1])


def check_relative_url(url: str, where: str = "url") -> str:
    """Return ``url`` if it is relative and stays inside the repository.

    Raises:
        ManifestError: for an absolute URL, a scheme, a backslash, an empty
            path, or a ``..`` segment (also percent-encoded).
    """
    parts = urlsplit(url)
    path = unquote(parts.path)
    segments = path.split("/")
    if (not path or parts.scheme or parts.netloc or path.startswith("/") or "\\" in path
            or ".." in segments or "" in segments or posixpath.normpath(path).startswith("..")):
        raise ManifestError(f"{where}: expected a relative URL inside the repository, got {url!r}")
    return url


def _check_sha256(value: str, where: str) -> str:
    if not SHA256.fullmatch(value):
        raise ManifestError(f"{where}: expected 64 lowercase hex digits, got {value!r}")
    return value


def check_name(value: str, where: str) -> None:
    """Raises: ManifestError: unless ``value`` is a valid model, version or channel name."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ManifestError(f"{where}: expected 1-64 of [A-Za-z0-9._-] starting alphanumeric, got {value!r}")


def _check_listed(version: str, versions: dict[str, Any], where: str) -> None:
    if version not in versions:
        raise ManifestError(f"{where}: expected a listed version ({sorted(versions)}), got {version!r}")


def _dump(manifest: Manifest) -> dict[str, Any]:
    def version(v: Version) -> dict[str, Any]:
        d: dict[str, Any] = {"url": v.url, "sha256": v.sha256, "size": v.size,
                             "contract": v.contract.to_dict(), "created": v.created}
        if v.min_client_version is not None:
            d["min_client_version"] = v.min_client_version
        if v.golden is not None:
            d["golden"] = {"url": v.golden.url, "sha256": v.golden.sha256, "size": v.golden.size,
                           "tolerance": v.golden.tolerance}
        return d

    def model(m: ModelEntry) -> dict[str, Any]:
        d: dict[str, Any] = {"versions": {k: version(v) for k, v in m.versions.items()},
                             "channels": dict(m.channels)}
        if m.rollout is not None:
            d["rollout"] = {"version": m.rollout.version, "percent": m.rollout.percent, "salt": m.rollout.salt}
        if m.experiments:
            d["experiments"] = [{"name": e.name, "salt": e.salt,
                                 "arms": [{"version": a.version, "weight": a.weight} for a in e.arms]}
                                for e in m.experiments]
        return d

    return {"schema_version": manifest.schema_version, "serial": manifest.serial,
            "models": {k: model(m) for k, m in manifest.models.items()}}
