r"""CKKS through TenSEAL: the homomorphic backend of :mod:`ppfr.templates.encrypted`.

The encrypted gallery asks four things of a scheme: encrypt a vector of real slot values
under a public key, add and subtract ciphertexts in place, (de)serialise ciphertexts and the
public context, and, on the key holder's side only, decrypt. :class:`CKKSBackend` provides
them with TenSEAL's ``CKKSVector`` (Microsoft SEAL underneath). Nothing here multiplies, so
the context carries no relinearisation work and the modulus chain needs no rescaling levels:
one data prime and SEAL's special prime (see :class:`CKKSParams`).

Security. :data:`MAX_COEFF_BITS_128` is the HomomorphicEncryption.org standard's table
(Albrecht et al., "Homomorphic Encryption Standard", 2018/2021; the same bounds SEAL enforces
for ``sec_level_type.tc128``): for ring dimension :math:`N` the total coefficient modulus,
special prime included, may have at most that many bits for 128-bit classical security
with a ternary secret and error :math:`\sigma = 3.2`. :class:`CKKSParams` refuses anything
above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppfr.errors import DataError, InputError, MissingExtraError

__all__ = ["MAX_COEFF_BITS_128", "CKKSBackend", "CKKSParams"]

#: largest total coefficient-modulus bit count per ring dimension N for 128-bit classical
#: security (HomomorphicEncryption.org standard, ternary secret; SEAL's tc128 table)
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


def _tenseal() -> Any:
    try:
        import tenseal
    except ImportError as e:  # the optional extra
        raise MissingExtraError(
            "tenseal is not installed; it comes with ppfr's 'encrypted' extra: "
            "pip install 'ppfr[encrypted]'"
        ) from e
    return tenseal


@dataclass(frozen=True)
class CKKSParams:
    """Ring and moduli of the CKKS context.

    Attributes:
        poly_modulus_degree: ring dimension N (a power of two); N/2 slots per ciphertext.
        coeff_mod_bit_sizes: bit sizes of the coefficient-modulus primes; the last one is
            SEAL's special prime (key switching only), the others hold data. With additions
            only, one data prime suffices: ``(60, 60)`` leaves a 60-bit data modulus.
        scale_bits: CKKS scale :math:`\\Delta = 2^{\\text{scale\\_bits}}`; a decrypted
            value carries an absolute error of about :math:`e / \\Delta` (the encryption
            noise :math:`e`), and :math:`\\Delta\\,|v|` must stay below half the data modulus.

    The default, N = 8192 with 120 bits of modulus, is well inside the 218 bits the
    standard allows for 128-bit security at that N.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = field(default=(60, 60))
    scale_bits: int = 21

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in MAX_COEFF_BITS_128:
            raise InputError(
                f"poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}, got {n!r}"
            )
        bits = tuple(int(b) for b in self.coeff_mod_bit_sizes)
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        if len(bits) < 2 or any(not 17 <= b <= 60 for b in bits):
            raise InputError(
                "coeff_mod_bit_sizes needs at least two primes (data + special) of 17 to 60 "
                f"bits, got {bits}"
            )
        if sum(bits) > MAX_COEFF_BITS_128[n]:
            raise InputError(
                f"coefficient modulus of {sum(bits)} bits exceeds {MAX_COEFF_BITS_128[n]}, the "
                f"most the HomomorphicEncryption.org standard allows for 128-bit security at "
                f"N = {n}"
            )
        if not 10 <= int(self.scale_bits) < self.data_bits - 1:
            raise InputError(
                f"scale_bits must lie in [10, {self.data_bits - 1}), got {self.scale_bits!r}"
            )

    @property
    def slots(self) -> int:
        """Values per ciphertext, N/2."""
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        """Bits of the modulus a fresh ciphertext lives in (every prime but the special)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def security_bits(self) -> int:
        """128: the parameters are inside the standard's 128-bit table (checked at init)."""
        return 128

    def to_dict(self) -> dict[str, Any]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CKKSParams:
        return cls(
            int(d["poly_modulus_degree"]),
            tuple(int(b) for b in d["coeff_mod_bit_sizes"]),
            int(d["scale_bits"]),
        )


