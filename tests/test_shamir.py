"""Tests for secagg.crypto.shamir: field choice, round trips, secrecy, caching, errors and tampering."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.crypto import shamir
from secagg.crypto.shamir import (
    SHARE_BYTES,
    P,
    Share,
    lagrange_at_zero,
    reconstruct,
    split,
    split_many,
)
from secagg.errors import ConfigError, ProtocolError

FIRST_20_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71)
X_MAX = 2**32 - 1

# Chi-square critical value for 255 degrees of freedom (256 bins). The exact value at alpha = 1e-4 is
# 347.65 (regularized upper incomplete gamma, computed once with mpmath; scipy is not installed). We use
# the rounder, more conservative 360, whose false-alarm rate is about 1.6e-5 per statistic.
CHI2_CRIT_255_DOF = 360.0
CHI2_TRIALS = 2048  # 8 expected hits per bin


def miller_rabin(n: int, bases: list[int]) -> bool:
    """False proves ``n`` composite; True means no base in ``bases`` witnessed compositeness."""
    if n < 2:
        return False
    for p in FIRST_20_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        a %= n
        if a in (0, 1, n - 1):
            continue
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def mr_bases(n: int) -> list[int]:
    """The first 20 primes plus 64 bases from the CSPRNG, uniform in [2, n - 2]."""
    return list(FIRST_20_PRIMES) + [2 + secrets.randbelow(n - 3) for _ in range(64)]


def raw_at_zero(shares: list[Share]) -> int:
    """Interpolate at 0 without reconstruct's range check: the raw field element."""
    lam = lagrange_at_zero(tuple(s.x for s in shares))
    return sum(c * s.y for c, s in zip(lam, shares, strict=True)) % P


def top_byte(value: int) -> int:
    """Bits 248..255 of a field element (byte 1 of its 33-byte encoding)."""
    return value.to_bytes(SHARE_BYTES, "big")[1]


def chi_square_uniform_bytes(samples: list[int]) -> float:
    expected = len(samples) / 256
    counts = [0] * 256
    for b in samples:
        counts[b] += 1
    return sum((c - expected) ** 2 / expected for c in counts)


@st.composite
def distinct_points(draw: st.DrawFn, min_size: int = 1, max_size: int = 40) -> list[int]:
    """Distinct points in [1, 2**32): packed near 1, spread wide, or packed near the top."""
    n = draw(st.integers(min_size, max_size))
    lo, hi = draw(st.sampled_from([(1, 100), (1, 10_000), (1, X_MAX), (X_MAX - 99, X_MAX)]))
    return draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n, unique=True))


def naive_lagrange(xs: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % P
                den = den * (xj - xi) % P
        out.append(num * pow(den, -1, P) % P)
    return tuple(out)


# ------------------------------------------------------------------------------------------------ field

def test_miller_rabin_helper_detects_composites() -> None:
    assert not miller_rabin(561, mr_bases(561))                  # Carmichael number
    assert not miller_rabin((2**61 - 1) * (2**89 - 1), mr_bases(2**150))
    assert miller_rabin(2**127 - 1, mr_bases(2**127 - 1))


def test_field_prime_is_prime() -> None:
    assert P == 2**256 + 297
    assert P > 2**256
    assert miller_rabin(P, mr_bases(P))


def test_field_prime_is_smallest_above_2_256() -> None:
    # A False from Miller-Rabin is a proof of compositeness, so this cannot pass by bad luck.
    for n in range(2**256 + 1, P, 2):
        assert not miller_rabin(n, mr_bases(n)), n


def test_share_encoding_fits_every_field_element() -> None:
    assert (P - 1).bit_length() <= 8 * SHARE_BYTES
    assert Share(1, P - 1).to_bytes() == (P - 1).to_bytes(33, "big")


# ----------------------------------------------------------------------------------------- round trips

@settings(max_examples=50, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), xs=distinct_points(), data=st.data())
def test_round_trip_any_t_subset_in_any_order(secret: bytes, xs: list[int], data: st.DataObject) -> None:
    n = len(xs)
    t = data.draw(st.integers(1, n), label="t")
    shares = split(secret, t, xs)
    assert [s.x for s in shares] == xs
    order = data.draw(st.permutations(range(n)), label="order")
    assert reconstruct([shares[i] for i in order[:t]], t) == secret
    # More than t shares: the first t are used, the rest are ignored (even if garbage).
    extra = [shares[i] for i in order[:t]] + [Share(shares[i].x, 0) for i in order[t:]]
    assert reconstruct(extra, t) == secret


