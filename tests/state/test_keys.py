"""The Redis key layout campaign engines read: exact strings, braces included."""

from __future__ import annotations

import pytest

from state.keys import Keys


def test_default_layout() -> None:
    k = Keys()
    assert k.prefix == "seg:"
    assert k.user("u42") == "seg:user:{u42}"
    assert k.state("u42") == "seg:user:{u42}:state"
    assert k.members(1) == "seg:segment:{1}:members"
    assert k.members(0) == "seg:segment:{0}:members"
    assert k.segments == "seg:segments"
    assert k.model == "seg:model"
    assert k.model_versions == "seg:model:versions"


def test_custom_prefix() -> None:
    k = Keys("shopA:")
    assert k.user("u1") == "shopA:user:{u1}"
    assert k.members(12) == "shopA:segment:{12}:members"
    assert k.segments == "shopA:segments"
    assert k.model == "shopA:model"
    assert k.model_versions == "shopA:model:versions"


def test_empty_prefix() -> None:
    assert Keys("").user("u1") == "user:{u1}"


@pytest.mark.parametrize(
    ("user_id", "key"),
    [
        ("a:b", "seg:user:{a:b}"),
        ("ü-1", "seg:user:{ü-1}"),
        ("with space", "seg:user:{with space}"),
        ("{x}", "seg:user:{{x}}"),
    ],
)
def test_user_ids_are_used_verbatim(user_id: str, key: str) -> None:
    assert Keys().user(user_id) == key


def test_hash_tags_are_the_user_id_and_the_segment() -> None:
    # Redis Cluster hashes the text between the first "{" and the next "}".
    def tag(key: str) -> str:
        start = key.index("{") + 1
        return key[start : key.index("}", start)]

    k = Keys()
    assert tag(k.user("u42")) == "u42"
    assert tag(k.members(7)) == "7"


def test_a_users_state_shares_the_hash_slot_of_their_hash() -> None:
    k = Keys()
    assert k.state("u42") == "seg:user:{u42}:state"
    # Redis Cluster hashes only what is inside the first braces: the same for both keys.
    assert k.state("u42").split("{")[1].split("}")[0] == "u42"


def test_keys_are_frozen_values() -> None:
    assert Keys("p:") == Keys("p:")
    with pytest.raises(AttributeError):
        Keys().prefix = "x:"  # type: ignore[misc]
