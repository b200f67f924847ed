"""Clients that ask and never read, as slow remote clients look (a 4 KiB receive buffer,
Ethernet's 1460-byte segments): each of N connections sends one request and then holds
the connection open without reading, so whatever kvserve made for it waits in the server.

Run: python3 benches/load/slow_readers.py HOST:PORT PID N SECONDS REQUEST_FILE...
Each connection sends the next request file's bytes in turn. Samples the server's RSS
(/proc/PID/status) every 0.5 s while the connections are held and prints one JSON line:
{"connections", "rss_before_kib", "rss_max_kib", "rss_last_kib", "refused"}.
"""

import json
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    pid, count, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    requests = [open(path, "rb").read() for path in sys.argv[5:]]
    before = rss_kib(pid)
    held, refused = [], 0
    for i in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
        try:
            sock.connect((host, int(port)))
            sock.sendall(requests[i % len(requests)])
            held.append(sock)
        except OSError:
            refused += 1
            sock.close()
    peak = last = rss_kib(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        last = rss_kib(pid)
        peak = max(peak, last)
    for sock in held:
        sock.close()
    print(json.dumps({
        "connections": len(held),
        "rss_before_kib": before,
        "rss_max_kib": peak,
        "rss_last_kib": last,
        "refused": refused,
    }))


if __name__ == "__main__":
    main()