@pytest.mark.parametrize(
    "secret", [b"\x00" * 32, b"\xff" * 32, b"\x80" + b"\x00" * 31, b"\x00" * 31 + b"\x01"]
)
@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_extreme_secrets_round_trip(secret: bytes, threshold: int) -> None:
    xs = [1, 2, 3, 4, 5, X_MAX]
    shares = split(secret, threshold, xs)
    assert reconstruct(shares[-threshold:], threshold) == secret
    assert reconstruct(shares, threshold) == secret


def test_large_share_set_spans_several_row_blocks() -> None:
    xs = list(range(7, 7 + 2 * shamir._ROW_BLOCK + 3))
    t = len(xs) - 2
    secret = secrets.token_bytes(32)
    shares = split(secret, t, xs)
    assert reconstruct(shares[2:], t) == secret
    assert reconstruct(shares[::-1], t) == secret


def test_split_many_uses_fresh_polynomial_per_secret() -> None:
    xs = [3, 1, 4, 10, 5]
    batch = [secrets.token_bytes(32) for _ in range(3)] + [b"\x07" * 32, b"\x07" * 32]
    groups = split_many(batch, 3, xs)
    assert len(groups) == len(batch)
    for secret, shares in zip(batch, groups, strict=True):
        assert [s.x for s in shares] == xs
        assert reconstruct(shares[1:4], 3) == secret
    assert groups[3] != groups[4]  # same secret, independent coefficients


# ------------------------------------------------------------------------------------------------ secrecy

def test_fewer_than_t_shares_are_consistent_with_every_secret() -> None:
    # t-1 real shares of A plus a suitably chosen t-th share reconstruct to ANY candidate B.
    t = 4
    secret_a = secrets.token_bytes(32)
    real = split(secret_a, t, [11, 22, 33, 44, 55])[: t - 1]
    xs = (*(s.x for s in real), 99)
    lam = lagrange_at_zero(xs)
    partial = sum(c * s.y for c, s in zip(lam, real, strict=False)) % P
    for candidate in [secret_a, b"\x00" * 32, b"\xff" * 32] + [secrets.token_bytes(32) for _ in range(10)]:
        b = int.from_bytes(candidate, "big")
        y_last = (b - partial) * pow(lam[-1], -1, P) % P
        assert reconstruct([*real, Share(99, y_last)], t) == candidate


def test_t_minus_1_shares_plus_random_share_give_uniform_value() -> None:
    # Fix t-1 shares of A; add one share with a uniformly random y. The raw interpolated field element
    # must be uniform (so the t-1 shares pin nothing down): chi-square on its top byte, 255 dof.
    t = 5
    real = split(secrets.token_bytes(32), t, range(1, t + 1))[: t - 1]
    samples = []
    for _ in range(CHI2_TRIALS):
        value = raw_at_zero([*real, Share(1000, secrets.randbelow(P))])
        samples.append(top_byte(value))
    assert chi_square_uniform_bytes(samples) < CHI2_CRIT_255_DOF


@pytest.mark.parametrize("share_index", [0, 1])
def test_share_values_are_uniform_for_a_fixed_secret(share_index: int) -> None:
    # With t=3 any 2 shares are uniform whatever the secret: over many splits of the all-zero secret,
    # the top byte of each share is uniform. Fails if coefficients were zero, small or non-random.
    samples = [top_byte(split(b"\x00" * 32, 3, [1, 2, 3])[share_index].y) for _ in range(CHI2_TRIALS)]
    assert chi_square_uniform_bytes(samples) < CHI2_CRIT_255_DOF


def test_splits_use_fresh_randomness() -> None:
    secret = secrets.token_bytes(32)
    xs = [1, 2, 3, 4, 5, 6]
    first, second = split(secret, 3, xs), split(secret, 3, xs)
    assert all(a.x == b.x and a.y != b.y for a, b in zip(first, second, strict=True))
    # threshold 1 is a degree-0 polynomial: every share *is* the secret (documented).
    assert {s.y for s in split(secret, 1, xs)} == {int.from_bytes(secret, "big")}


# ------------------------------------------------------------------------------------------- lagrange

