"""Push streams over real sockets: a subprocess's stdout sent as a chunked body by
ProcessBodyProducer (treq), received by twisted.web into a subprocess's stdin through
ProcessSink; by splice(2) on plain TCP, through Python over TLS. The bytes arrive
identical, progress counts all of them, a cut connection fails both ends without the
terminating chunk, and fault pauses stop at their exact byte."""

import datetime
import hashlib
import json
import os
import socket

import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, ssl, task, threads
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web import client, resource, server
from zope.interface import implementer

from powerstripflocker.agent.streams import kernel
from powerstripflocker.agent.streams.chunked import (
    FRAMING_READ, SplicedChunkedDecoder, splice_request_body)
from powerstripflocker.agent.streams.receiving import ProcessSink
from powerstripflocker.agent.streams.sending import ProcessBodyProducer

MiB = 1 << 20


class Counter:
    """Stands in for Progress: counts what a stream reports."""

    def __init__(self):
        self.done = 0

    def add(self, count):
        self.done += count


class SinkRequest(server.Request):
    """Every PUT body goes into `cat > <site.output>` as it arrives."""

    def gotLength(self, length):
        super().gotLength(length)
        site = self.channel.site
        self.sink = ProcessSink(reactor, site.command, self.channel.transport,
                                progress=site.received)
        if site.receive_pause_after_bytes is not None:
            self.sink.hold_after(site.receive_pause_after_bytes, site.paused.append)
        self.content = self.sink
        site.sinks.append(self.sink)
        site.spliced.append(splice_request_body(self))
        site.decoders.append(self.channel._transferDecoder)

    def connectionLost(self, reason):
        if not self.finished:
            self.sink.abort()
        super().connectionLost(reason)


class SinkResource(resource.Resource):
    isLeaf = True

    def render_PUT(self, request):
        sink = request.content
        sink.close_input()

        def done(status):
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps({"bytes": sink.bytes}).encode())
            request.finish()

        def failed(failure):
            request.setResponseCode(500)
            request.write(str(failure.value).encode())
            request.finish()

        sink.finished.addCallbacks(done, failed)
        return server.NOT_DONE_YET


