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
from secagg.protocol.messages import MaskedInput, SessionParams
from secagg.protocol.server import Server
from secagg.protocol.vectors import FORMAT, derivations, secaggplus, secaggplus_params, vector_params
from secagg.protocol.wire import decode, encode

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol-vectors.json"


@pytest.fixture(scope="module")
def doc() -> dict:
    data = json.loads(DOC.read_text())
    assert data["format"] == FORMAT
    return data


def test_the_committed_derivations_are_what_the_library_computes(doc):
    assert doc["derivations"] == derivations()
    assert doc["secaggplus"] == secaggplus()


def _merkle_root(leaves: list[bytes]) -> bytes:
    """Section 4's Merkle tree, from the text: SHA-256(0x00 || leaf) leaves, padded with zero hashes
    to a power of two, SHA-256(0x01 || left || right) nodes."""
    level = [hashlib.sha256(b"\x00" + x).digest() for x in leaves]
    while len(level) & (len(level) - 1):
        level.append(bytes(32))
    while len(level) > 1:
        level = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


def _verify_path(root: bytes, n: int, index: int, leaf: bytes, proof: bytes) -> bool:
    """One leaf's proof: the sibling hashes from the leaves up (section 4)."""
    node, width = hashlib.sha256(b"\x00" + leaf).digest(), 1
    while width < n:
        width *= 2
    hashes = [proof[i : i + 32] for i in range(0, len(proof), 32)]
    if 2 ** (len(hashes)) != width:
        return False
    for sibling in hashes:
        pair = node + sibling if index % 2 == 0 else sibling + node
        node, index = hashlib.sha256(b"\x01" + pair).digest(), index // 2
    return node == root


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def _pair(label: bytes, a: int, b: int) -> bytes:
    lo, hi = sorted((a, b))
    return label + lo.to_bytes(4, "big") + hi.to_bytes(4, "big")


def _params_bytes(d: dict) -> bytes:
    root = _merkle_root([u.to_bytes(4, "big") for u in d["client_ids"]])
    assert root.hex() == d["members_root"] and d["members"] == len(d["client_ids"])
    fields = [d["round"], bytes.fromhex(d["model_version"]), len(d["client_ids"]), root, d["threshold"],
              d["degree"], d["vector_length"], d["bits"], d["malicious"], d["corrupt"],
              bytes.fromhex(d["nonce"])]
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
    # session id: SHA-256(label || P(params)); the consistency message signs the status root
    sid = hashlib.sha256(b"secagg/v3/session-id" + params).digest()
    assert v["session_id"] == sid.hex()
    statuses = v["statuses"]
    root = _merkle_root([int(u).to_bytes(4, "big") + bytes([statuses[str(u)]])
                         for u in v["params"]["client_ids"]])
    assert v["status_root"] == root.hex()
    assert v["consistency_message"] == (b"secagg/v3/consistency" + sid + root).hex()
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
             "ConsistencySignature": 10, "ShareCheck": 11, "MaskRequest": 12}
    for name, data in v["wire"].items():
        raw = bytes.fromhex(data)
        assert msgpack.unpackb(raw)[:3] == [0x5EC6, 4, codes[name]]
        assert encode(decode(raw)) == raw and type(decode(raw)).__name__ == name
    assert msgpack.unpackb(bytes.fromhex(v["wire"]["Setup"]))[3] == msgpack.unpackb(params)


@pytest.mark.parametrize(("key", "make"), [("transcript", vector_params),
                                         ("transcript_secaggplus", secaggplus_params)])