@settings(max_examples=50, deadline=None)
@given(xs=distinct_points(), data=st.data())
def test_lagrange_at_zero_interpolates_random_polynomials(xs: list[int], data: st.DataObject) -> None:
    key = tuple(xs)
    lam = lagrange_at_zero(key)
    assert len(lam) == len(key) and all(0 <= c < P for c in lam)
    assert lam == naive_lagrange(key)
    degree = data.draw(st.integers(0, len(xs) - 1), label="degree")
    coeffs = data.draw(st.lists(st.integers(0, P - 1), min_size=degree + 1, max_size=degree + 1))

    def f(x: int) -> int:
        return sum(c * pow(x, k, P) for k, c in enumerate(coeffs)) % P

    assert sum(c * f(x) for c, x in zip(lam, key, strict=True)) % P == coeffs[0]


@pytest.mark.parametrize(
    "xs",
    [
        (65_533, 65_534, 65_535, 65_536, 1),        # 16-bit span: row of x=1 fills a word to ~2**64
        (8_188, 8_189, 8_190, 8_191, 8_192, 1),     # 13-bit span: 5 such factors would overflow 64 bits
        (1, X_MAX - 1, X_MAX),                      # 32-bit span: 2 factors per word
        (X_MAX, 1, 2, 3, X_MAX - 7),
        (1, 2),                                     # 1-bit span: 64 factors per word, mostly padding
        (5, 6, 7),
        tuple(range(1, 70)),
        tuple(range(X_MAX - 40, X_MAX + 1))[::-1],
    ],
)
def test_lagrange_word_packing_boundaries(xs: tuple[int, ...]) -> None:
    # The denominators pack 64 // span.bit_length() differences into one uint64; these sets push the
    # packed products right up to 2**64, where an off-by-one in the packing would silently wrap.
    assert lagrange_at_zero(xs) == naive_lagrange(xs)


def test_lagrange_at_zero_is_cached() -> None:
    key = tuple(range(1000, 1040))
    first = lagrange_at_zero(key)
    hits = lagrange_at_zero.cache_info().hits
    second = lagrange_at_zero(tuple(range(1000, 1040)))  # equal tuple, different object
    assert lagrange_at_zero.cache_info().hits == hits + 1
    assert second is first


def test_lagrange_at_zero_rejects_bad_point_sets() -> None:
    with pytest.raises(ConfigError, match="xs"):
        lagrange_at_zero(())
    with pytest.raises(ConfigError, match=r"xs: points must be distinct, x=2"):
        lagrange_at_zero((1, 2, 2))
    with pytest.raises(ConfigError, match=r"xs\[1\]: must be >= 1"):
        lagrange_at_zero((5, 0))


