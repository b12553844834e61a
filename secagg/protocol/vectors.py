"""Known-answer vectors for the protocol (``docs/protocol.md``): what a second implementation checks.

Two kinds, in one JSON document (``docs/protocol-vectors.json``):

* **derivations**, recomputed from fixed inputs every time (:func:`derivations`): X25519 agreement,
  the pairwise mask seed and share key (HKDF-SHA256 with the protocol's labels), the mask PRG
  (AES-128-CTR words), the parameter encoding, the session id, the self-mask seed commitment, the
  signed advertisement bytes, Shamir shares of a secret, an AES-256-GCM share ciphertext, and the wire
  encoding of one message of every type. Every input is derived from a label with SHA-256: nothing
  here is random, so the output is the same on every machine and a changed construction changes it.
* **the SecAgg+ graph** (:func:`secaggplus`): for 8 members with degree 2, the members' Merkle root,
  one membership proof and one multiproof, the ring seed, the swap-or-not pivots and every member's
  ring position and neighbours, and a status root.
* **two transcripts** of small sessions run by real clients (:func:`transcript`), one on the full
  graph and one on a SecAgg+ graph: the parameters with the server's nonce, every client message in
  order, every server message, and the sum. The
  server is deterministic given its inputs, so replaying the client messages into a fresh server must
  reproduce every server message byte for byte and the sum: a server written elsewhere can be
  checked against it; the derivations cover what a client computes.

``python -m secagg.protocol.vectors --out docs/protocol-vectors.json`` writes a new document (a new
transcript); ``tests/test_vectors.py`` checks the committed one against this library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.crypto import aead
from secagg.crypto.kdf import hkdf
from secagg.crypto.keys import DHKeyPair
from secagg.crypto.prg import expand
from secagg.crypto.shamir import P, Share
from secagg.protocol.merkle import MerkleTree, leaf_hash
from secagg.protocol.messages import (
    STATUS_ABSENT,
    STATUS_DROPPED,
    STATUS_SURVIVED,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    ForwardedShares,
    KeyDirectory,
    KeyEntry,
    MaskedInput,
    MaskRequest,
    SessionParams,
    Setup,
    ShareCheck,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    member_leaf,
    members_tree,
    status_leaf,
)
from secagg.protocol.ring import ROUNDS, Ring, ring_seed
from secagg.protocol.session import (
    advertisement_message,
    consistency_message,
    mask_seed,
    seed_commitment,
    session_id,
    share_key,
    share_point,
)
from secagg.protocol.wire import SHARE_CIPHERTEXT_BYTES, encode

__all__ = ["derivations", "generate", "secaggplus", "transcript"]

FORMAT = "secagg-protocol-vectors/2"


def _fixed(label: str, size: int = 32) -> bytes:
    """``size`` bytes derived from ``label`` (SHA-256 in counter mode): fixed, reproducible inputs."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"secagg vectors/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def _key(label: str) -> DHKeyPair:
    return DHKeyPair.from_private_bytes(_fixed(label))


def vector_params() -> SessionParams:
    """The session parameters the derivations use (3 clients, full graph, d = 4, 16 bits)."""
    return SessionParams(round=7, model_version=_fixed("model"), client_ids=(3, 5, 9), threshold=2,
                         degree=2, vector_length=4, bits=16, nonce=_fixed("nonce"))