def test_the_recorded_session_replays_byte_for_byte_into_a_fresh_server(doc, key, make):
    t = doc[key]
    params = make()
    assert isinstance(params, SessionParams) and params.nonce  # the recorded session's nonce
    server = Server(params)
    outgoing = server.start()
    masked_inputs = 0
    for step in t["steps"]:
        assert [{"to": u, "message": encode(m).hex()} for u, m in outgoing] == step["server"]
        for reply in step["clients"]:
            message = decode(bytes.fromhex(reply["message"]))
            if isinstance(message, MaskedInput):  # section 5: d words of `bits` bits, little-endian stream
                d, bits = params.vector_length, params.bits
                assert len(message.vector) == -(-d * bits // 8)
                stream = int.from_bytes(message.vector, "little")
                assert stream >> (d * bits) == 0  # the padding bits are 0
                masked_inputs += 1
            server.receive(message, sender=reply["from"])
        outgoing = server.advance() if server.stage is not None else []
    assert outgoing == [] and server.result is not None and masked_inputs >= len(t["survivors"])
    assert server.result.tolist() == t["sum"]
    assert list(server.survivors) == t["survivors"] and list(server.dropped) == t["dropped"]
    want = sum(np.asarray(t["inputs"][str(u)], dtype=np.uint64) for u in t["survivors"]) % (1 << params.bits)
    assert want.tolist() == t["sum"]


def _swap_or_not(seed: bytes, n: int, x: int, rounds: range) -> int:
    """Section 4's permutation from the text: pivots from the AES-CTR PRG under HKDF(seed, "ring-pivots"),
    round bits from AES-128-ECB under HKDF(seed, "ring-bits")[:16] of be32(r) || be32(p >> 7) || 0^8."""
    pk = _hkdf(seed, b"", b"secagg/v3/ring-pivots")
    stream = Cipher(algorithms.AES(pk[:16]), modes.CTR(pk[16:])).encryptor().update(bytes(16 * 90))
    pivots = [int.from_bytes(stream[8 * r : 8 * r + 8], "little") % n for r in range(90)]
    ecb = Cipher(algorithms.AES(_hkdf(seed, b"", b"secagg/v3/ring-bits")[:16]), modes.ECB()).encryptor()
    for r in rounds:
        flip = (pivots[r] - x) % n
        p = max(x, flip)
        block = ecb.update(r.to_bytes(4, "big") + (p >> 7).to_bytes(4, "big") + bytes(8))
        if (block[(p & 127) >> 3] >> (p & 7)) & 1:
            x = flip
    return x


def test_the_secaggplus_graph_follows_the_written_specification(doc):
    """Section 4: the members' Merkle root and proofs, the ring seed, the swap-or-not ring (pi(i) for
    each member index) and each member's k/2 ring neighbours on either side."""
    g = doc["secaggplus"]
    members, k, n = g["members"], g["degree"], len(g["members"])
    leaves = [u.to_bytes(4, "big") for u in members]
    assert [hashlib.sha256(b"\x00" + x).hexdigest() for x in leaves] == g["leaf_hashes"]
    root = _merkle_root(leaves)
    assert root.hex() == g["members_root"]
    i = g["membership_proof"]["index"]
    assert _verify_path(root, n, i, leaves[i], bytes.fromhex(g["membership_proof"]["proof"]))
    assert not _verify_path(root, n, i + 1, leaves[i], bytes.fromhex(g["membership_proof"]["proof"]))
    seed = hashlib.sha256(b"secagg/v3/ring-seed" + g["round"].to_bytes(4, "big") + k.to_bytes(4, "big")
                          + n.to_bytes(4, "big") + root).digest()
    assert seed.hex() == g["ring_seed"]
    positions = [_swap_or_not(seed, n, x, range(90)) for x in range(n)]
    assert positions == g["positions"] and sorted(positions) == list(range(n))
    at = {p: members[x] for x, p in enumerate(positions)}
    for x, u in enumerate(members):
        want = sorted(at[(positions[x] + j) % n] for j in range(-(k // 2), k // 2 + 1) if j)
        assert g["neighbours"][str(u)] == want
    statuses = g["statuses"]
    status = _merkle_root([u.to_bytes(4, "big") + bytes([statuses[str(u)]]) for u in members])
    assert status.hex() == g["status_root"]
    # a SecAgg+ Setup: P(params), an empty member list, the recipient's index and its proof
    setup = msgpack.unpackb(bytes.fromhex(g["wire"]["Setup"]))
    assert setup[:3] == [0x5EC6, 4, 1] and setup[3][2:4] == [n, root] and setup[4:] == [b"", 5, bytes.fromhex(
        g["membership_proof"]["proof"])]
