"""protocols/ckks.md §2: routing policy and plan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from securefed.ckks import RoutingPolicy, plan_routes
from securefed.configio import ConfigError, from_dict, to_dict

# a tiny Llama-style layer list: norms (768) go to CKKS, matrices to secagg
SHAPES = [
    ("model.embed_tokens.weight", (1000, 64)),
    ("model.layers.0.input_layernorm.weight", (64,)),
    ("model.layers.0.self_attn.q_proj.weight", (128, 64)),
    ("model.layers.0.post_attention_layernorm.weight", (64,)),
    ("model.layers.0.mlp.up_proj.weight", (256, 64)),
    ("model.norm.weight", (64,)),
    ("lm_head.weight", (1000, 64)),
]


def test_default_policy_routes_nothing_to_ckks():
    plan = plan_routes(SHAPES, RoutingPolicy())
    assert plan.ckks_size == 0 and plan.n_ciphertexts == 0
    assert plan.ranges("secagg") == ((0, plan.total_size),)  # one contiguous range


def test_threshold_routes_small_tensors_and_ranges_are_exact():
    plan = plan_routes(SHAPES, RoutingPolicy(enabled=True))
    ckks = [e.name for e in plan.entries if e.route == "ckks"]
    assert ckks == [SHAPES[1][0], SHAPES[3][0], SHAPES[5][0]]
    assert plan.ckks_size == 3 * 64 and plan.n_ciphertexts == 1
    # offsets: embed 64000, norm 64000..64064, q_proj (8192) 64064..72256, norm 72256..72320
    assert plan.ranges("ckks")[:2] == ((64000, 64064), (72256, 72320))


def test_include_exclude_globs():
    pol = RoutingPolicy(enabled=True, max_elements=0, include=("*norm*",), exclude=("model.norm.weight",))
    plan = plan_routes(SHAPES, pol)
    assert [e.name for e in plan.entries if e.route == "ckks"] == [SHAPES[1][0], SHAPES[3][0]]
    pol = RoutingPolicy(enabled=True, include=("lm_head.*",))  # forces a big tensor in
    assert plan_routes(SHAPES, pol).entries[-1].route == "ckks"


def test_packing_uses_ceil_of_slots_and_tensors_straddle():
    shapes = [(f"n{i}", (3000,)) for i in range(3)]  # 9000 values, 4096 slots -> 3 ciphertexts
    plan = plan_routes(shapes, RoutingPolicy(enabled=True))
    assert plan.n_ciphertexts == 3
    assert plan.to_json()["tensors"][1]["ciphertexts"] == [0, 1]  # 3000..5999 spans ct 0 and 1


def test_split_merge_roundtrip():
    plan = plan_routes(SHAPES, RoutingPolicy(enabled=True))
    flat = np.arange(plan.total_size, dtype=np.float64)
    ck, sa = plan.split(flat)
    assert ck.shape == (plan.ckks_size,) and sa.shape == (plan.secagg_size,)
    assert ck[0] == 64000 and sa[0] == 0
    np.testing.assert_array_equal(plan.merge(ck, sa), flat)
    ci, si = plan.index_arrays()
    np.testing.assert_array_equal(flat[ci], ck) and np.testing.assert_array_equal(flat[si], sa)
    with pytest.raises(ValueError, match="flat"):
        plan.split(flat[:-1])


def test_renderings_for_run_directory():
    plan = plan_routes(SHAPES, RoutingPolicy(enabled=True))
    text = plan.to_text()
    assert "model.norm.weight" in text and "ckks: 192 values in 1 ciphertext(s)" in text
    data = json.loads(plan.dumps_json())
    assert data["ckks_size"] == 192 and len(data["tensors"]) == len(SHAPES)


def test_policy_loads_from_config_and_round_trips():
    pol = from_dict(RoutingPolicy, {"enabled": True, "include": ["*.bias"], "poly_modulus_degree": 16384})
    assert pol.include == ("*.bias",) and pol.slots == 8192
    assert from_dict(RoutingPolicy, to_dict(pol)) == pol
    with pytest.raises(ConfigError, match="poly_modulus_degree"):
        from_dict(RoutingPolicy, {"poly_modulus_degree": 4096})
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(RoutingPolicy, {"max_elemnts": 3})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"coeff_mod_bit_sizes": (60, 60, 60, 60)}, "128-bit limit"),  # 240 > 218 at N=8192
        ({"coeff_mod_bit_sizes": (60,)}, ">= 2 primes"),
        ({"scale_bits": 119}, "scale_bits"),
        ({"rotate_key_every_rounds": 0}, "rotate_key_every_rounds"),
        ({"max_elements": -1}, "max_elements"),
        ({"min_survivors": 0}, "min_survivors"),
        ({"decrypt_flood_bits": 81}, "decrypt_flood_bits"),
    ],
)
def test_policy_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoutingPolicy(**kwargs)


def test_policy_allows_larger_chain_at_16384():
    assert RoutingPolicy(poly_modulus_degree=16384, coeff_mod_bit_sizes=(60,) * 7).data_bits == 360  # 420 <= 438


def test_plan_rejects_duplicate_names_and_bad_shapes():
    with pytest.raises(ValueError, match="duplicate"):
        plan_routes([("a", (1,)), ("a", (2,))], RoutingPolicy())
    with pytest.raises(ValueError, match="shape"):
        plan_routes([("a", (-1,))], RoutingPolicy())
    with pytest.raises(TypeError, match="policy"):
        plan_routes([("a", (1,))], {"enabled": True})


def test_runtime_contract_of_the_driver():
    """The exact API the runtime calls (issue 6): names, keyword-only arguments, outcome fields."""
    import dataclasses
    import inspect

    import securefed.ckks as ck

    params = inspect.signature(ck.run_ckks_round).parameters
    assert list(params)[:7] == ["inputs", "policy", "round_index", "keyring", "entropy_for", "tamper", "server"]
    assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in list(params)[1:])
    assert params["tamper"].default is None and params["server"].default is None
    assert [f.name for f in dataclasses.fields(ck.CkksOutcome)] == ["total", "survivors", "rejected", "bytes_up", "bytes_down"]
    assert ck.CkksOutcome.__dataclass_params__.frozen


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    dims=st.lists(st.lists(st.integers(0, 70), min_size=0, max_size=3), min_size=1, max_size=12),
    max_elements=st.integers(0, 300),
    include_first=st.booleans(),
)
def test_plan_partitions_the_flat_vector(dims, max_elements, include_first):
    shapes = [(f"t{i}.{'norm' if i % 3 == 0 else 'w'}", tuple(d)) for i, d in enumerate(dims)]
    pol = RoutingPolicy(enabled=True, max_elements=max_elements, include=("t0.*",) if include_first else (),
                        exclude=("*.w",) if not include_first else ())
    plan = plan_routes(shapes, pol)
    ck, sa = plan.index_arrays()
    # the two index sets partition [0, total) and follow the policy rule tensor by tensor
    assert sorted(np.concatenate([ck, sa]).tolist()) == list(range(plan.total_size))
    for e in plan.entries:
        assert (e.route == "ckks") == pol.routes_to_ckks(e.name, e.numel)
    assert plan.n_ciphertexts == -(-plan.ckks_size // pol.slots)
    flat = np.arange(plan.total_size, dtype=np.float64)
    np.testing.assert_array_equal(plan.merge(*plan.split(flat)), flat)
