import pytest

from securefed.primitives.aead import DecryptionFailed, associated_data, open_, seal

SID = b"s" * 32


def ad(**kw):
    base = dict(session_id=SID, round_index=1, sender=2, receiver=3)
    base.update(kw)
    return associated_data("securefed/secagg/v1", **base)


def test_round_trip():
    ct = seal(b"k" * 32, b"hello", ad())
    assert open_(b"k" * 32, ct, ad()) == b"hello"
    assert len(ct) == 5 + 16


@pytest.mark.parametrize("change", [dict(sender=3, receiver=2), dict(round_index=2), dict(session_id=b"t" * 32), dict(receiver=4)])
def test_binding_to_sender_receiver_round_session(change):
    ct = seal(b"k" * 32, b"share", ad())
    with pytest.raises(DecryptionFailed) as e:
        open_(b"k" * 32, ct, ad(**change))
    assert str(e.value) == "decryption failed"  # one opaque error


def test_tamper_and_wrong_key_are_the_same_error():
    ct = bytearray(seal(b"k" * 32, b"share", ad()))
    ct[0] ^= 1
    for key, c in ((b"k" * 32, bytes(ct)), (b"j" * 32, bytes(seal(b"k" * 32, b"share", ad()))), (b"k" * 32, b"short")):
        with pytest.raises(DecryptionFailed, match="^decryption failed$"):
            open_(key, c, ad())


def test_bad_arguments():
    with pytest.raises(ValueError, match="32 bytes"):
        seal(b"k" * 16, b"x", b"")
    with pytest.raises(ValueError, match="session_id"):
        associated_data("L", session_id=b"x", round_index=0, sender=1, receiver=2)
    with pytest.raises(TypeError):
        seal(b"k" * 32, "str", b"")