class CKKSBackend:
    """A TenSEAL CKKS context, public (encrypt, add) or secret (also decrypt).

    Args:
        context: a ``tenseal.Context`` (CKKS).
        params: the parameters it was made with.

    Build with :meth:`generate` (a fresh key pair), :meth:`from_bytes` (a serialised
    context) or :meth:`public` (the same keys without the secret one).
    """

    name = "ckks-tenseal"

    def __init__(self, context: Any, params: CKKSParams) -> None:
        self._ctx = context
        self.params = params
        self.slots = params.slots

    # ------------------------------------------------------------------ keys and contexts
    @classmethod
    def generate(cls, params: CKKSParams | None = None) -> CKKSBackend:
        """A fresh key pair (SEAL's system randomness: keys are never derived from a seed)."""
        ts = _tenseal()
        p = params if params is not None else CKKSParams()
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            p.poly_modulus_degree,
            coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
        )
        ctx.global_scale = float(2**p.scale_bits)
        return cls(ctx, p)

    @classmethod
    def from_bytes(cls, data: bytes, params: CKKSParams) -> CKKSBackend:
        ts = _tenseal()
        try:
            ctx = ts.context_from(data)
        except Exception as e:  # TenSEAL raises bare ValueError/RuntimeError on bad bytes
            raise DataError(f"not a serialised TenSEAL context ({e})") from e
        ctx.global_scale = float(2**params.scale_bits)
        return cls(ctx, params)

    @property
    def has_secret_key(self) -> bool:
        return bool(self._ctx.has_secret_key())

    def public(self) -> CKKSBackend:
        """The same public and evaluation keys, with the secret key dropped."""
        ctx = self._ctx.copy()
        ctx.make_context_public()
        return CKKSBackend(ctx, self.params)

    def public_bytes(self) -> bytes:
        """The serialised public context: parameters and the public key only.

        No secret key, and no relinearisation or Galois keys either: the gallery never
        multiplies or rotates, so the matching side needs no evaluation keys. (The bytes
        are a deterministic function of the key pair, so they also name it: the key id.)
        """
        return self._ctx.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )

    def secret_bytes(self) -> bytes:
        """The whole context, secret key included (the key holder's key file only)."""
        if not self.has_secret_key:
            raise InputError("this context holds no secret key")
        return self._ctx.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=True, save_relin_keys=True
        )

    # ------------------------------------------------------------------------ ciphertexts
    def encrypt(self, values: np.ndarray) -> Any:
        """Encrypt ``values`` (at most :attr:`slots` reals) under the public key."""
        ts = _tenseal()
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size > self.slots:
            raise InputError(f"{v.size} values exceed the {self.slots} slots of a ciphertext")
        return ts.ckks_vector(self._ctx, v.tolist())

    @staticmethod
    def add_(acc: Any, other: Any) -> None:
        acc.add_(other)

    @staticmethod
    def sub_(acc: Any, other: Any) -> None:
        acc.sub_(other)

    @staticmethod
    def combine(a: Any, b: Any, sign_a: int, sign_b: int) -> Any:
        """A new ciphertext ``sign_a * a + sign_b * b``.

        (``CKKSVector.copy`` costs milliseconds; an out-of-place add costs microseconds.)
        """
        if sign_a > 0:
            return a + b if sign_b > 0 else a - b
        return (b - a) if sign_b > 0 else (-a) - b

    @staticmethod
    def dumps(ct: Any) -> bytes:
        return ct.serialize()

    def loads(self, data: bytes) -> Any:
        ts = _tenseal()
        try:
            return ts.ckks_vector_from(self._ctx, data)
        except Exception as e:
            raise DataError(f"not a serialised CKKS ciphertext of this context ({e})") from e

    def decrypt(self, ct: Any) -> np.ndarray:
        """Slot values of ``ct``; raises :class:`InputError` without the secret key."""
        if not self.has_secret_key:
            raise InputError("decryption needs the secret key; this context is public")
        return np.asarray(ct.decrypt(), dtype=np.float64)

    def ciphertext_bytes(self) -> int:
        """In-memory size of one fresh ciphertext: 2 polynomials x N x data primes x 8 B."""
        return 2 * self.params.poly_modulus_degree * (len(self.params.coeff_mod_bit_sizes) - 1) * 8
