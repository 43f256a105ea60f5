"""Keyed pseudonymisation of user ids (pure: no I/O).

With ``pseudonymise_user_ids`` on, the segmenter replaces every user id by its pseudonym
right after decoding, so Redis keys, membership sets and the output topics (the message
field ``user_id`` and the Kafka key) only ever hold pseudonyms. The pseudonym is a keyed
hash, HMAC-SHA256 with a secret from the environment: the same id always gives the same
pseudonym (so a user's state and segment stay theirs across events, restarts and
processes), and without the secret nobody can compute it from a known id, nor confirm a
guess of which id is behind a pseudonym, as they could with a plain hash.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from functools import partial

#: Hex characters kept of the HMAC-SHA256 digest: 128 bits, so the chance of two ids of
#: even a billion users colliding is about 1e-21, at half the bytes of the full digest
#: in every key, set member and message that holds one (RFC 2104 allows truncating an
#: HMAC to half its length).
PSEUDONYM_HEX_CHARS = 32
#: The shortest secret accepted (bytes of its UTF-8 encoding): 128 bits of key.
MIN_SECRET_BYTES = 16


def pseudonymise(secret: bytes, user_id: str) -> str:
    """The pseudonym of ``user_id`` under ``secret``: fixed-length lower-case hex.

    Parameters
    ----------
    secret
        The key of the HMAC, at least :data:`MIN_SECRET_BYTES` long. Changing it changes
        every pseudonym: the segmenter then sees every user as new.
    user_id
        The raw user id, as it appears in the input events (encoded as UTF-8).

    Returns
    -------
    str
        The first :data:`PSEUDONYM_HEX_CHARS` hex digits of HMAC-SHA256(secret, user_id).

    Examples
    --------
    >>> p = pseudonymise(b"0123456789abcdef", "u42")
    >>> p
    '6991c84fcc5c109a790d76af983074a4'
    >>> len(p) == PSEUDONYM_HEX_CHARS, p == pseudonymise(b"0123456789abcdef", "u42")
    (True, True)
    >>> pseudonymise(b"another secret, 16+ bytes", "u42") == p
    False
    """
    digest = hmac.digest(secret, user_id.encode(), hashlib.sha256)
    return digest.hex()[:PSEUDONYM_HEX_CHARS]


def user_id_mapper(secret: str | None) -> Callable[[str], str] | None:
    """The function from raw user ids to the ids the segmenter stores, or ``None`` when
    ids are stored as they are (no secret: pseudonymisation off).

    Examples
    --------
    >>> user_id_mapper(None) is None
    True
    >>> user_id_mapper("0123456789abcdef")("u42")
    '6991c84fcc5c109a790d76af983074a4'
    """
    if secret is None:
        return None
    return partial(pseudonymise, secret.encode())