def localhost_certificate():
    """A self-signed certificate and key for DNS name localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256()))
    pem = certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    return ssl.PrivateCertificate.loadPEM(pem)


def sha256(path):
    with open(path, "rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


@implementer(client.IPolicyForHTTPS)
class TrustOne:
    def __init__(self, certificate):
        self.certificate = certificate

    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS("localhost", trustRoot=self.certificate)


class StreamTests(TestCase):
    timeout = 60

    def setUp(self):
        self.tmp = self.mktemp()
        os.makedirs(self.tmp)
        self.source = os.path.join(self.tmp, "source")
        with open(self.source, "wb") as out:
            out.write(os.urandom(5 * MiB + 12345))    # more than a pipe's worth
        self.output = os.path.join(self.tmp, "output")

    async def serve(self, tls=False, receive_pause_after_bytes=None,
                    command='exec cat > "$0"'):
        site = server.Site(SinkResource(), requestFactory=SinkRequest)
        site.command = ["sh", "-c", command, self.output]
        site.received = Counter()
        site.sinks, site.spliced, site.decoders, site.paused = [], [], [], []
        site.receive_pause_after_bytes = receive_pause_after_bytes
        if tls:
            certificate = localhost_certificate()
            endpoint = SSL4ServerEndpoint(reactor, 0, certificate.options(),
                                          interface="127.0.0.1")
            self.agent = client.Agent(reactor, contextFactory=TrustOne(
                ssl.Certificate(certificate.original)))
        else:
            endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
            self.agent = client.Agent(reactor)
        port = await endpoint.listen(site)
        self.addCleanup(port.stopListening)
        scheme = "https" if tls else "http"
        host = "localhost" if tls else "127.0.0.1"
        self.url = f"{scheme}://{host}:{port.getHost().port}/push"
        return site

    async def push(self, producer):
        http = treq.client.HTTPClient(self.agent)
        response = await http.request("PUT", self.url, data=producer)
        return response.code, await response.content()

    async def test_plain_tcp_bytes_are_spliced_both_ways_and_arrive_identical(self):
        site = await self.serve()
        sent = Counter()
        producer = ProcessBodyProducer(reactor, ["cat", self.source], progress=sent)
        code, body = await self.push(producer)
        self.assertEqual((code, json.loads(body)), (200, {"bytes": os.path.getsize(
            self.source)}))
        self.assertEqual(sha256(self.output), sha256(self.source))
        self.assertTrue(producer.spliced)
        self.assertEqual(site.spliced, [True])
        size = os.path.getsize(self.source)
        self.assertEqual((producer.bytes, sent.done, site.received.done), (size,) * 3)
        # all but what came along with the chunk size lines went socket -> pipe by splice
        [decoder] = site.decoders
        self.assertGreater(decoder.spliced, size - 64 * (size // 1024 + 16))

    async def test_tls_bytes_go_through_python_and_arrive_identical(self):
        site = await self.serve(tls=True)
        sent = Counter()
        producer = ProcessBodyProducer(reactor, ["cat", self.source], progress=sent)
        code, body = await self.push(producer)
        self.assertEqual(code, 200, body)
        self.assertEqual(sha256(self.output), sha256(self.source))
        self.assertFalse(producer.spliced)
        self.assertEqual(site.spliced, [False])
        self.assertEqual(site.received.done, os.path.getsize(self.source))

    async def test_a_slow_receiver_gets_every_byte_in_order(self):
        # the receiving pipe fills while its reader sleeps, so both ends wait on it
        await self.serve(command='sleep 0.5; exec cat > "$0"')
        producer = ProcessBodyProducer(reactor, ["cat", self.source])
        code, body = await self.push(producer)
        self.assertEqual(code, 200, body)
        self.assertEqual(sha256(self.output), sha256(self.source))

    async def test_pipes_smaller_than_asked_for_still_carry_every_byte(self):
        # pipe-max-size below PIPE_SIZE: the thresholds for large pieces scale down
        self.patch(kernel, "PIPE_SIZE", 64 * 1024)
        await self.serve(command='sleep 0.2; exec cat > "$0"')
        producer = ProcessBodyProducer(reactor, ["cat", self.source])
        code, body = await self.push(producer)
        self.assertEqual(code, 200, body)
        self.assertEqual(sha256(self.output), sha256(self.source))

    async def test_the_sender_pauses_at_its_exact_fault_byte_and_goes_on_when_released(self):
        await self.serve()
        limit = 3 * MiB + 7
        paused = []
        producer = ProcessBodyProducer(reactor, ["cat", self.source])
        producer.hold_after(limit, lambda p: paused.append(p.bytes))
        pushed = defer.ensureDeferred(self.push(producer))
        while not paused:
            await deferLater(0.02)
        await deferLater(0.2)
        self.assertEqual((paused, producer.bytes), ([limit], limit))
        producer.release()
        code, body = await pushed
        self.assertEqual(code, 200, body)
        self.assertEqual(sha256(self.output), sha256(self.source))

    async def test_the_receiver_pauses_at_its_exact_fault_byte_and_goes_on_when_released(
            self):
        limit = 2 * MiB + 3
        site = await self.serve(receive_pause_after_bytes=limit)
        producer = ProcessBodyProducer(reactor, ["cat", self.source])
        pushed = defer.ensureDeferred(self.push(producer))
        while not site.paused:
            await deferLater(0.02)
        await deferLater(0.2)
        [sink] = site.sinks
        # at most a chunk size line's read of body bytes past the limit
        self.assertEqual(site.received.done, sink.bytes)
        self.assertTrue(limit <= sink.bytes < limit + FRAMING_READ, sink.bytes)
        await deferLater(0.2)
        self.assertEqual(site.received.done, sink.bytes)      # still held
        sink.release()
        code, body = await pushed
        self.assertEqual(code, 200, body)
        self.assertEqual(sha256(self.output), sha256(self.source))

    async def test_a_cut_connection_fails_both_ends_without_the_last_chunk(self):
        site = await self.serve()
        producer = ProcessBodyProducer(reactor, ["cat", "/dev/zero"])
        pushed = defer.ensureDeferred(self.push(producer))
        while site.received.done < 4 * MiB:
            await deferLater(0.02)
        [sink] = site.sinks
        sink.pauser.transport.abortConnection()
        with self.assertRaises(Exception):
            await pushed
        while producer._exit_status is None:
            await deferLater(0.02)
        self.assertEqual(producer._exit_status, "signal 9")    # the sender's cat, killed
        while not sink._aborted:
            await deferLater(0.02)
        self.assertNotEqual(site.decoders[0].state, "FINISHED")

    async def test_a_failing_sender_never_sends_the_last_chunk(self):
        site = await self.serve()
        producer = ProcessBodyProducer(
            reactor, ["sh", "-c", 'head -c 3145728 "$0"; exit 3', self.source])
        with self.assertRaises(Exception):
            await self.push(producer)
        [sink] = site.sinks
        while not sink._aborted:        # the receiver sees the connection go, unfinished
            await deferLater(0.02)
        self.assertNotEqual(site.decoders[0].state, "FINISHED")

    async def test_pushes_one_after_another_on_one_kept_alive_connection(self):
        site = await self.serve()
        pool = client.HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = client.Agent(reactor, pool=pool)
        for _ in range(3):
            producer = ProcessBodyProducer(reactor, ["cat", self.source])
            code, body = await self.push(producer)
            self.assertEqual(code, 200, body)
            self.assertTrue(producer.spliced)
            self.assertEqual(sha256(self.output), sha256(self.source))
        self.assertEqual(site.spliced, [True] * 3)
        peers = {sink.pauser.transport.getPeer().port for sink in site.sinks}
        self.assertEqual(len(peers), 1)

    async def test_a_malformed_chunk_size_is_answered_400(self):
        site = await self.serve()
        port = int(self.url.rsplit(":", 1)[1].split("/")[0])

        def send():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(b"PUT /push HTTP/1.1\r\nHost: x\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
                return raw.recv(4096)

        answer = await threads.deferToThread(send)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer)
        self.assertIsInstance(site.decoders[0], SplicedChunkedDecoder)
        [sink] = site.sinks
        await sink.protocol.ended          # the receiving process was killed, not left
        self.assertTrue(sink._aborted)


def deferLater(seconds):
    return task.deferLater(reactor, seconds, lambda: None)
