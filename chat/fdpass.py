"""Handover I/O: a unix socket that carries `chat.handover` frames and file descriptors.

Thin on purpose: the message format and its checks are in `chat.handover`; the server decides
what to send and what to do with what arrives. File descriptors travel as `SCM_RIGHTS`
ancillary data (`socket.send_fds` / `recv_fds`), at most `FDS_PER_MESSAGE` per `sendmsg`. On a
stream socket the kernel delivers a message's descriptors with its first byte, so descriptors
are queued as they arrive and each frame that announces N of them takes the next N.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from chat.handover import FDS_PER_MESSAGE, FrameReader, HandoverError, frame

_MAX_FDS_PER_RECV = 253  # SCM_MAX_FD: what one recvmsg can carry


class Channel:
    """One end of a handover conversation, blocking with a timeout (the loop is paused anyway)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        sock.settimeout(timeout)
        self._reader = FrameReader()
        self._messages: deque[dict[str, Any]] = deque()
        self._fds: deque[int] = deque()

    def send(self, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        data = frame(message)
        if not fds:
            self.sock.sendall(data)
            return
        if len(fds) > FDS_PER_MESSAGE:
            raise ValueError(f"at most {FDS_PER_MESSAGE} descriptors per message")
        sent = socket.send_fds(self.sock, [data], list(fds))
        if sent < len(data):
            self.sock.sendall(data[sent:])

    async def send_later(self, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        """`send`, waiting on the event loop while the peer's buffer is full (it takes in what
        it gets as fast as it can) instead of blocking the loop that still serves clients."""
        data = frame(message)
        loop = asyncio.get_running_loop()
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                while fds:
                    try:
                        sent = socket.send_fds(self.sock, [data], list(fds))
                    except BlockingIOError:
                        await self._writable(loop)
                        continue
                    data, fds = data[sent:], ()
                if data:
                    await loop.sock_sendall(self.sock, data)
        finally:
            self.sock.settimeout(timeout)

    async def _writable(self, loop: asyncio.AbstractEventLoop) -> None:
        ready = loop.create_future()
        fd = self.sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(fd, wake)
        try:
            await ready
        finally:
            loop.remove_writer(fd)

    def recv_while(self, other: socket.socket, meanwhile: Callable[[], None]) -> dict[str, Any]:
        """`recv`, calling MEANWHILE each time OTHER (a listening socket) has a connection to
        accept before the message comes: blocking the caller's event loop, on purpose."""
        deadline = time.monotonic() + (self.sock.gettimeout() or 0.0)
        poller = select.poll()  # not select(): a server's descriptors go far past 1024
        ours, theirs = self.sock.fileno(), other.fileno()
        poller.register(ours, select.POLLIN)
        poller.register(theirs, select.POLLIN)
        while not self._messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            ready = {fd for fd, _ in poller.poll(remaining * 1000)}
            if theirs in ready:
                meanwhile()
            if ours in ready:
                break
        timeout = self.sock.gettimeout()
        # The rest of the frame within what is left, not a whole timeout more.
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            return self.recv()
        finally:
            self.sock.settimeout(timeout)

    def recv(self) -> dict[str, Any]:
        """The next message; EOFError when the peer closed, TimeoutError when it is silent."""
        while not self._messages:
            data, fds, flags, _addr = socket.recv_fds(self.sock, 1 << 16, _MAX_FDS_PER_RECV)
            self._fds.extend(fds)
            if flags & socket.MSG_CTRUNC:
                # The kernel dropped descriptors it could not install: almost always this
                # process's open-file limit (RLIMIT_NOFILE), or SCM_MAX_FD.
                raise HandoverError(
                    "descriptors were cut off in transit (MSG_CTRUNC): this process is at its "
                    "open-file limit (ulimit -n / LimitNOFILE=)"
                )
            if not data:
                raise EOFError("the peer closed the handover socket")
            self._messages.extend(self._reader.feed(data))
        return self._messages.popleft()

    async def recv_later(self) -> dict[str, Any]:
        """`recv`, but waiting on the event loop until the peer speaks (so the loop can do
        other things meanwhile) instead of in a thread, whose wake-up the waiting clients
        would pay for; the frame itself is then read as `recv` does."""
        if not self._messages:
            loop = asyncio.get_running_loop()
            readable = loop.create_future()
            fd = self.sock.fileno()

            def wake() -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(fd, wake)
            try:
                await asyncio.wait_for(readable, self.sock.gettimeout())
            finally:
                loop.remove_reader(fd)
        return self.recv()

    def take_fds(self, count: int) -> list[int]:
        if len(self._fds) < count:
            raise HandoverError(f"expected {count} descriptors, received {len(self._fds)}")
        return [self._fds.popleft() for _ in range(count)]

    def close(self) -> None:
        """Close the socket and any descriptor received but not taken."""
        while self._fds:
            os.close(self._fds.popleft())
        self.sock.close()


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end (SO_PEERCRED: the kernel says, not the peer)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def connect(path: str, timeout: float) -> Channel | None:
    """A channel to the release serving now, or None when there is none (no socket, or stale)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            return None
        raise
    return Channel(sock, timeout)


def bind(path: str) -> tuple[socket.socket, int]:
    """Listen on PATH, mode 0600 (only the service's own user may take over); returns the inode.

    A socket file left by a release that is gone (or that just handed over) is replaced.
    """
    target = Path(path)
    # Only the socket's own directory (0700): a mistyped path must not grow a tree of them.
    target.parent.mkdir(mode=0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(target.lstat().st_mode):
            raise HandoverError(f"{path} exists and is not a socket")
        target.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(4)
    sock.setblocking(False)
    return sock, target.stat().st_ino


def unlink_if_ours(path: str, inode: int) -> None:
    """Remove PATH only if it is still the socket we bound (a successor may have replaced it)."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)
