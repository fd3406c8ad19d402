"""The federation codec under hostile input (protocols/federation.md §3).

Every message type round-trips byte for byte; every malformed form — wrong magic, version or type,
truncation, trailing garbage, a body that is not JSON or not an object, unknown or missing fields,
wrong types, out-of-range numbers, bad base64, NaN/Infinity (also as 1e999), duplicate keys, deep
nesting, oversized frames — raises ``MessageError`` and nothing else; and hypothesis feeds ``decode``
random bytes, random JSON bodies and single-field mutations of valid bodies, accepting only
``MessageError`` or a message that re-encodes to itself.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import types
from typing import Literal, Union, get_args, get_origin, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefed.ckks import RoutingPolicy
from securefed.federation import messages as m
from securefed.federation.messages import MAGIC, MAX_MESSAGE, VERSION, MessageError, MsgType, decode, decode_as, encode
from securefed.privacy import DPConfig, PrivacySession
from securefed.privacy.remote import RoundSpec, round_spec
from securefed.secagg import SecAggConfig
from securefed.training.trainer import TrainConfig


def _spec(mode: str = "distributed", r: int = 3, cohort=(1, 2, 4, 7)) -> RoundSpec:
    """A real plan, as the coordinator makes it (dp.md §6.2)."""
    import tempfile

    cfg = {"none": DPConfig(), "central": DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0),
           "distributed": DPConfig(mode="distributed", mechanism="ddgauss", noise_multiplier=1.0)}[mode]
    with tempfile.TemporaryDirectory() as d:
        s = PrivacySession(cfg, population=20, cohort_size=4, rounds_planned=5, sampling="fixed", ledger_dir=d)
        return round_spec(s.begin_round(r, cohort=list(cohort), dim=64))


SPEC = _spec()
WELCOME = m.Welcome(
    run_id=bytes(range(16)), holder_id=7, rounds=5, next_round=1, model_preset="tiny", vocab_size=512, seq_len=32,
    dim=64, tokenizer_sha256="ab" * 32, init_sha256="cd" * 32, seed=0, aggregation="secagg", secagg=SecAggConfig(),
    ckks=None, privacy_mode="distributed", sampling="fixed", train=TrainConfig(), local_steps=2, batch_size=4,
    total_steps=4)

EXAMPLES = {
    "Hello": m.Hello(7, "securefed 0.1"),
    "Welcome": WELCOME,
    "Welcome-ckks": dataclasses.replace(WELCOME, aggregation="ckks+secagg", ckks=RoutingPolicy(enabled=True),
                                        privacy_mode="central"),
    "Offer": m.Offer(3, (1, 2, 4, 7), "ef" * 32, SPEC),
    "Offer-none": m.Offer(3, (1, 2, 4, 7), "ef" * 32, _spec("none")),
    "Decision": m.Decision(3, 7, False, "joining would take this holder to epsilon 9.1"),
    "Plan": m.Plan(3, SPEC, weight=0.5),
    "Ready": m.Ready(3, 7, 256, 4.25, None, 1.5),
    "Ready-nulls": m.Ready(3, 7, 0, None, True),
    "CkksRotate": m.CkksRotate(3, 2, (1, 2, 4)),
    "CkksAdverts": m.CkksAdverts(3, 2, (b"advert-1", b"", bytes(range(256)))),
    "CkksKeys": m.CkksKeys(3, 2, b"public context", (b"share-2", b"share-4")),
    "CkksShare": m.CkksShare(3, 2, b"sealed", b"leader advert"),
    "CkksUploadRequest": m.CkksUploadRequest(3, 2, "key-id", (1, 2, 4)),
}


def _frame(code: int, body: bytes | str, version: int = VERSION) -> bytes:
    return MAGIC + bytes([version, code]) + (body.encode() if isinstance(body, str) else body)


def _body(msg) -> dict:
    return json.loads(encode(msg)[6:])


def _code(msg) -> int:
    return encode(msg)[5]


def _with(msg, **fields) -> bytes:
    """``msg``'s frame with some body fields replaced by raw JSON values (None: the field removed)."""
    b = _body(msg)
    for k, v in fields.items():
        if v is _DROP:
            b.pop(k)
        else:
            b[k] = v
    return _frame(_code(msg), json.dumps(b, allow_nan=True))


