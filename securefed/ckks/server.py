"""Server (aggregator) role: public context only, relay, validate, sum (protocols/ckks.md §3.3, §5.2).

This object never receives the secret key in an honest run: the only context it deserialises comes
through :func:`keys.load_public_context`, which refuses private contexts. For audits and tests it
keeps the latest contexts it accepted (``contexts``); a refused context is dropped at once. Key
adverts and sealed key shares pass through :meth:`relay` unchanged.
"""

from __future__ import annotations

from collections import deque
from typing import Mapping

import tenseal as ts

from securefed.ckks import keys
from securefed.ckks.holder import check_ciphertext, chunk_lengths, expected_leader, pubctx_statement, upload_statement
from securefed.ckks.keyshare import HolderPublic, verify
from securefed.ckks.messages import AggregateMsg, KeyAdvertMsg, KeyShareMsg, MessageError, PublicContextMsg, UploadMsg, decode, encode
from securefed.ckks.routing import RoutingPolicy

__all__ = ["UploadRejected", "CkksServer"]


class UploadRejected(ValueError):
    """A holder's upload failed validation; the holder is treated as dropped for this round."""


class CkksServer:
    def __init__(self, policy: RoutingPolicy, roster: Mapping[int, HolderPublic]) -> None:
        if not isinstance(policy, RoutingPolicy):
            raise TypeError("policy must be a RoutingPolicy")
        if not all(isinstance(p, HolderPublic) and p.holder_id == i for i, p in roster.items()):
            raise TypeError("roster must map holder id -> HolderPublic with the same id")
        self.policy, self.roster = policy, dict(roster)
        # the contexts accepted (public only), the latest 16 kept for audits; older ones are dropped
        self.contexts: deque[ts.Context] = deque(maxlen=16)
        self._ctx: ts.Context | None = None
        self.generation, self.key_id, self.key_holders = 0, None, frozenset()
        self.relayed_bytes = 0
        self._round: int | None = None

    # §3.3: the public context of a new key generation, from the leader the server computes
    def receive_public_context(self, data: bytes, *, key_holders: frozenset[int]) -> None:
        try:
            msg = decode(data)
        except MessageError as e:
            raise ValueError(f"public context message: {e}") from None
        if not isinstance(msg, PublicContextMsg):
            raise ValueError("public context message: wrong message kind")
        if not key_holders <= self.roster.keys():
            raise ValueError("key_holders: not all in the roster")
        if msg.generation <= self.generation:
            raise ValueError(f"public context: generation {msg.generation} is not newer than {self.generation}")
        if msg.leader != expected_leader(key_holders, msg.generation):
            raise ValueError(f"public context: sent by holder {msg.leader}, who is not this generation's leader")
        key_id = keys.key_id_of(msg.context)
        if not verify(self.roster[msg.leader], msg.signature, pubctx_statement(msg.generation, msg.round_index, msg.leader, key_id)):
            raise ValueError("public context: failed authentication")
        ctx = keys.load_public_context(msg.context, self.policy)  # refuses secret keys and bad parameters
        self.contexts.append(ctx)
        self._ctx, self.generation, self.key_id, self.key_holders = ctx, msg.generation, key_id, key_holders

    def relay(self, data: bytes) -> bytes:
        """Forward a key advert or a sealed key share unchanged (the server cannot open a share);
        checks kind and addressing only."""
        msg = decode(data)
        if isinstance(msg, KeyShareMsg):
            if msg.receiver not in self.roster or msg.sender not in self.roster:
                raise ValueError("relay: sender or receiver not in the roster")
        elif isinstance(msg, KeyAdvertMsg):
            if msg.holder not in self.roster:
                raise ValueError("relay: advert from a holder not in the roster")
        else:
            raise ValueError("relay: not a key advert or key share")
        self.relayed_bytes += len(data)
        return data

    # §5.2
    def begin_round(self, round_index: int, cohort: frozenset[int], length: int) -> None:
        if self._ctx is None:
            raise ValueError("begin_round: no public context for this key generation")
        if not cohort or not cohort <= self.key_holders:
            raise ValueError("cohort: must be non-empty and hold the current key")
        if length <= 0:
            raise ValueError("length must be > 0")
        self._round, self._cohort, self._length = round_index, cohort, length
        self._sum: list[ts.CKKSVector] | None = None
        self.survivors: set[int] = set()
        self._uploads: dict[int, bytes] = {}
        self.rejections: dict[int, str] = {}

    def receive_upload(self, holder: int, data: bytes) -> None:
        """Validate and add one holder's upload, or raise :class:`UploadRejected` (holder dropped)."""
        if self._round is None or self._ctx is None:
            raise ValueError("receive_upload: no round in progress")
        try:
            self._accept(holder, data)
        except (ValueError, TypeError) as e:
            reason = f"holder {holder}: {e}"
            self.rejections[holder] = reason
            raise UploadRejected(reason) from None

    def _accept(self, holder: int, data: bytes) -> None:
        if holder not in self._cohort:
            raise ValueError("not in this round's cohort")
        if holder in self.survivors or holder in self.rejections:
            raise ValueError("second upload this round")
        msg = decode(data)
        if not isinstance(msg, UploadMsg) or msg.holder != holder:
            raise ValueError("not an upload from this holder")
        statement = upload_statement(msg.round_index, msg.generation, holder, msg.key_id, msg.ciphertexts, self._cohort)
        if not verify(self.roster[holder], msg.signature, statement):
            raise ValueError("upload failed authentication")
        if msg.round_index != self._round:
            raise ValueError(f"upload for round {msg.round_index}, expected {self._round}")
        if msg.generation != self.generation or msg.key_id != self.key_id:
            raise ValueError("ciphertexts under another key (generation/key id mismatch)")
        lens = chunk_lengths(self._length, self.policy.slots)
        if len(msg.ciphertexts) != len(lens):
            raise ValueError(f"{len(msg.ciphertexts)} ciphertexts, expected {len(lens)}")
        vecs = [check_ciphertext(b, self._ctx, self.policy, n, f"ciphertext[{i}]")
                for i, (b, n) in enumerate(zip(msg.ciphertexts, lens))]
        if self._sum is None:
            self._sum = vecs
        else:
            for acc, v in zip(self._sum, vecs):
                acc.add_(v)  # slot-wise sum, no rescale, no key switching
        self.survivors.add(holder)
        self._uploads[holder] = data

    def aggregate(self) -> bytes:
        """The encoded :class:`AggregateMsg` of the survivors' sum."""
        if self._sum is None:
            raise ValueError("aggregate: no valid upload this round")
        order = tuple(sorted(self.survivors))
        if self.policy.verify_aggregate:  # §5.3: the decryptor re-sums the signed uploads itself
            return encode(AggregateMsg(self._round, self.generation, self.key_id, order, (),
                                       tuple(self._uploads[h] for h in order)))
        return encode(AggregateMsg(self._round, self.generation, self.key_id, order,
                                   tuple(v.serialize() for v in self._sum), ()))