# ----------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize(
    ("threshold", "xs", "match"),
    [
        (0, [1, 2, 3], r"threshold: must be >= 1, got 0"),
        (4, [1, 2, 3], r"threshold: must be <= len\(xs\) = 3, got 4"),
        (True, [1, 2, 3], r"threshold: must be an integer"),
        (2, [1, 2, 2], r"xs: points must be distinct, x=2"),
        (1, [1, 0], r"xs\[1\]: must be >= 1, got 0"),
        (1, [2**32], r"xs\[0\]: must be <= 4294967295, got 4294967296"),
        (1, [-1], r"xs\[0\]: must be >= 1"),
        (1, [1.0], r"xs\[0\]: must be an integer"),
        (1, [], r"threshold: must be <= len\(xs\) = 0, got 1"),
    ],
)
def test_split_rejects_bad_parameters(threshold: int, xs: list[int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        split(b"\x01" * 32, threshold, xs)


@pytest.mark.parametrize(
    ("secret", "match"),
    [(b"\x01" * 31, r"secret: must be exactly 32 bytes, got 31"),
     (b"\x01" * 33, r"secret: must be exactly 32 bytes, got 33"),
     ("x" * 32, r"secret: must be bytes, got str")],
)
def test_split_rejects_bad_secret(secret: bytes, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        split(secret, 1, [1])


def test_split_many_names_the_bad_secret() -> None:
    with pytest.raises(ConfigError, match=r"secrets\[1\]: must be exactly 32 bytes, got 5"):
        split_many([b"\x00" * 32, b"short"], 1, [1])


def test_reconstruct_rejects_too_few_shares() -> None:
    shares = split(secrets.token_bytes(32), 3, [1, 2, 3])
    with pytest.raises(ProtocolError, match=r"shares: need at least threshold = 3 shares, got 2"):
        reconstruct(shares[:2], 3)


def test_reconstruct_rejects_duplicate_x() -> None:
    shares = split(secrets.token_bytes(32), 3, [1, 2, 3])
    with pytest.raises(ProtocolError, match=r"shares: duplicate x=2 among the first 3 shares"):
        reconstruct([shares[0], shares[1], shares[1], shares[2]], 3)


def test_reconstruct_rejects_bad_threshold_and_non_shares() -> None:
    shares = split(secrets.token_bytes(32), 2, [1, 2])
    with pytest.raises(ConfigError, match=r"threshold: must be >= 1, got 0"):
        reconstruct(shares, 0)
    with pytest.raises(ProtocolError, match=r"shares\[1\]: must be a Share, got tuple"):
        reconstruct([shares[0], (2, shares[1].y)], 2)  # type: ignore[list-item]


def test_share_bytes_round_trip_and_repr_hides_value() -> None:
    share = split(secrets.token_bytes(32), 2, [7, 8])[0]
    data = share.to_bytes()
    assert len(data) == SHARE_BYTES
    assert Share.from_bytes(7, data) == share
    assert Share.from_bytes(7, bytearray(data)) == share
    assert str(share.y) not in repr(share) and "x=7" in repr(share)


@pytest.mark.parametrize(
    ("x", "data", "match"),
    [
        (1, b"\x00" * 32, r"Share.data: must be exactly 33 bytes, got 32"),
        (1, b"\x00" * 34, r"Share.data: must be exactly 33 bytes, got 34"),
        (1, P.to_bytes(33, "big"), r"Share.y: must be in \[0, P\)"),
        (1, b"\xff" * 33, r"Share.y: must be in \[0, P\)"),
        (0, b"\x00" * 33, r"Share.x: must be >= 1, got 0"),
        (2**32, b"\x00" * 33, r"Share.x: must be <= 4294967295"),
        (1, "0" * 33, r"Share.data: must be bytes, got str"),
    ],
)
def test_share_from_bytes_rejects_malformed(x: int, data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        Share.from_bytes(x, data)


def test_share_from_bytes_accepts_largest_field_element() -> None:
    assert Share.from_bytes(X_MAX, (P - 1).to_bytes(33, "big")).y == P - 1


def test_share_constructor_validates() -> None:
    with pytest.raises(ProtocolError, match=r"Share.y: must be in \[0, P\)"):
        Share(1, -1)
    with pytest.raises(ProtocolError, match=r"Share.y: must be an integer"):
        Share(1, 1.5)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- tampering
#
# With EXACTLY t shares there is no redundancy: any t points lie on some polynomial of degree t-1, so a
# tampered share just yields another field element. It lands outside [0, 2**256), the only range check
# reconstruct can make, with probability 297/P ~ 2**-248 when random. Hence these tests check (a) a
# tampered share always changes the result (lambda_k != 0, so this is deterministic, never a wrong
# "success" with the original secret), and (b) the range check fires whenever the interpolated value is
# out of range (crafted tampering). Random tampering among exactly t shares is NOT detectable here; the
# protocol must authenticate shares or verify the reconstructed secret.

def test_tampered_share_never_reconstructs_original_secret() -> None:
    t = 5
    for _ in range(20):
        secret = secrets.token_bytes(32)
        shares = split(secret, t, [2, 4, 6, 8, 10, 12])[:t]
        k = secrets.randbelow(t)
        delta = 1 + secrets.randbelow(P - 1)
        shares[k] = Share(shares[k].x, (shares[k].y + delta) % P)
        try:
            assert reconstruct(shares, t) != secret
        except ProtocolError as exc:
            assert "shares inconsistent" in str(exc)


def test_out_of_range_interpolation_raises() -> None:
    t = 4
    for _ in range(20):
        secret = secrets.token_bytes(32)
        shares = split(secret, t, [5, 6, 7, 8])
        k = secrets.randbelow(t)
        lam = lagrange_at_zero(tuple(s.x for s in shares))
        target = 2**256 + secrets.randbelow(P - 2**256)   # a field element that is no 32-byte secret
        delta = (target - int.from_bytes(secret, "big")) * pow(lam[k], -1, P) % P
        shares[k] = Share(shares[k].x, (shares[k].y + delta) % P)
        assert raw_at_zero(shares) == target
        with pytest.raises(ProtocolError, match="shares inconsistent"):
            reconstruct(shares, t)