_DROP = object()


def _refused(data, match: str | None = None) -> MessageError:
    with pytest.raises(MessageError, match=match) as e:
        decode(data)
    return e.value


# ---------------------------------------------------------------- valid messages
def test_every_message_type_has_an_example():
    assert {type(x) for x in EXAMPLES.values()} == set(m._TYPES.values())
    assert {_code(x) for x in EXAMPLES.values()} == {int(t) for t in MsgType}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_round_trip_is_exact_and_canonical(name):
    msg = EXAMPLES[name]
    data = encode(msg)
    assert data[:4] == MAGIC and data[4] == VERSION and data[5] == m._CODES[type(msg)]
    assert decode(data) == msg and decode_as(data, type(msg)) == msg
    assert encode(decode(data)) == data                                  # canonical: one encoding per message
    body = data[6:].decode()
    assert body == json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
    other = m.Hello if type(msg) is not m.Hello else m.Decision
    with pytest.raises(MessageError, match=f"expected {other.__name__}"):
        decode_as(data, other)


def test_encode_refuses_what_is_not_a_message_or_not_finite():
    with pytest.raises(TypeError):
        encode({"holder_id": 1})
    with pytest.raises(MessageError):
        m.Ready(3, 7, 1, float("nan"), None)
    with pytest.raises(MessageError, match="exceeds"):   # 48 MiB of bytes is 64 MiB of base64, over the limit
        encode(m.CkksKeys(3, 2, bytes(48 << 20), ()))


# ---------------------------------------------------------------- the frame
VALID = encode(EXAMPLES["Offer"])


@pytest.mark.parametrize("data", [
    b"", b"SFFM", b"SFFM\x01", b"XFFM" + VALID[4:], b"sffm" + VALID[4:], b"\x00" * 64,
    VALID[:4] + b"\x00" + VALID[5:], VALID[:4] + bytes([VERSION + 1]) + VALID[5:], VALID[:4] + b"\xff" + VALID[5:],
    VALID[:4] + bytes([VERSION - 1]) + VALID[5:],
    VALID[:5] + b"\x00" + VALID[6:], VALID[:5] + b"\x0c" + VALID[6:], VALID[:5] + b"\xff" + VALID[6:],
], ids=["empty", "magic-only", "no-type", "wrong-magic", "lowercase-magic", "zeros", "version-0", "version-next",
        "version-255", "version-previous (stage numbers before issue 13)", "type-0", "type-12", "type-255"])
def test_wrong_magic_version_or_type(data):
    _refused(data)


@pytest.mark.parametrize("bad", ["a string", None, 17, ["list"]])
def test_decode_takes_bytes_only(bad):
    _refused(bad, "must be bytes")


def test_bytearray_and_memoryview_are_bytes():
    assert decode(bytearray(VALID)) == decode(memoryview(VALID)) == EXAMPLES["Offer"]


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_every_truncation_is_refused(name):
    data = encode(EXAMPLES[name])
    for cut in range(len(data)):
        _refused(data[:cut])


@pytest.mark.parametrize("tail", [b"x", b"{}", b"\x00", b"]", b'{"round":1}', VALID])
def test_trailing_garbage(tail):
    _refused(VALID + tail)


def test_another_messages_body_under_this_type_is_refused():
    # a Decision's body sent with the Offer type code: fields unknown/missing, not reinterpreted
    _refused(_frame(MsgType.OFFER, encode(EXAMPLES["Decision"])[6:]), "unknown or missing")


def test_oversized_frames_are_refused_before_parsing():
    _refused(_frame(MsgType.HELLO, b" " * (MAX_MESSAGE - 5)), "exceeds")
    _refused(b"\x00" * (MAX_MESSAGE + 1), "exceeds")


# ---------------------------------------------------------------- the body
@pytest.mark.parametrize("body", [
    b"not json", b"{", b"{'holder_id': 1}", b'{"holder_id": 1,}', b"\xff\xfe", b'{"holder_id": 1, "software": "\xff"}',
    b"\xef\xbb\xbf{}", b"",
], ids=["text", "open-brace", "single-quotes", "trailing-comma", "bad-utf8", "bad-utf8-in-string", "bom", "empty"])
def test_body_that_is_not_json(body):
    _refused(_frame(MsgType.HELLO, body))


