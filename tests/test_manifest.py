"""Manifest parsing (strict), round trips (hypothesis), and device assignment."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from tflite_hotswap.serving.contract import Contract, TensorSpec
from tflite_hotswap.errors import DeliveryError, ManifestError, MisuseError, SerialRollbackError
from tflite_hotswap.delivery.manifest import (Arm, Experiment, Golden, Manifest, ModelEntry, Rollout, Version,
                                     check_relative_url, choose_version, parse_manifest)

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
sha = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
urls = st.lists(st.from_regex(r"[a-z0-9_-][a-z0-9._-]{0,10}", fullmatch=True).filter(lambda s: s not in (".", "..")),
                min_size=1, max_size=3).map("/".join)
floats = st.floats(0, 1e6, allow_nan=False).map(lambda f: float(f"{f:.6g}"))
specs = st.builds(TensorSpec, names, st.sampled_from(["float32", "int8", "uint8", "int32"]),
                  st.lists(st.integers(-1, 512), max_size=4).map(tuple),
                  st.lists(floats, max_size=2).map(tuple), st.lists(st.integers(-128, 255), max_size=2).map(tuple))
contracts = st.builds(Contract, st.lists(specs, max_size=2).map(tuple), st.lists(specs, max_size=2).map(tuple))
goldens = st.builds(Golden, urls, sha, st.integers(1, 10**9), floats)


@st.composite
def model_entries(draw):
    ids = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    versions = {i: Version(i, draw(urls), draw(sha), draw(st.integers(1, 10**10)), draw(contracts),
                           draw(st.text(min_size=1, max_size=30)),
                           draw(st.none() | st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,2}", fullmatch=True)),
                           draw(st.none() | goldens)) for i in ids}
    channels = draw(st.dictionaries(names, st.sampled_from(ids), max_size=3))
    rollout = draw(st.none() | st.builds(Rollout, st.sampled_from(ids), st.floats(0, 100).map(
        lambda f: float(f"{f:.4g}")), st.text(max_size=20)))
    experiments = draw(st.lists(st.builds(
        Experiment, st.text(max_size=10), st.text(max_size=10),
        st.lists(st.builds(Arm, st.sampled_from(ids), st.floats(0.001, 1000).map(lambda f: float(f"{f:.4g}"))),
                 min_size=1, max_size=3).map(tuple)), max_size=2).map(tuple))
    return ModelEntry(versions, channels, rollout, experiments)


manifests = st.builds(Manifest, st.integers(0, 2**40), st.dictionaries(names, model_entries(), max_size=2))


@settings(max_examples=100, deadline=None)
@given(manifests)
def test_round_trip(manifest):
    assert parse_manifest(manifest.to_json()) == manifest


@settings(max_examples=200, deadline=None)
@given(manifests, st.data())
def test_any_corruption_is_a_manifest_error_or_still_valid(manifest, data):
    doc = json.loads(manifest.to_json())
    paths = list(_leaf_paths(doc))
    path = data.draw(st.sampled_from(paths))
    replacement = data.draw(st.none() | st.integers() | st.text(max_size=5) | st.booleans()
                            | st.just([]) | st.just({}) | st.just(-1) | st.just("../x"))
    _set(doc, path, replacement)
    try:
        parsed = parse_manifest(json.dumps(doc).encode())
    except ManifestError:
        return
    assert parse_manifest(parsed.to_json()) == parsed


def _leaf_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaf_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaf_paths(v, prefix + (i,))


def _set(doc, path, value):
    if not path:
        return
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def _valid():
    contract = Contract((TensorSpec("x", "float32", (1, 4)),), (TensorSpec("y", "float32", (1, 4)),))
    v = Version("v1", "models/m/v1.tflite", "a" * 64, 10, contract, "2026-01-01T00:00:00+00:00")
    return json.loads(Manifest(3, {"m": ModelEntry({"v1": v}, {"stable": "v1"})}).to_json())


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema_version=2), "schema_version: expected 1, got 2"),
    (lambda d: d.pop("serial"), "expected field 'serial', it is missing"),
    (lambda d: d.update(extra=1), r"unknown field\(s\) \['extra'\]"),
    (lambda d: d["models"]["m"]["versions"]["v1"].update(sha256="ABC"), "expected 64 lowercase hex digits"),
    (lambda d: d["models"]["m"]["versions"]["v1"].update(sha256="A" * 64), "expected 64 lowercase hex"),
    (lambda d: d["models"]["m"]["versions"]["v1"].update(size=0), "size: expected > 0"),
    (lambda d: d["models"]["m"]["versions"]["v1"].update(size="10"), "size: expected int, got str"),
    (lambda d: d["models"]["m"]["channels"].update(beta="v9"), "expected a listed version"),
    (lambda d: d["models"]["m"].update(rollout={"version": "v1", "percent": 101, "salt": ""}), "0 to 100"),
    (lambda d: d["models"]["m"].update(experiments=[{"name": "e", "salt": "", "arms": []}]), "at least one arm"),
    (lambda d: d["models"]["m"]["versions"]["v1"].pop("contract"), "expected field 'contract'"),
])
def test_strict_parsing(change, message):
    doc = _valid()
    change(doc)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(json.dumps(doc).encode())


@pytest.mark.parametrize("url", ["../evil.tflite", "models/../../x", "/etc/passwd", "http://evil/x.tflite",
                                 "//evil/x", "models/%2e%2e/%2e%2e/x", "models\\..\\x", "", "models//x",
                                 "file:///etc/passwd"])
def test_urls_escaping_the_repository_are_refused(url):
    with pytest.raises(ManifestError, match="expected a relative URL inside the repository"):
        check_relative_url(url)
    doc = _valid()
    doc["models"]["m"]["versions"]["v1"]["url"] = url
    with pytest.raises(ManifestError):
        parse_manifest(json.dumps(doc).encode())


def test_serial_must_not_go_backwards():
    data = json.dumps(_valid()).encode()
    assert parse_manifest(data, min_serial=3).serial == 3
    with pytest.raises(SerialRollbackError, match="expected >= 4 .* got 3"):
        parse_manifest(data, min_serial=4)


def test_not_json():
    with pytest.raises(ManifestError, match="expected JSON"):
        parse_manifest(b"\xff{")


def _entry(**kw):
    contract = Contract((), ())
    versions = {v: Version(v, f"m/{v}", "a" * 64, 1, contract, "t", kw.pop(f"min_{v}", None))
                for v in ("v1", "v2", "v3")}
    return ModelEntry(versions, {"stable": "v1", "beta": "v2"}, kw.get("rollout"), kw.get("experiments", ()))


def test_channel_assignment():
    entry = _entry()
    assert choose_version(entry, "device-1") == "v1"
    assert choose_version(entry, "device-1", "beta") == "v2"
    with pytest.raises(MisuseError, match="channel: expected one of"):
        choose_version(entry, "device-1", "nightly")


def test_staged_rollout_share_and_stickiness():
    devices = [f"dev-{i}" for i in range(4000)]
    ten = _entry(rollout=Rollout("v2", 10, "salt"))
    fifty = _entry(rollout=Rollout("v2", 50, "salt"))
    at_ten = {d for d in devices if choose_version(ten, d) == "v2"}
    at_fifty = {d for d in devices if choose_version(fifty, d) == "v2"}
    assert 300 < len(at_ten) < 500 and 1800 < len(at_fifty) < 2200
    assert at_ten <= at_fifty  # growing a rollout never moves a device back
    assert all(choose_version(ten, d) == ("v2" if d in at_ten else "v1") for d in devices[:200])


def test_ab_arms_are_sticky_and_weighted():
    entry = _entry(experiments=(Experiment("exp", "s", (Arm("v2", 1), Arm("v3", 3))),))
    devices = [f"dev-{i}" for i in range(4000)]
    arms = [choose_version(entry, d) for d in devices]
    assert 800 < arms.count("v2") < 1200 and arms.count("v2") + arms.count("v3") == 4000
    assert arms == [choose_version(entry, d) for d in devices]


def test_min_client_version_is_respected():
    entry = _entry(rollout=Rollout("v2", 100, "s"), min_v2="9.0")
    assert choose_version(entry, "d", client_version="1.0") == "v1"
    assert choose_version(entry, "d", client_version="9.1") == "v2"
    with pytest.raises(DeliveryError, match="supports client version 0.1"):
        choose_version(_entry(min_v1="2.0"), "d", client_version="0.1")


# ------------------------------------------------------- hardening (issue 6: 22)

@pytest.mark.parametrize("data, message", [
    (b"[" * 200_000 + b"]" * 200_000, "nested"),
    (b'{"schema_version": 1, "serial": NaN, "models": {}}', "finite"),
    (b'{"schema_version": 1, "serial": 1e999, "models": {}}', "finite"),
])
def test_hostile_json_is_a_manifest_error(data, message):
    with pytest.raises(ManifestError, match=message):
        parse_manifest(data)


@pytest.mark.parametrize("field, value, message", [
    ("shape", "[1e999]", "finite"),
    ("shape", "[Infinity]", "finite"),
    ("shape", f"[{10**30}]", "expected an integer from"),
    ("shape", "[1.5]", r"shape\[0\]: expected int, got float"),
    ("scales", f"[{10**400}]", "expected an integer from"),
    ("zero_points", "[true]", "expected int, got bool"),
    ("name", "7", "expected str, got int"),
])
def test_contract_numbers_are_checked(field, value, message):
    doc = _valid()
    doc["models"]["m"]["versions"]["v1"]["contract"]["inputs"][0][field] = "@@"
    text = json.dumps(doc).replace('"@@"', value)  # JSON that json.dumps would not write
    with pytest.raises(ManifestError, match=message):
        parse_manifest(text.encode())


@pytest.mark.parametrize("change", [
    lambda d: d["models"].update({"m\n": d["models"].pop("m")}),
    lambda d: d["models"]["m"]["versions"].update({"v1\n": d["models"]["m"]["versions"].pop("v1")}),
    lambda d: d["models"]["m"]["channels"].update({"beta\n": "v1"}),
    lambda d: d["models"]["m"]["versions"]["v1"].update(sha256="a" * 64 + "\n"),
])
def test_names_and_hashes_with_a_trailing_newline_are_refused(change):
    doc = _valid()
    change(doc)
    with pytest.raises(ManifestError, match=r"expected (1-64 of|64 lowercase hex)"):
        parse_manifest(json.dumps(doc).encode())


@pytest.mark.parametrize("serial", [2**63, 10**4000], ids=["2**63", "10**4000"])
def test_serial_is_bounded_to_63_bits(serial):
    doc = _valid()
    doc["serial"] = serial
    with pytest.raises(ManifestError, match=r"manifest.serial: expected an integer from .* to 9223372036854775807"):
        parse_manifest(json.dumps(doc).encode())
    doc["serial"] = 2**63 - 1
    assert parse_manifest(json.dumps(doc).encode()).serial == 2**63 - 1


def test_overlong_min_client_version_is_refused():
    doc = _valid()
    doc["models"]["m"]["versions"]["v1"]["min_client_version"] = "9" * 5000
    with pytest.raises(ManifestError, match="min_client_version: expected a version like"):
        parse_manifest(json.dumps(doc).encode())
