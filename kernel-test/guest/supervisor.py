#!/usr/bin/env python3
"""A supervisor as nydus-snapshotter's pkg/supervisor keeps a nydusd's state: an independent
implementation of its side of the protocol, for tests.

It listens on a unix socket; the daemon connects. On `recv` (the snapshotter's FetchDaemonStates,
around PUT /api/v1/daemon/fuse/sendfd) it reads state bytes until EOF and keeps the fd that came with
them (SCM_RIGHTS). On `send` (SendStatesTimeout, around PUT /api/v1/daemon/fuse/takeover) it sends the
kept bytes with the fd attached and closes. Commands come one per line on stdin; each answer is one
line on stdout: `received <bytes> <fd inode>`, `sent <bytes>`, or `error <what>`.

    supervisor.py <socket path>
"""
import array
import os
import socket
import sys


def listen(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    s.settimeout(60)
    return s


def receive(path):
    with listen(path) as srv:
        conn, _ = srv.accept()
        with conn:
            data, fds = b"", []
            while True:
                fd_space = socket.CMSG_SPACE(64 * array.array("i").itemsize)
                msg, anc, _, _ = conn.recvmsg(256 * 1024, fd_space)
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        got = array.array("i")
                        got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
                        fds.extend(got)
                if not msg:
                    break
                data += msg
    return data, fds


def send(path, data, fd):
    with listen(path) as srv:
        conn, _ = srv.accept()
        with conn:
            conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def main():
    path = sys.argv[1]
    state, fd = b"", -1
    for line in sys.stdin:
        cmd = line.strip()
        try:
            if cmd == "recv":
                data, fds = receive(path)
                if not fds:
                    raise RuntimeError("no fd came with the state")
                for extra in fds[1:]:
                    os.close(extra)
                if fd >= 0:
                    os.close(fd)
                state, fd = data, fds[0]
                print(f"received {len(state)} {os.fstat(fd).st_ino}", flush=True)
            elif cmd == "send":
                send(path, state, fd)
                print(f"sent {len(state)}", flush=True)
            elif cmd == "quit":
                break
            else:
                print(f"error unknown command {cmd!r}", flush=True)
        except Exception as e:  # one line per failure; the test reads it
            print(f"error {e}", flush=True)


if __name__ == "__main__":
    main()