@pytest.mark.parametrize("body", ["[]", '["holder_id", 1]', '"text"', "1", "1.5", "null", "true"])
def test_body_that_is_not_an_object(body):
    _refused(_frame(MsgType.HELLO, body), "JSON object")


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_unknown_field(name):
    msg = EXAMPLES[name]
    _refused(_with(msg, extra=1), "unknown or missing")
    _refused(_with(msg, **{"Round": 3}), "unknown or missing")         # keys are case-sensitive


def _required(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]


@pytest.mark.parametrize("name, field", [(n, f) for n, x in EXAMPLES.items() for f in _required(type(x))])
def test_missing_field(name, field):
    _refused(_with(EXAMPLES[name], **{field: _DROP}), "unknown or missing")


def test_optional_fields_may_be_left_out():
    assert decode(_frame(MsgType.HELLO, '{"holder_id":7}')) == m.Hello(7)
    plan = _body(EXAMPLES["Plan"])
    del plan["weight"]
    assert decode(_frame(MsgType.PLAN, json.dumps(plan))).weight == 1.0


def test_duplicate_keys_are_refused():
    # canonical JSON has none; two parsers keeping different copies would read different messages
    _refused(_frame(MsgType.HELLO, '{"holder_id":7,"holder_id":8}'), "duplicate")
    b = json.dumps(_body(EXAMPLES["Offer"]))
    _refused(_frame(MsgType.OFFER, b.replace('"clip":', '"clip": 5.0, "clip":', 1)), "duplicate")


# wrong JSON types for each kind of field; a field's own type is never in its list
def _wrong_values(tp) -> list:
    origin = get_origin(tp)
    optional = origin in (Union, types.UnionType) and type(None) in get_args(tp)
    if origin in (Union, types.UnionType):
        tp = [a for a in get_args(tp) if a is not type(None)][0]
        origin = get_origin(tp)
    out = [True, "x", [], {}, 1.5]
    if tp is int:
        out = [True, False, 1.5, "3", [], {}, [3]]
    elif tp is float:
        out = [True, "0.5", [], {}, [0.5]]
    elif tp is bool:
        out = [0, 1, "true", [], {}]
    elif tp is str:
        out = [1, True, [], {}, ["x"], "x" * (m.MAX_TEXT + 1)]
    elif tp is bytes:
        out = [1, True, [], {}, [1, 2]]
    elif origin is tuple:
        out = [1, "x", {}, True, [None], ["x"], [1.5], [[1]]]
    elif origin is Literal:
        out = ["other", 1, True, [], {}, [get_args(tp)[0]], get_args(tp)[0].upper() + "X"]
    elif tp in (SecAggConfig, RoutingPolicy, TrainConfig, RoundSpec):
        out = [1, "x", True, [], [{}], {"no_such_setting": 1}]
    return out if optional else out + [None]


@pytest.mark.parametrize("name, field", [(n, f.name) for n, x in EXAMPLES.items() for f in dataclasses.fields(type(x))
                                         if n not in ("Offer-none", "Ready-nulls")])
def test_wrong_types(name, field):
    msg = EXAMPLES[name]
    tp = get_type_hints(type(msg))[field]
    for bad in _wrong_values(tp):
        _refused(_with(msg, **{field: bad}))


