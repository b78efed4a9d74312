"""An app verifying otpgate's identity assertion the way its README shows, with PyJWT.

Usage: verify_assertion.py JWKS_URL HOST AUDIENCE OTHER_AUDIENCE TOKEN

Fetches the JWKS from JWKS_URL (sending `Host: HOST`, so the gateway's plain-http listener
routes it to the app), picks the key named by the token's `kid`, and prints one JSON object:
the verified claims and the key id, and how the same token fares against another app's
audience, with one claim altered, and once it has expired.
"""

import base64
import json
import sys

import jwt


def main() -> None:
    url, host, audience, other_audience, token = sys.argv[1:6]
    client = jwt.PyJWKClient(url, headers={"Host": host}, cache_keys=False)
    key = client.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=audience,
        options={"require": ["iss", "aud", "sub", "iat", "exp"]},
    )
    result = {"claims": claims, "kid": key.key_id}

    try:
        jwt.decode(token, key.key, algorithms=["ES256"], audience=other_audience)
        result["other_audience"] = "accepted"
    except jwt.InvalidAudienceError:
        result["other_audience"] = "refused"

    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["sub"] = "mallory"
    forged_body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    try:
        jwt.decode(f"{head}.{forged_body}.{sig}", key.key, algorithms=["ES256"], audience=audience)
        result["forged"] = "accepted"
    except jwt.InvalidSignatureError:
        result["forged"] = "refused"

    # A negative leeway moves the verifier's clock past `exp`: the token must be refused then.
    try:
        jwt.decode(
            token,
            key.key,
            algorithms=["ES256"],
            audience=audience,
            leeway=-(claims["exp"] - claims["iat"] + 5),
            options={"verify_iat": False},
        )
        result["after_exp"] = "accepted"
    except jwt.ExpiredSignatureError:
        result["after_exp"] = "refused"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
