"""The known-answer vectors of ``docs/protocol-vectors.json`` against this library and the written spec.

Three checks: the committed derivations are what the library computes today (a change to a label, a
layout or a primitive shows here first); each derivation recomputed independently from
``docs/protocol.md``'s description with `cryptography` and hashlib alone (so the document, not only
the code, is right); and the recorded session replayed into a fresh server reproduces every server
message byte for byte, and the sum.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secagg.crypto.shamir import P, Share, reconstruct
from secagg.protocol.messages import SessionParams
from secagg.protocol.server import Server
from secagg.protocol.vectors import FORMAT, derivations, vector_params
from secagg.protocol.wire import decode, encode

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol-vectors.json"


@pytest.fixture(scope="module")
def doc() -> dict:
    data = json.loads(DOC.read_text())
    assert data["format"] == FORMAT
    return data


def test_the_committed_derivations_are_what_the_library_computes(doc):
    assert doc["derivations"] == derivations()


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def _pair(label: bytes, a: int, b: int) -> bytes:
    lo, hi = sorted((a, b))
    return label + lo.to_bytes(4, "big") + hi.to_bytes(4, "big")


def _params_bytes(d: dict) -> bytes:
    ids = b"".join(u.to_bytes(4, "big") for u in d["client_ids"])
    fields = [d["round"], bytes.fromhex(d["model_version"]), ids, d["threshold"], d["degree"],
              d["vector_length"], d["bits"], d["malicious"], d["corrupt"], bytes.fromhex(d["nonce"])]
    return msgpack.packb(fields, use_bin_type=True)


def test_every_derivation_follows_the_written_specification(doc):
    v = doc["derivations"]
    x = v["x25519"]
    public = {}
    for name in ("u_enc", "u_mask", "v_enc", "v_mask", "w_enc", "w_mask"):
        key = X25519PrivateKey.from_private_bytes(bytes.fromhex(x[f"{name}_private"]))
        public[name] = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        if f"{name}_public" in x:
            assert public[name].hex() == x[f"{name}_public"]

    def agree(mine: str, theirs: str) -> bytes:
        key = X25519PrivateKey.from_private_bytes(bytes.fromhex(x[f"{mine}_private"]))
        return key.exchange(X25519PublicKey.from_public_bytes(public[theirs]))

    assert agree("u_mask", "v_mask").hex() == x["mask_shared_secret"] == agree("v_mask", "u_mask").hex()
    assert agree("u_enc", "v_enc").hex() == x["enc_shared_secret"]

    # parameters: the 10-field msgpack array; commitments: SHA-256(label || params || id || b_u)
    params = _params_bytes(v["params"])
    for u, seed in v["self_mask_seeds"].items():
        want = hashlib.sha256(b"secagg/v2/self-mask-seed-commitment" + params + int(u).to_bytes(4, "big")
                              + bytes.fromhex(seed)).hexdigest()
        assert v["commitments"][u] == want
    # session id: SHA-256(label || params || ids || enc keys || mask keys || commitments)
    ids = [3, 5, 9]
    h = hashlib.sha256(b"secagg/v1/session-id" + params)
    h.update(b"".join(u.to_bytes(4, "big") for u in ids))
    h.update(public["u_enc"] + public["v_enc"] + public["w_enc"])
    h.update(public["u_mask"] + public["v_mask"] + public["w_mask"])
    h.update(b"".join(bytes.fromhex(v["commitments"][str(u)]) for u in ids))
    sid = h.digest()
    assert v["session_id"] == sid.hex()
    assert v["advertisement_message"] == (b"secagg/v2/advertise" + params + (3).to_bytes(4, "big")
                                          + public["u_enc"] + public["u_mask"]
                                          + bytes.fromhex(v["commitments"]["3"])).hex()

    # pairwise mask seed and share key: HKDF-SHA256(secret, salt = session id, info = label || ids)
    pair = v["pair"]
    seed = _hkdf(agree("u_mask", "v_mask"), sid, _pair(b"secagg/v1/pairwise-mask", 3, 5))
    key = _hkdf(agree("u_enc", "v_enc"), sid, _pair(b"secagg/v1/share-encryption", 3, 5))
    assert (seed.hex(), key.hex()) == (pair["mask_seed"], pair["share_key"])
    # the mask PRG: AES-128-CTR, key = seed[:16], initial counter block = seed[16:], LE uint32 words
    stream = Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:])).encryptor().update(bytes(32))
    assert np.frombuffer(stream, dtype="<u4").tolist() == pair["prg_words"]

    # Shamir over GF(2^256 + 297): share = f(id + 1), 33 bytes big-endian; any t rebuild b_u
    sh = v["shamir"]
    secret, c1 = int(sh["secret"], 16), int(sh["c1"], 16)
    assert P == 2**256 + 297
    shares = {int(u): bytes.fromhex(b) for u, b in sh["shares"].items()}
    for u, data in shares.items():
        assert int.from_bytes(data, "big") == (secret + c1 * (u + 1)) % P and len(data) == 33
    for a, b in ((3, 5), (3, 9), (5, 9)):
        got = reconstruct([Share.from_bytes(a + 1, shares[a]), Share.from_bytes(b + 1, shares[b])], 2)
        assert got.hex() == sh["secret"]

    # the share ciphertext: nonce (12) || AES-256-GCM(share key, nonce, plaintext, associated data)
    ae = v["aead"]
    assert ae["associated_data"] == (b"secagg/v1/share" + sid + (3).to_bytes(4, "big")
                                     + (5).to_bytes(4, "big")).hex()
    ct = bytes.fromhex(ae["ciphertext"])
    plain = AESGCM(key).decrypt(ct[:12], ct[12:], bytes.fromhex(ae["associated_data"]))
    assert plain.hex() == ae["plaintext"] and plain[:8] == (3).to_bytes(4, "big") + (5).to_bytes(4, "big")

    # the wire: [magic, version, type code, fields...] as msgpack; every vector decodes and re-encodes
    codes = {"Setup": 1, "AdvertiseKeys": 2, "KeyDirectory": 3, "ShareKeys": 4, "ForwardedShares": 5,
             "MaskedInput": 6, "UnmaskRequest": 7, "UnmaskResponse": 8, "ConsistencyRequest": 9,
             "ConsistencySignature": 10}
    for name, data in v["wire"].items():
        raw = bytes.fromhex(data)
        assert msgpack.unpackb(raw)[:3] == [0x5EC6, 2, codes[name]]
        assert encode(decode(raw)) == raw and type(decode(raw)).__name__ == name
    assert msgpack.unpackb(bytes.fromhex(v["wire"]["Setup"]))[3] == msgpack.unpackb(params)


def test_the_recorded_session_replays_byte_for_byte_into_a_fresh_server(doc):
    t = doc["transcript"]
    params = vector_params()
    assert isinstance(params, SessionParams) and params.nonce  # the recorded session's nonce
    server = Server(params)
    outgoing = server.start()
    for step in t["steps"]:
        assert [{"to": u, "message": encode(m).hex()} for u, m in outgoing] == step["server"]
        for reply in step["clients"]:
            server.receive(decode(bytes.fromhex(reply["message"])), sender=reply["from"])
        outgoing = server.advance() if server.stage is not None else []
    assert outgoing == [] and server.result is not None
    assert server.result.tolist() == t["sum"]
    assert list(server.survivors) == t["survivors"] and list(server.dropped) == t["dropped"]
    want = sum(np.asarray(t["inputs"][str(u)], dtype=np.uint64) for u in t["survivors"]) % (1 << params.bits)
    assert want.tolist() == t["sum"]


def test_the_ring_follows_the_written_specification():
    """Section 4: the ring seed from the round, degree and invited ids; keys = the first 8n keystream
    bytes under it as little-endian uint64, the i-th smallest id taking word i; stable sort by key;
    k/2 neighbours on each side."""
    from secagg.protocol.graph import graph_seed, neighbours

    members, k, round_ = [2, 3, 5, 8, 13, 21, 34, 55, 89], 4, 7
    material = hashlib.sha256(b"secagg/v2/graph-seed" + round_.to_bytes(4, "big") + k.to_bytes(4, "big")
                              + b"".join(u.to_bytes(4, "big") for u in members)).digest()
    assert graph_seed(round_, k, members) == material
    sid = material
    seed = _hkdf(material, b"", b"secagg/v1/graph-permutation")
    ctr = Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:])).encryptor()
    stream = ctr.update(bytes(8 * len(members)))
    keys = np.frombuffer(stream, dtype="<u8")
    ring = [members[i] for i in np.argsort(keys, kind="stable")]
    m = len(ring)
    want = {u: frozenset(ring[(ring.index(u) + j) % m] for j in (-2, -1, 1, 2)) for u in members}
    assert neighbours(sid, members, k) == want
