#!/usr/bin/env python3
"""Opens N keep-alive connections to ADDR, sends one request on each, reads the response, and
holds them all open until the server's RSS has been read. Prints the statuses seen and the RSS
(VmRSS summed over every --pid: nginx's master and workers) before and with the connections.

    python3 bench/hold_conns.py 127.0.0.1:18090 5000 --pid PID [--pid PID...]

--tls speaks HTTP/1.1 over TLS (certificate not checked); --h2 speaks HTTP/2 over TLS (ALPN h2,
one stream per connection, then the connection stays open without a stream).
"""
import argparse, asyncio, collections, functools, resource, ssl, struct

REQ = (b"GET /plain HTTP/1.1\r\nHost: 127.0.0.1\r\n"
       b"Cookie: cookies_preferences=%7B%22necessary%22%3Atrue%7D; sessionid=abc\r\n\r\n")

@functools.lru_cache(maxsize=None)
def tls_context(alpn):
    # One context per protocol: a context per connection loads the CA store each time (~0.7 MB
    # apiece, 3.5 GB for 5,000 connections).
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx

def h2_frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

def hpack_literal(index, value):
    """A literal header field without indexing, its name from the static table."""
    v = value.encode()
    assert len(v) < 127
    if index < 15:
        prefix = bytes([index])
    else:
        prefix = bytes([15, index - 15])
    return prefix + bytes([len(v)]) + v

H2_HEADERS = (bytes([0x82])  # :method GET
              + bytes([0x87])  # :scheme https
              + hpack_literal(4, "/plain")  # :path
              + hpack_literal(1, "127.0.0.1")  # :authority
              + hpack_literal(32, "cookies_preferences=%7B%22necessary%22%3Atrue%7D"))  # cookie

async def one_h2(host, port, statuses, conns):
    r, w = await asyncio.open_connection(host, port, ssl=tls_context("h2"))
    w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0)
            + h2_frame(1, 0x5, 1, H2_HEADERS))  # HEADERS, END_STREAM | END_HEADERS
    await w.drain()
    status = None
    while True:
        head = await r.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await r.readexactly(length)
        if kind == 4 and not flags & 1:
            w.write(h2_frame(4, 1, 0))  # SETTINGS ACK
        if kind == 1 and stream == 1 and status is None:
            # The response's first header: the server's HPACK encodes :status 200 as index 8.
            status = "200" if payload[:1] == b"\x88" else "other"
        if stream == 1 and kind in (0, 1) and flags & 1:
            break
        if kind == 7:  # GOAWAY
            status = "goaway"
            break
    statuses[status or "none"] += 1
    conns.append(w)

async def one(host, port, statuses, conns, mode="h1"):
    if mode == "h2":
        return await one_h2(host, port, statuses, conns)
    ctx = tls_context("http/1.1") if mode == "tls" else None
    r, w = await asyncio.open_connection(host, port, ssl=ctx)
    w.write(REQ)
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    statuses[head.split(b" ", 2)[1].decode()] += 1
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    conns.append(w)

def rss_kib(pids, field):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith(field):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total

async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("n", type=int)
    ap.add_argument("--pid", type=int, action="append", required=True,
                    help="a process of the server (repeat for each: nginx master and workers)")
    ap.add_argument("--concurrency", type=int, default=500, help="connections being opened at once")
    ap.add_argument("--hold", type=float, default=1.0, help="seconds to hold them before reading the RSS")
    ap.add_argument("--tls", action="store_true", help="HTTP/1.1 over TLS")
    ap.add_argument("--h2", action="store_true", help="HTTP/2 over TLS")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = a.addr.rsplit(":", 1)
    statuses, conns = collections.Counter(), []
    before = rss_kib(a.pid, "VmRSS")
    sem = asyncio.Semaphore(a.concurrency)
    async def guarded():
        async with sem:
            await one(host, int(port), statuses, conns, "h2" if a.h2 else "tls" if a.tls else "h1")
    await asyncio.gather(*(guarded() for _ in range(a.n)))
    await asyncio.sleep(a.hold)
    held = rss_kib(a.pid, "VmRSS")
    per = (held - before) / max(len(conns), 1)
    print(f"connections held: {len(conns)}  statuses: {dict(statuses)}")
    print(f"RSS before: {before/1024:.1f} MiB, with {len(conns)} keep-alive connections: {held/1024:.1f} MiB, "
          f"peak (VmHWM): {rss_kib(a.pid, 'VmHWM')/1024:.1f} MiB, per connection: {per:.2f} KiB "
          f"(opened {a.concurrency} at a time)")
    for w in conns:
        w.close()

asyncio.run(main())
