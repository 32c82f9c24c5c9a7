#!/usr/bin/env python3
"""Abusive load for bench/service.sh, from loopback addresses other than 127.0.0.1.

hold:  keeps IDLE connections that send nothing, SLOW ones that send a header byte every 2 s,
       and SSE event streams of one build open, reconnecting whatever the server closes, and
       prints how many of each are open once a second ("held idle N slow N sse N").
flood: header floods: CONNECTIONS connections each sending 1 KB header lines as fast as the
       server reads them, reconnecting when it closes; prints how many bytes it sent.
Runs until SECONDS pass. Standard library only.
"""
import argparse
import asyncio
import sys
import time


def addresses(first, count):
    base = first.split(".")
    return [f"{base[0]}.{base[1]}.{int(base[2]) + (int(base[3]) + i) // 250}.{(int(base[3]) + i) % 250 + 1}"
            for i in range(count)]


class Counts:
    def __init__(self):
        self.open = {"idle": 0, "slow": 0, "sse": 0}
        self.refused = 0
        self.sent = 0


async def connect(port, source):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def keep(kind, port, source, counts, until, request=b""):
    while time.monotonic() < until:
        try:
            reader, writer = await connect(port, source)
        except OSError:
            counts.refused += 1
            await asyncio.sleep(0.5)
            continue
        counts.open[kind] += 1
        try:
            if request:
                writer.write(request)
                await writer.drain()
            while time.monotonic() < until:
                if kind == "slow":
                    writer.write(b"a")
                    await writer.drain()
                    await asyncio.sleep(2)
                    if reader.at_eof():
                        break
                else:
                    data = await asyncio.wait_for(reader.read(65536), timeout=max(0.1, until - time.monotonic()))
                    if not data:
                        break
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            counts.open[kind] -= 1
            writer.close()
        await asyncio.sleep(0.05)


async def flood(port, source, counts, until):
    line = b"X-Flood: " + b"a" * 1013 + b"\r\n"
    chunk = line * 64
    while time.monotonic() < until:
        try:
            _, writer = await connect(port, source)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        try:
            writer.write(b"GET /api/v1/health HTTP/1.1\r\n")
            while time.monotonic() < until:
                writer.write(chunk)
                await writer.drain()
                counts.sent += len(chunk)
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()


async def report(counts, until, mode):
    while time.monotonic() < until:
        await asyncio.sleep(1)
        if mode == "hold":
            o = counts.open
            print(f"held idle {o['idle']} slow {o['slow']} sse {o['sse']} refused {counts.refused}", flush=True)
        else:
            print(f"flood sent {counts.sent}", flush=True)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["hold", "flood"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--slow", type=int, default=1000)
    p.add_argument("--sse", type=int, default=500)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--token", default="")
    p.add_argument("--build", default="")
    p.add_argument("--per-address", type=int, default=100)
    p.add_argument("--first-address", default="127.0.1.0")
    a = p.parse_args()
    until = time.monotonic() + a.seconds
    counts = Counts()
    tasks = [asyncio.create_task(report(counts, until, a.mode))]
    if a.mode == "hold":
        n = a.idle + a.slow + a.sse
        sse = (f"GET /api/v1/builds/{a.build}/events HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {a.token}\r\n\r\n").encode()
        slow = b"GET /api/v1/health HTTP/1.1\r\nX-Slow: "
        plan = [("idle", b"")] * a.idle + [("slow", slow)] * a.slow + [("sse", sse)] * a.sse
        src = addresses(a.first_address, (n + a.per_address - 1) // a.per_address)
        for i, (kind, request) in enumerate(plan):
            tasks.append(asyncio.create_task(
                keep(kind, a.port, src[i // a.per_address], counts, until, request)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)  # do not trip a SYN flood defence
    else:
        src = addresses(a.first_address, a.connections)
        for i in range(a.connections):
            tasks.append(asyncio.create_task(flood(a.port, src[i], counts, until)))
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
