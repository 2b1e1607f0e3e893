"""Helpers for the bounded-listener tests (the proxy's and the other listeners'): send a
huge body while reading the answer, peak memory of a process, files that grew in /tmp."""

import os
import socket
import threading

GIB = 1 << 30
MIB = 1 << 20


def connect(address, timeout=30):
    """A connected socket to a unix socket path or a (host, port) pair."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(timeout)
    client.connect(address)
    return client


def send_body(address, head, body_piece, total=GIB):
    """Send head, then body_piece until total bytes or the server stops reading, while
    reading its answer; returns (answer bytes, body bytes sent)."""
    client = connect(address)
    sent = [0]

    def send():
        try:
            client.sendall(head)
            while sent[0] < total:
                client.sendall(body_piece)
                sent[0] += len(body_piece)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while True:
            piece = client.recv(65536)
            if not piece:
                break
            answer += piece
    except OSError:
        pass
    sender.join(30)
    client.close()
    return answer, sent[0]


def chunked_piece(size=MIB):
    return b"%x\r\n%s\r\n" % (size, b" " * size)


def exchange(address, data):
    """Send data on a new connection and read until the server closes it."""
    with connect(address) as client:
        client.sendall(data)
        answer = b""
        while True:
            piece = client.recv(65536)
            if not piece:
                return answer
            answer += piece


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def tmp_files():
    return set(os.listdir("/tmp"))


def grown_in_tmp(before, larger_than=MIB):
    """Files new in /tmp since before that are larger than larger_than."""
    grown = []
    for name in tmp_files() - before:
        path = os.path.join("/tmp", name)
        try:
            if os.path.isfile(path) and os.path.getsize(path) > larger_than:
                grown.append(name)
        except OSError:
            pass
    return grown
