#!/usr/bin/env python3
"""Real-client check of kvserve's TLS listeners: curl and Python's ssl/urllib.

Certificates are made here with Python `cryptography` (pulled in by pyjwt[crypto]):
a CA, a server certificate for 127.0.0.1/localhost, an expired one, one for another
host, a self-signed one, and client certificates from a client CA and from a stranger.
Then, against the real binary on loopback ports:
  - curl --cacert and urllib with a context trusting the CA get 200 and the value,
  - both refuse the expired, wrong-host and self-signed server certificates with a
    certificate error (curl exit 60, ssl.SSLCertVerificationError),
  - plain HTTP to the TLS port fails and the server keeps serving,
  - with --admin-client-ca, the admin listener answers curl/ssl presenting a
    certificate from the client CA, and refuses none and a stranger's.

Usage: tls_check.py KVSERVE_BINARY   (or import it and call check(binary))
"""

import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "sample.data"
KEY = "72cf48f7-d604-4423-b012-4e2329f5117b"  # in data/sample.data

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Issuer:
    """A key and the certificate it signs with (a CA, or a self-signed leaf)."""

    def __init__(self, cn: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def leaf(self, cn: str, hosts: list[str], usage, expired: bool = False):
        key = ec.generate_private_key(ec.SECP256R1())
        names = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        before, after = (NOW - 400 * DAY, NOW - 300 * DAY) if expired else (NOW - DAY, NOW + 30 * DAY)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(before).not_valid_after(after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def write_pair(folder: Path, name: str, cert, key) -> tuple[str, str]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def write_cert(folder: Path, name: str, cert) -> str:
    path = folder / name
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


class Server:
    """kvserve on two free loopback ports with `extra`, stopped on exit; ready when
    `ready()` (a callable) returns True."""

    def __init__(self, binary: str, extra: list[str]):
        self.api, self.admin = free_port(), free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [binary, "--data", str(DATA), "--addr", f"127.0.0.1:{self.api}",
             "--admin-addr", f"127.0.0.1:{self.admin}", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, ready) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvserve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"kvserve not ready within 30s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def plain_ready(server: Server) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.admin}/readyz", timeout=5) as resp:
            return resp.status == 200
    except urllib.error.URLError:
        return False


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "10", *args],
                          capture_output=True, text=True, timeout=30)


def urlopen(url: str, context: ssl.SSLContext) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:
        return resp.status, resp.read().decode()