def derivations() -> dict[str, Any]:
    """Every deterministic derivation of the protocol from fixed inputs, hex-encoded."""
    params = vector_params()
    u, v = 3, 5
    a_enc, a_mask = _key("u-enc"), _key("u-mask")
    b_enc, b_mask = _key("v-enc"), _key("v-mask")
    c_enc, c_mask = _key("w-enc"), _key("w-mask")
    seeds = {u: _fixed("u-self-seed"), v: _fixed("v-self-seed"), 9: _fixed("w-self-seed")}
    commitments = {w: seed_commitment(params, w, seeds[w]) for w in seeds}
    directory = (KeyEntry(3, a_enc.public, a_mask.public, b"", commitments[3], 0),
                 KeyEntry(5, b_enc.public, b_mask.public, b"", commitments[5], 1),
                 KeyEntry(9, c_enc.public, c_mask.public, b"", commitments[9], 2))
    sid = session_id(params)
    mask_secret = a_mask.agree(b_mask.public)
    enc_secret = a_enc.agree(b_enc.public)
    pair_seed = mask_seed(mask_secret, sid, u, v)
    pair_key = share_key(enc_secret, sid, u, v)

    # Shamir: f(z) = secret + c1 z over GF(P) (t = 2), shares at the holders' points (id + 1)
    secret = seeds[u]
    c1 = int.from_bytes(_fixed("shamir-c1", 33), "big") % P
    value = int.from_bytes(secret, "big")
    shares = {w: (value + c1 * share_point(w)) % P for w in params.client_ids}
    share_bytes = {w: Share(share_point(w), shares[w]).to_bytes() for w in shares}

    # the share ciphertext u sends v: nonce || AES-256-GCM(pair key, nonce, plaintext, associated data)
    plaintext = (u.to_bytes(4, "big") + v.to_bytes(4, "big") + share_bytes[v]
                 + Share(share_point(v), 12345).to_bytes())
    nonce = _fixed("gcm-nonce", aead.NONCE_BYTES)
    ad = aead.associated_data(sid, u, v)
    ciphertext = nonce + AESGCM(pair_key).encrypt(nonce, plaintext, ad)
    assert len(ciphertext) == SHARE_CIPHERTEXT_BYTES

    words = expand(pair_seed, 8)
    statuses = {3: STATUS_SURVIVED, 5: STATUS_SURVIVED, 9: STATUS_DROPPED}
    status_root = MerkleTree([status_leaf(w, statuses[w]) for w in params.client_ids]).root
    messages = {
        "Setup": Setup(params),
        "AdvertiseKeys": AdvertiseKeys(u, a_enc.public, a_mask.public, b"", commitments[u]),
        "KeyDirectory": KeyDirectory(directory),
        "ShareKeys": ShareKeys(u, sid, ((v, ciphertext),)),
        "ForwardedShares": ForwardedShares(v, sid, ((u, ciphertext),)),
        "ShareCheck": ShareCheck(u, sid, (9,)),
        "MaskRequest": MaskRequest(sid, (9,)),
        "MaskedInput": MaskedInput(u, sid, np.arange(4, dtype="<u4").tobytes()),
        "ConsistencyRequest": ConsistencyRequest(sid, (3, 5), (9,), status_root, b""),
        "ConsistencySignature": ConsistencySignature(u, sid, _fixed("signature", 64)),
        "UnmaskRequest": UnmaskRequest(sid, (3, 5), (9,)),
        "UnmaskResponse": UnmaskResponse(u, sid, ((v, share_bytes[u]),), ((9, share_bytes[u]),)),
    }
    return {
        "params": {"round": params.round, "model_version": params.model_version.hex(),
                   "client_ids": list(params.client_ids), "threshold": params.threshold,
                   "degree": params.degree, "vector_length": params.vector_length, "bits": params.bits,
                   "malicious": params.malicious, "corrupt": params.corrupt, "nonce": params.nonce.hex(),
                   "members": params.members, "members_root": params.members_root.hex()},
        "statuses": {str(w): st for w, st in statuses.items()},
        "status_root": status_root.hex(),
        "consistency_message": consistency_message(sid, status_root).hex(),
        "x25519": {"u_enc_private": _fixed("u-enc").hex(), "u_enc_public": a_enc.public.hex(),
                   "u_mask_private": _fixed("u-mask").hex(), "u_mask_public": a_mask.public.hex(),
                   "v_enc_private": _fixed("v-enc").hex(), "v_enc_public": b_enc.public.hex(),
                   "v_mask_private": _fixed("v-mask").hex(), "v_mask_public": b_mask.public.hex(),
                   "w_enc_private": _fixed("w-enc").hex(), "w_mask_private": _fixed("w-mask").hex(),
                   "enc_shared_secret": enc_secret.hex(), "mask_shared_secret": mask_secret.hex()},
        "self_mask_seeds": {str(w): s.hex() for w, s in seeds.items()},
        "commitments": {str(w): c.hex() for w, c in commitments.items()},
        "session_id": sid.hex(),
        "advertisement_message": advertisement_message(params, u, a_enc.public, a_mask.public,
                                                       commitments[u]).hex(),
        "pair": {"u": u, "v": v, "mask_seed": pair_seed.hex(), "share_key": pair_key.hex(),
                 "prg_words": [int(x) for x in words]},
        "shamir": {"secret": secret.hex(), "threshold": 2, "c1": hex(c1),
                   "shares": {str(w): share_bytes[w].hex() for w in share_bytes}},
        "aead": {"key": pair_key.hex(), "associated_data": ad.hex(), "plaintext": plaintext.hex(),
                 "ciphertext": ciphertext.hex()},
        "wire": {name: encode(m).hex() for name, m in messages.items()},
    }