@pytest.mark.parametrize("name, fields", [
    ("Hello", {"holder_id": 0}), ("Hello", {"holder_id": -1}), ("Hello", {"holder_id": 2**31}),
    ("Welcome", {"run_id": base64.b64encode(bytes(15)).decode()}), ("Welcome", {"holder_id": 0}),
    ("Welcome", {"rounds": 0}), ("Welcome", {"next_round": 0}), ("Welcome", {"vocab_size": 1}),
    ("Welcome", {"seq_len": 1}), ("Welcome", {"dim": 0}), ("Welcome", {"local_steps": 0}),
    ("Welcome", {"batch_size": 0}), ("Welcome", {"total_steps": 2**62}), ("Welcome", {"seed": -1}),
    ("Welcome", {"tokenizer_sha256": "AB" * 32}), ("Welcome", {"init_sha256": "cd" * 31}),
    ("Welcome", {"tokenizer_sha256": "g" * 64}), ("Welcome", {"aggregation": "ckks+secagg"}),
    ("Welcome-ckks", {"ckks": None}), ("Welcome", {"secagg": {"ring_bits": 8}}),
    ("Welcome", {"secagg": {"threshold_fraction": 0.4}}), ("Welcome", {"train": {"lr": -1.0}}),
    ("Welcome", {"train": {"local_steps": 0}}), ("Welcome-ckks", {"ckks": {"poly_modulus_degree": 4096}}),
    ("Offer", {"round": 0}), ("Offer", {"round": 2**31}), ("Offer", {"cohort": [7, 4, 2, 1]}),
    ("Offer", {"cohort": [1, 2, 2, 4, 7]}), ("Offer", {"cohort": [0, 1, 2, 4, 7]}), ("Offer", {"cohort": [1, 2, 4]}),
    ("Offer", {"round": 4}), ("Offer", {"model_sha256": "ef" * 33}),
    ("Decision", {"round": -3}), ("Decision", {"holder_id": 2**40}), ("Decision", {"reason": "x" * 1025}),
    ("Plan", {"round": 4}), ("Plan", {"weight": 0}), ("Plan", {"weight": 1.0000001}), ("Plan", {"weight": -0.5}),
    ("Ready", {"tokens": -1}), ("Ready", {"tokens": 2**53}), ("Ready", {"round": 0}),
    ("CkksRotate", {"generation": 0}), ("CkksRotate", {"key_holders": [2, 1]}), ("CkksRotate", {"round": 0}),
    ("CkksAdverts", {"round": -5}), ("CkksAdverts", {"generation": 0}), ("CkksKeys", {"round": 0}),
    ("CkksKeys", {"generation": 2**40}), ("CkksShare", {"round": 2**31}), ("CkksShare", {"generation": -1}),
    ("CkksUploadRequest", {"generation": 0}), ("CkksUploadRequest", {"key_id": ""}),
    ("CkksUploadRequest", {"key_id": "k" * 129}), ("CkksUploadRequest", {"cohort": [3, 3]}),
])
def test_out_of_range_values(name, fields):
    msg = EXAMPLES[name]
    b = _body(msg)
    for k, v in fields.items():
        b[k] = {**b[k], **v} if isinstance(v, dict) and isinstance(b.get(k), dict) else v
    _refused(_frame(_code(msg), json.dumps(b)))


@pytest.mark.parametrize("key, bad", [
    ("round", 9), ("participants", [1, 2, 4]), ("participants", []), ("mode", "weird"), ("mechanism", "gaussian"),
    ("clip", 0.0), ("clip", -1.0), ("scale", 0), ("ring_bits", 0), ("ring_bits", 65), ("delta", 1.5),
    ("n_shares", 0), ("version", 2), ("version", True), ("seed", "XYZ"), ("seed", ""), ("seed", [1, 2]),
    ("noise_multiplier", 0.0), ("dim", 0), ("dim", 2**41), ("sampling", "uniform"), ("extra", 1),
])
def test_round_spec_inside_an_offer_is_validated(key, bad):
    b = _body(EXAMPLES["Offer"])
    b["spec"][key] = bad
    _refused(_frame(MsgType.OFFER, json.dumps(b)))


def test_round_spec_seed_must_be_text_in_every_mode():
    b = _body(EXAMPLES["Offer-none"])
    b["spec"]["seed"] = [[1], {"x": 2}]     # unused in mode none, but still not a string
    _refused(_frame(MsgType.OFFER, json.dumps(b)), "seed")


@pytest.mark.parametrize("value", ["!!!!", "AAA", "AA=A", "A===", "AAAA AAAA", "AAAA\\n", "é", "\\ud800", "-_-_"])
def test_bad_base64(value):
    body = json.dumps(_body(EXAMPLES["CkksShare"])).replace('"c2VhbGVk"', '"' + value + '"')
    assert value in body or "\\ud800" in value
    _refused(_frame(MsgType.CKKS_SHARE, body), "base64")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400"])
@pytest.mark.parametrize("where", ["Ready.loss", "Plan.weight", "Offer.spec.clip", "Welcome.train.lr",
                                   "Welcome.train.beta1", "Welcome.secagg.threshold_fraction"])
def test_nan_and_infinity_never_decode(where, literal):
    name, *path = where.split(".")
    b = _body(EXAMPLES[name])
    target = b
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = "@@"
    _refused(_frame(_code(EXAMPLES[name]), json.dumps(b).replace('"@@"', literal)))