def check(binary: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ca = Issuer("kvserve external CA")
        ca_file = write_cert(folder, "ca.crt", ca.cert)
        server_auth = ExtendedKeyUsageOID.SERVER_AUTH
        hosts = ["127.0.0.1", "localhost"]
        trusting = ssl.create_default_context(cafile=ca_file)

        # Trusted: curl and urllib get the value; plain HTTP to the port fails cleanly.
        good = write_pair(folder, "good", *ca.leaf("kvserve", hosts, server_auth))
        with Server(binary, ["--tls-cert", good[0], "--tls-key", good[1]]) as server:
            server.wait(lambda: plain_ready(server))
            for host in ("127.0.0.1", "localhost"):
                url = f"https://{host}:{server.api}/v1/keys/{KEY}/value"
                done = curl("--cacert", ca_file, "--write-out", "\n%{http_code} %{http_version}", url)
                assert done.returncode == 0, f"curl {url}: {done.returncode} {done.stderr}"
                body, _, code = done.stdout.rpartition("\n")
                assert code == "200 1.1" and body, f"curl {url}: {code!r} {body!r}"
                status, text = urlopen(url, trusting)
                assert (status, text) == (200, body), f"urllib {url}: {status} {text!r}"
            print("  curl --cacert and urllib (ssl, CA-trusting context) get 200 over https")
            plain = curl(f"http://127.0.0.1:{server.api}/v1/keys/{KEY}")
            assert plain.returncode != 0, f"plain HTTP was answered: {plain.stdout!r}"
            done = curl("--cacert", ca_file, f"https://127.0.0.1:{server.api}/v1/keys/{KEY}")
            assert done.returncode == 0 and server.proc.poll() is None, done
            first = plain.stderr.strip().splitlines()[:1]
            print(f"  plain HTTP to the TLS port fails (curl exit {plain.returncode}: {first}); "
                  "the server keeps serving")

        # Refused by the client: expired, wrong host, self-signed.
        stranger = Issuer("a stranger")
        cases = [
            ("expired", ca.leaf("expired", hosts, server_auth, expired=True), "expired"),
            ("wrong-host", ca.leaf("wrong host", ["other.example"], server_auth), "mismatch"),
            ("self-signed", stranger.leaf("self-signed", hosts, server_auth), "issuer"),
        ]
        for name, (cert, key), why in cases:
            pair = write_pair(folder, name, cert, key)
            with Server(binary, ["--tls-cert", pair[0], "--tls-key", pair[1]]) as server:
                server.wait(lambda: plain_ready(server))
                url = f"https://127.0.0.1:{server.api}/v1/keys/{KEY}"
                done = curl("--cacert", ca_file, url)
                assert done.returncode == 60, f"curl, {name}: exit {done.returncode} {done.stderr}"
                try:
                    urlopen(url, trusting)
                    raise AssertionError(f"urllib accepted the {name} certificate")
                except urllib.error.URLError as err:
                    reason = err.reason
                    assert isinstance(reason, ssl.SSLCertVerificationError), f"{name}: {reason!r}"
                    assert why in reason.verify_message, f"{name}: {reason.verify_message}"
                first = done.stderr.strip().splitlines()[0]
                print(f"  {name}: curl exit 60 ({first}); ssl: {reason.verify_message}")

        # Client certificates on the admin listener.
        clients = Issuer("kvserve clients")
        clients_file = write_cert(folder, "clients.crt", clients.cert)
        member = write_pair(folder, "member", *clients.leaf("prober", [], ExtendedKeyUsageOID.CLIENT_AUTH))
        intruder = write_pair(folder, "intruder",
                              *stranger.leaf("intruder", [], ExtendedKeyUsageOID.CLIENT_AUTH))
        admin = write_pair(folder, "admin", *ca.leaf("kvserve admin", hosts, server_auth))
        flags = ["--admin-tls-cert", admin[0], "--admin-tls-key", admin[1],
                 "--admin-client-ca", clients_file]

        def with_cert(pair) -> ssl.SSLContext:
            context = ssl.create_default_context(cafile=ca_file)
            if pair:
                context.load_cert_chain(pair[0], pair[1])
            return context

        with Server(binary, flags) as server:
            url = f"https://127.0.0.1:{server.admin}/readyz"
            server.wait(lambda: urlopen(url, with_cert(member))[0] == 200)
            done = curl("--cacert", ca_file, "--cert", member[0], "--key", member[1], url)
            assert done.returncode == 0, f"curl with the client certificate: {done.stderr}"
            for name, pair in (("no certificate", None), ("a stranger's certificate", intruder)):
                args = ["--cacert", ca_file, url] + (["--cert", pair[0], "--key", pair[1]] if pair else [])
                done = curl(*args)
                assert done.returncode != 0, f"curl with {name} was answered: {done.stdout!r}"
                try:
                    urlopen(url, with_cert(pair))
                    raise AssertionError(f"ssl with {name} was answered")
                except (ssl.SSLError, urllib.error.URLError, ConnectionError) as err:
                    refusal = err
                print(f"  admin, {name}: curl exit {done.returncode}, ssl: {refusal!r}"[:200])
            print("  admin with --admin-client-ca: curl and ssl with a CA-signed client certificate get 200")


if __name__ == "__main__":
    check(sys.argv[1])
    print("tls check passed")
