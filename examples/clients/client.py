#!/usr/bin/env python3
"""A kvserve client in Python (requests): single and batch lookups, 404, 429 with
Retry-After, and conditional requests with the ETag. Run against a server:

    python3 examples/clients/client.py http://127.0.0.1:8000 [TOKEN]

It exits non-zero if an answer is not what the contract says (CI runs it).
"""

import sys
import time

import requests

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
session = requests.Session()
if len(sys.argv) > 2:
    session.headers["Authorization"] = f"Bearer {sys.argv[2]}"


def send(method: str, path: str, **kwargs) -> requests.Response:
    """One request, retried while the server says 429 or 503, as long as it asks."""
    for _ in range(10):
        resp = session.request(method, BASE + path, timeout=10, **kwargs)
        if resp.status_code not in (429, 503):
            return resp
        time.sleep(int(resp.headers.get("Retry-After", "1")))
    return resp


def get_value(key: str) -> str | None:
    resp = send("GET", f"/v1/keys/{key}")
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    return resp.json()["value"]


def get_many(keys: list[str]) -> tuple[dict[str, str], list[str]]:
    resp = send("POST", "/v1/keys/batch", json={"keys": keys})
    resp.raise_for_status()
    body = resp.json()
    return body["values"], body["missing"]


if __name__ == "__main__":
    key = "72cf48f7-d604-4423-b012-4e2329f5117b"  # in data/sample.data
    missing = "00000000-0000-0000-0000-000000000000"

    value = get_value(key)
    assert value, "the sample key has a value"
    assert get_value(missing) is None, "an unknown key is None (404)"

    values, absent = get_many([key, missing])
    assert values == {key: value} and absent == [missing], (values, absent)

    # Conditional request: send the ETag back; 304 means the copy is current.
    first = send("GET", f"/v1/keys/{key}")
    again = send("GET", f"/v1/keys/{key}", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.headers["ETag"] == first.headers["ETag"]

    # Bad input is a problem+json naming the parameter.
    bad = send("GET", "/v1/keys/not-a-uuid")
    assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/problem+json"
    assert "`key`" in bad.json()["detail"]

    # Rate limited servers answer 429 with Retry-After; `send` waits and retries.
    for _ in range(20):
        assert get_value(key) == value
    print("python client: all answers as documented")