@pytest.mark.parametrize("digits", [20, 400, 5000])
def test_integers_beyond_64_bits_are_refused(digits):
    # 5000 digits: Python's int() raises ValueError (4300-digit limit) — it must come out as MessageError
    _refused(_frame(MsgType.HELLO, '{"holder_id":' + "9" * digits + "}"))
    b = json.dumps(_body(WELCOME)).replace('"chunk_elements": 1048576', '"chunk_elements": ' + "9" * digits)
    assert "9" * digits in b
    _refused(_frame(MsgType.WELCOME, b))


@pytest.mark.parametrize("depth", [50, 900, 5000, 200_000])
def test_deep_nesting_never_escapes_as_recursion_error(depth):
    for open_, close in (("[", "]"), ('{"a":', "}")):
        deep = open_ * depth + "1" + close * depth
        _refused(_frame(MsgType.HELLO, deep))
        _refused(_frame(MsgType.HELLO, '{"holder_id":7,"software":' + deep + "}"))
        for name, field in (("Welcome", "secagg"), ("Welcome", "aggregation"), ("Offer", "spec"), ("Offer", "cohort")):
            b = json.dumps(_body(EXAMPLES[name]) | {field: "@@"})
            _refused(_frame(_code(EXAMPLES[name]), b.replace('"@@"', deep)))


def test_deep_nesting_with_a_deep_caller_stack():
    """The same nested bodies decoded from 700 frames down (a handler thread deep in a call chain)."""
    def at(k, f):
        return f() if k == 0 else at(k - 1, f)

    for depth in (100, 250, 290):
        deep = "[" * depth + "]" * depth
        b = json.dumps(_body(EXAMPLES["Offer"]) | {"cohort": "@@"}).replace('"@@"', deep)
        at(700, lambda: _refused(_frame(MsgType.OFFER, b)))


# ---------------------------------------------------------------- hypothesis
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=20)
FIELD_NAMES = sorted({f.name for x in EXAMPLES.values() for f in dataclasses.fields(type(x))})


def _decode_or_refuse(data) -> None:
    """The property: MessageError, or a valid message that re-encodes to the same message."""
    try:
        msg = decode(data)
    except MessageError:
        return
    assert type(msg) in m._CODES
    assert decode(encode(msg)) == msg


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes(data):
    _decode_or_refuse(data)


@SETTINGS
@given(st.sampled_from(range(256)), st.sampled_from([0, 1, 2, 255]), st.binary(max_size=300))
def test_random_bytes_behind_a_valid_magic(code, version, body):
    _decode_or_refuse(MAGIC + bytes([version, code]) + body)


@SETTINGS
@given(st.sampled_from([int(t) for t in MsgType]),
       st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), JSON, max_size=8) | JSON)
def test_random_json_bodies(code, body):
    _decode_or_refuse(_frame(code, json.dumps(body, allow_nan=True)))


@SETTINGS
@given(st.sampled_from(list(EXAMPLES)), st.data())
def test_one_field_of_a_valid_body_replaced_by_random_json(name, data):
    msg = EXAMPLES[name]
    b = _body(msg)
    field = data.draw(st.sampled_from(sorted(b)))
    b[field] = data.draw(JSON)
    _decode_or_refuse(_frame(_code(msg), json.dumps(b, allow_nan=True)))


@SETTINGS
@given(st.sampled_from(list(EXAMPLES)), st.data())
def test_one_byte_of_a_valid_frame_changed(name, data):
    raw = bytearray(encode(EXAMPLES[name]))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    _decode_or_refuse(bytes(raw))


@SETTINGS
@given(st.sampled_from(["Welcome", "Welcome-ckks", "Offer", "Plan"]), st.data())
def test_one_nested_setting_replaced_by_random_json(name, data):
    msg = EXAMPLES[name]
    b = _body(msg)
    nested = [k for k, v in b.items() if isinstance(v, dict)]
    k = data.draw(st.sampled_from(nested))
    key = data.draw(st.sampled_from(sorted(b[k])) | st.text(max_size=8))
    b[k][key] = data.draw(JSON)
    _decode_or_refuse(_frame(_code(msg), json.dumps(b, allow_nan=True)))
