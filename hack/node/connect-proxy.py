"""An HTTP CONNECT proxy on a Unix socket, run inside the real node's network namespace
(hack/node.sh): the apiserver's egress selector (`cluster`, HTTPConnect over uds) sends its
connections to kubelets and pods here (`kubectl logs`, `exec`, the pods' proxy), so they reach
addresses that exist only in that namespace.

    python connect-proxy.py SOCKET
"""

from __future__ import annotations

import asyncio
import os
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        head = await client_r.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or not port.isdigit():
            raise ValueError(f"not a CONNECT request: {method} {target}")
        upstream_r, upstream_w = await asyncio.open_connection(host.strip("[]"), int(port))
    except (ValueError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        client_w.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{exc}\n".encode())
        client_w.close()
        return
    client_w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))


async def main(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(_serve, path)
    os.chmod(path, 0o600)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
