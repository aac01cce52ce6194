"""Wycheproof JSON Web Signature vectors against the daemon's JWS verification.

Every ``invalid`` vector must be refused: with a TokenFault when the daemon supports the vector's
key, or already when the key is loaded (the daemon holds only ES256, RS256, EdDSA and HS256 keys,
each bound to one algorithm). ``valid`` vectors for supported keys must verify: that shows the
keys are built correctly, so the refusals are not an accident of a broken harness.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ostiary.faults import TokenFault
from ostiary.tokens.jwt import VerifyKey, verify_compact

VECTORS = Path(__file__).resolve().parent.parent / "data" / "wycheproof" / "json_web_signature_test.json"

# Vectors whose label does not match their content (other Wycheproof consumers skip these four
# as defective); we pin what the daemon does with each instead of skipping them.
LABEL_MISMATCH: dict[tuple[str, int], tuple[bool, str]] = {
    # (group comment, tcId): (accepted?, why)
    ("base64", 367): (True, "byte-identical to tc357 ValidMac (valid): the padding is not in the stored string"),
    ("base64", 370): (True, "byte-identical to tc357 ValidMac (valid): the padding is not in the stored string"),
    ("base64", 372): (False, "labelled valid, but contains '?': not base64url, refused"),
    ("base64", 373): (False, "labelled valid, but contains '?': not base64url, refused"),
}
# Valid by the JWS spec, refused on purpose: an access token always carries claims.
STRICTER: dict[tuple[str, int], str] = {("rs256", 259): "empty payload"}


def _cases() -> list[Any]:
    data = json.loads(VECTORS.read_text())
    cases = []
    for index, group in enumerate(data["testGroups"]):
        jwk = group.get("public") or group.get("private")
        for test in group["tests"]:
            if test["result"] == "acceptable":
                continue
            case_id = f"g{index}-{group['comment']}-tc{test['tcId']}-{test['result']}"
            cases.append(pytest.param(jwk, test, group["comment"], id=case_id))
    return cases


CASES = _cases()


def _key(jwk: dict[str, Any]) -> VerifyKey | None:
    try:
        return VerifyKey.from_jwk(jwk)
    except ValueError:
        return None


def test_vector_file_is_complete() -> None:
    data = json.loads(VECTORS.read_text())
    by_id = {t["tcId"]: t for g in data["testGroups"] if g["comment"] == "base64" for t in g["tests"]}
    # The two "invalid" vectors pinned as accepted are the very same string as a "valid" one.
    assert by_id[357]["result"] == "valid"
    assert by_id[367]["jws"] == by_id[370]["jws"] == by_id[357]["jws"]
    total = sum(len(g["tests"]) for g in data["testGroups"])
    assert total == data["numberOfTests"] == 401
    invalid = [c for c in CASES if c.values[1]["result"] == "invalid"]
    # Only two vectors labelled invalid are pinned as accepted, each explained in LABEL_MISMATCH.
    assert sum(1 for accepted, _ in LABEL_MISMATCH.values() if accepted) == 2
    assert len(invalid) == 355
    supported = [c for c in invalid if _key(c.values[0]) is not None]
    # Most invalid vectors target algorithms the daemon supports: they must reach the verifier.
    assert len(supported) > 250, len(supported)


@pytest.mark.parametrize(("jwk", "test", "group"), CASES)
def test_wycheproof_vector(jwk: dict[str, Any], test: dict[str, Any], group: str) -> None:
    key = _key(jwk)
    jws = test["jws"] if isinstance(test["jws"], str) else json.dumps(test["jws"])
    pinned = LABEL_MISMATCH.get((group, test["tcId"]))
    if pinned is not None:
        assert key is not None
        accepted, why = pinned
        if accepted:
            assert verify_compact(jws, key) is not None, why
        else:
            with pytest.raises(TokenFault):
                verify_compact(jws, key)
        return
    if (group, test["tcId"]) in STRICTER:
        assert key is not None
        with pytest.raises(TokenFault):
            verify_compact(jws, key)
        return
    if test["result"] == "invalid":
        if key is None:
            # Refused before any token is looked at: such a key cannot be loaded at all.
            with pytest.raises(ValueError):
                VerifyKey.from_jwk(jwk)
            return
        with pytest.raises(TokenFault) as refused:
            verify_compact(jws, key)
        assert refused.value.code in ("MALFORMED", "ALG_NOT_ALLOWED", "SIG_MISMATCH")
        return
    if key is None:
        # A valid signature under an algorithm the daemon does not offer: loading the key refuses.
        with pytest.raises(ValueError):
            VerifyKey.from_jwk(jwk)
        return
    payload = verify_compact(jws, key)
    assert payload is not None
