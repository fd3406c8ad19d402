import pytest

from securefed.primitives.kdf import derive_key, encode_info, hkdf_sha256, lp, u32


def test_rfc5869_vectors(published):
    for v in published["hkdf_sha256"]:
        okm = hkdf_sha256(bytes.fromhex(v["ikm"]), salt=bytes.fromhex(v["salt"]), info=bytes.fromhex(v["info"]), length=v["length"])
        assert okm.hex() == v["okm"], v["case"]


def test_info_is_injective_across_field_boundaries():
    # lp() prefixes make ("ab","c") and ("a","bc") different infos
    a = encode_info("securefed/secagg/v1", "x", 0, b"ab", b"c")
    b = encode_info("securefed/secagg/v1", "x", 0, b"a", b"bc")
    assert a != b
    assert encode_info("L", "x", 1) != encode_info("L", "x", 2)
    assert encode_info("L", "x", 1) != encode_info("L", "y", 1)


def test_derive_key_domain_separation():
    salt = b"s" * 32
    k1 = derive_key(b"ikm", salt=salt, label="L", purpose="self-mask", round_index=0, fields=(u32(1),))
    k2 = derive_key(b"ikm", salt=salt, label="L", purpose="pairwise-mask", round_index=0, fields=(u32(1),))
    k3 = derive_key(b"ikm", salt=b"t" * 32, label="L", purpose="self-mask", round_index=0, fields=(u32(1),))
    assert len({k1, k2, k3}) == 3 and all(len(k) == 32 for k in (k1, k2, k3))


def test_bad_arguments():
    with pytest.raises(TypeError, match="ikm"):
        hkdf_sha256("str", salt=None, info=b"")
    with pytest.raises(ValueError, match="length"):
        hkdf_sha256(b"x", salt=None, info=b"", length=0)
    with pytest.raises(ValueError, match="salt"):
        derive_key(b"x", salt=b"short", label="L", purpose="p", round_index=0)
    with pytest.raises(ValueError, match="NUL"):
        encode_info("L", "a\x00b", 0)
    with pytest.raises(ValueError):
        u32(1 << 32)
    with pytest.raises(TypeError):
        lp("not bytes")