def secaggplus_params(malicious: bool = False) -> SessionParams:
    """A small SecAgg+ session: 8 members, degree 2 (t = 2; malicious: corrupt = 0)."""
    return SessionParams(round=7, model_version=_fixed("model"), client_ids=(2, 3, 5, 8, 13, 21, 34, 55),
                         threshold=2, degree=2, vector_length=4, bits=16, malicious=malicious,
                         nonce=_fixed("nonce"))


def secaggplus() -> dict[str, Any]:
    """The SecAgg+ graph's derivations for :func:`secaggplus_params`, hex-encoded."""
    params = secaggplus_params()
    ids = params.client_ids
    tree = members_tree(ids)
    seed = ring_seed(params.round, params.degree, params.members, params.members_root)
    ring = Ring(seed, params.members)
    positions = ring.positions(np.arange(len(ids))).tolist()
    statuses = {u: (STATUS_SURVIVED, STATUS_DROPPED, STATUS_ABSENT)[i % 3] for i, u in enumerate(ids)}
    directory_of = 3  # the multiproof of client 8's directory: itself and its two ring neighbours
    near = sorted([directory_of, *ring.neighbours(directory_of, params.degree).tolist()])
    pivots = expand(hkdf(seed, salt=b"", info=b"secagg/v3/ring-pivots"), 2 * ROUNDS).view("<u8")
    return {
        "members": list(ids), "degree": params.degree, "round": params.round,
        "leaf_hashes": [leaf_hash(member_leaf(u)).hex() for u in ids],
        "members_root": params.members_root.hex(),
        "membership_proof": {"index": 5, "proof": tree.multiproof([5]).hex()},
        "directory_multiproof": {"indices": near, "proof": tree.multiproof(near).hex()},
        "ring_seed": seed.hex(),
        "pivots": [int(x) % params.members for x in pivots[:4]],
        "positions": positions,
        "neighbours": {str(u): sorted(ids[j] for j in ring.neighbours(i, params.degree).tolist())
                       for i, u in enumerate(ids)},
        "statuses": {str(u): st for u, st in statuses.items()},
        "status_root": MerkleTree([status_leaf(u, statuses[u]) for u in ids]).root.hex(),
        "wire": {"Setup": encode(Setup(params, 5, tree.multiproof([5]))).hex()},
    }


def transcript(params: SessionParams | None = None, dropout: int | None = 9) -> dict[str, Any]:
    """One session of real clients (by default 3 on the full graph, t = 2, d = 4, 16 bits), client
    ``dropout`` leaving after ShareKeys: every message in order, hex-encoded, and the sum."""
    from secagg.protocol.client import Client
    from secagg.protocol.messages import Stage
    from secagg.protocol.runner import REPLY_STAGE
    from secagg.protocol.server import Server
    from secagg.protocol.wire import decode

    params = params if params is not None else vector_params()
    inputs = {w: (np.arange(4, dtype=np.uint32) * (w + 1) + w) for w in params.client_ids}
    server = Server(params)
    clients = {w: Client(w, inputs[w]) for w in params.client_ids}
    steps: list[dict[str, Any]] = []
    outgoing = server.start()
    gone: set[int] = set()
    while outgoing:
        sent = [{"to": w, "message": encode(m).hex()} for w, m in outgoing]
        replies = []
        for w, m in outgoing:
            stage = REPLY_STAGE[type(m)]
            if w in gone or (w == dropout and stage >= Stage.MASKED_INPUT):
                gone.add(w)
                continue
            reply = encode(clients[w].handle(decode(encode(m))))
            server.receive(decode(reply), sender=w)
            replies.append({"from": w, "message": reply.hex()})
        steps.append({"server": sent, "clients": replies})
        outgoing = server.advance() if server.stage is not None else []
    assert server.result is not None
    return {"inputs": {str(w): [int(x) for x in inputs[w]] for w in inputs},
            "survivors": list(server.survivors), "dropped": list(server.dropped),
            "steps": steps, "sum": [int(x) for x in server.result]}


def generate() -> dict[str, Any]:
    """The whole document: format tag, derivations and a fresh transcript."""
    return {"format": FORMAT, "derivations": derivations(), "secaggplus": secaggplus(),
            "transcript": transcript(),
            "transcript_secaggplus": transcript(secaggplus_params(), dropout=13)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON document")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(generate(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
