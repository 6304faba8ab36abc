#!/usr/bin/env python3
"""Opens N keep-alive connections to ADDR, sends one request on each, reads the response, and
holds them all open until the server's RSS has been read. Prints the statuses seen and the RSS
(VmRSS summed over every --pid: nginx's master and workers) before and with the connections.

    python3 bench/hold_conns.py 127.0.0.1:18090 5000 --pid PID [--pid PID...]
"""
import argparse, asyncio, collections, resource

REQ = (b"GET /plain HTTP/1.1\r\nHost: 127.0.0.1\r\n"
       b"Cookie: cookies_preferences=%7B%22necessary%22%3Atrue%7D; sessionid=abc\r\n\r\n")

async def one(host, port, statuses, conns):
    r, w = await asyncio.open_connection(host, port)
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
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = a.addr.rsplit(":", 1)
    statuses, conns = collections.Counter(), []
    before = rss_kib(a.pid, "VmRSS")
    sem = asyncio.Semaphore(a.concurrency)
    async def guarded():
        async with sem:
            await one(host, int(port), statuses, conns)
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
