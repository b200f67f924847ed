"""Generated request targets for the legacy-compat check (run.py `legacy_compat`).

Every target is what goes on the wire after `GET `: ASCII, non-ASCII characters and
bytes that are not UTF-8 percent-encoded. Seeded, so a run is reproducible; a few
thousand targets, each sent to the old FastAPI service and to kvserve.
"""

import random
import uuid

# Characters a one-character mutation may use: UUID text, its near misses, the
# characters of the braced and URN forms, a separator, escapes (valid, lone, not hex,
# `?` and `#` escaped) and non-ASCII text percent-encoded.
ALPHABET = list("0123456789abcdefABCDEFgGzZ-_{}:.~!$&'()*+,;=@") + [
    "/", "%", "%2F", "%2f", "%20", "%3F", "%23", "%5C", "%zz", "%C3%A9", "%E2%98%83",
    "%E8", "%FF", "%C3", "%ED%A0%80", "%F0%9F%98",
]

# Byte runs that are not UTF-8 (lone continuation and lead bytes, truncated and
# overlong sequences, surrogates, beyond U+10FFFF) and some that are.
UTF8_BYTES = [
    b"\x80", b"\xbf", b"\xc0\xaf", b"\xc3", b"\xc3(", b"\xe2\x82", b"\xe2\x82(", b"\xe8",
    b"\xed\xa0\x80", b"\xef\xbf\xbd", b"\xf0\x80\x80\xaf", b"\xf0\x9f\x98", b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80", b"\xfe\xff", b"\xc3\xa9", b"\xe2\x98\x83", b"\xf0\x9f\x98\x80",
]


def escape(data: bytes) -> str:
    """Every byte as %XX (upper or lower case hex: the decoder takes both)."""
    return "".join(f"%{b:02X}" for b in data)


def forms(key: str) -> list[str]:
    """The spellings pydantic's UUID parser takes, and case changes."""
    lower = key.lower()
    return [lower, key.upper(), lower.replace("-", ""), "{" + lower + "}", "urn:uuid:" + lower,
            "%7B" + lower + "%7D", lower[:8].upper() + lower[8:], escape(lower.encode())]


def mutations(key: str, rng: random.Random, count: int) -> list[str]:
    """`count` one-character substitutions, deletions and insertions of `key`."""
    out = []
    for _ in range(count):
        at = rng.randrange(len(key) + 1)
        kind = rng.choice(["sub", "del", "ins"])
        char = rng.choice(ALPHABET)
        if kind == "sub" and at < len(key):
            out.append(key[:at] + char + key[at + 1:])
        elif kind == "del" and at < len(key):
            out.append(key[:at] + key[at + 1:])
        else:
            out.append(key[:at] + char + key[at:])
    return out


def versions(rng: random.Random) -> list[str]:
    """Every version nibble 0-15 with every variant class, plus nil and max."""
    out = [str(uuid.UUID(int=0)), str(uuid.UUID(int=(1 << 128) - 1))]
    for version in range(16):
        for variant in "0478acef":
            raw = f"{rng.getrandbits(128):032x}"
            raw = raw[:12] + f"{version:x}" + raw[13:16] + variant + raw[17:]
            out.append(str(uuid.UUID(raw)))
    return out


def not_utf8(rng: random.Random, count: int) -> list[str]:
    """Keys with byte runs that are not UTF-8 (and some that are), among text."""
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.5:
                parts.append(escape(rng.choice(UTF8_BYTES)))
            else:
                parts.append("".join(rng.choice("0123456789abcdefnB{-") for _ in range(rng.randint(0, 6))))
        out.append("".join(parts))
    return out


def targets(keys: list[str], seed: int = 16) -> list[str]:
    """The request targets: generated keys in the legacy route, its trailing-slash and
    doubled-slash forms, queries on some, and the paths around the route."""
    rng = random.Random(seed)
    generated: list[str] = []
    for key in keys:
        generated += forms(key)
        generated += mutations(key, rng, 60)
    for key in versions(rng):
        generated += [key, key.upper(), "{" + key + "}", "urn:uuid:" + key, key.replace("-", "")]
    generated += not_utf8(rng, 150)
    generated += ["abc", "x" * 100, "a" * 5000, "%", "%%", "%2", "%zz", "~", "."]

    paths = [f"/get_value/{key}" for key in generated]
    # Trailing slashes (the 307), doubled ones, an encoded one, an extra segment.
    for key in rng.sample(generated, 150):
        tail = rng.choice(["/", "//", "///", "%2F", "%2f/", "/x", "/x/", "/;x"])
        paths.append(f"/get_value/{key}{tail}")
    paths += ["/get_value", "/get_value/", "/get_value//", "/get_value///", "/get_value/%2F",
              "/get_value%2F" + keys[0], "/get_value%2f" + keys[0] + "/", "/get_value/./" + keys[0],
              "/get_value/../get_value/" + keys[0]]
    # Queries, kept on a redirect (raw, as the client wrote them).
    queries = ["?a=1", "?a=1&b=%20", "?q=%7B{}|^`", "?", "?x=%E8", "?%2F=/"]
    for path in rng.sample(paths, 200):
        paths.append(path + rng.choice(queries))
    return paths
