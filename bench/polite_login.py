"""The well-behaved half of bench/run.py's login flood: N clients that log in over and over, honouring Retry-After.

wrk's flood (bench/login.lua) re-sends the moment a 503 arrives, which is what an attacker or a broken client does.
Here each client, on a 503, waits what Retry-After says (plus up to 20 % jitter, as retrying clients are advised to,
so they do not come back in lockstep) before its next attempt on the same keep-alive connection; after any other
answer it tries again at once. Prints one JSON object: what bench/run.py's Sample holds.

usage: polite_login.py PORT PATH FORM_BODY CONNECTIONS SECONDS
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import statistics
import sys
import time

import uvloop

HOST = "127.0.0.1"
JITTER = 0.2


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers


async def main(port: int, path: str, form: str, connections: int, seconds: float) -> None:
    body = form.encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    statuses: collections.Counter[int] = collections.Counter()
    latencies: list[float] = []
    retry_after = 0
    end = time.monotonic() + seconds

    async def client() -> None:
        nonlocal retry_after
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while time.monotonic() < end:
                start = time.perf_counter()
                writer.write(request)
                status, headers = await read_response(reader)
                latencies.append((time.perf_counter() - start) * 1000)
                statuses[status] += 1
                if status == 503 and "retry-after" in headers:
                    retry_after += 1
                    wait = int(headers["retry-after"]) * (1 + random.uniform(0, JITTER))
                    await asyncio.sleep(min(wait, max(0.0, end - time.monotonic())))
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.monotonic() - started
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    result = {
        "rps": len(latencies) / elapsed,
        "p50_ms": quantiles[49],
        "p99_ms": quantiles[98],
        "max_ms": max(latencies, default=0.0),
        "requests": len(latencies),
        "seconds": elapsed,
        "non_2xx": sum(n for status, n in statuses.items() if not 200 <= status < 400),
        "socket_errors": "",
        "statuses": dict(statuses),
        "retry_after": retry_after,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    port, path, form, connections, seconds = sys.argv[1:6]
    uvloop.run(main(int(port), path, form, int(connections), float(seconds)))
