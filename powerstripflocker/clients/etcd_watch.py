"""An EtcdClient's watch: the gateway's streamed /v3/watch, read line by line, started
again from the next revision on another member when its stream breaks or its member stops
answering."""

import json

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from powerstripflocker.clients.etcd import (
    Compacted, EtcdError, EtcdUnavailable, IEtcdWatch, Once, deliver_events,
)
from powerstripflocker.clients.etcd_gateway import describe_failure, revision_of

log = Logger()

# A member whose link is cut sends nothing, not even a reset, and etcd 3.4 sends progress
# notifications only every 10 minutes (unless told otherwise): a stream silent this long
# has its member asked for its status, which a member that is still there answers at once.
SILENCE_BEFORE_PROBE = 5.0


class _WatchStream(Protocol):
    """Reads the gateway's watch stream: one JSON object per line."""

    def __init__(self, on_message):
        self._on_message = on_message
        self._buffer = b""
        self.closed = Deferred()

    def dataReceived(self, data):
        self._buffer += data
        while b"\n" in self._buffer and not self.closed.called:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                self.abort(f"unreadable watch message {line[:100]!r}")
                return
            self._on_message(message)

    def abort(self, reason):
        """Drop the stream; closed fires with reason."""
        self._close(reason)
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason):
        if reason.check(ResponseDone, PotentialDataLoss):
            self._close("the member ended the watch stream")
        else:
            self._close(describe_failure(reason.value))

    def _close(self, reason):
        if not self.closed.called:
            self.closed.callback(reason)


class _SilenceProbe:
    """Whenever one stream has been silent for SILENCE_BEFORE_PROBE, asks its member (that
    member only) for its status, and aborts the stream when the member does not answer
    within the request timeout, answers an error, or has no leader. One probe at a time;
    stop() cancels the timer or the probe in flight."""

    def __init__(self, client, url, stream):
        self._client = client
        self._url = url
        self._stream = stream
        self._probe = None
        self._timer = client._reactor.callLater(SILENCE_BEFORE_PROBE, self._ask)

    def heard(self):
        """The member sent a message: it is there, and its silence starts again."""
        if self._timer is not None:
            self._timer.reset(SILENCE_BEFORE_PROBE)
        elif self._probe is not None:
            self._cancel_probe()
            self._timer = self._client._reactor.callLater(SILENCE_BEFORE_PROBE, self._ask)

    def stop(self):
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._cancel_probe()

    def _cancel_probe(self):
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()

    def _ask(self):
        self._timer = None
        client = self._client
        probe = Deferred.fromCoroutine(client._attempt(self._url, "/v3/maintenance/status", {}))
        self._probe = probe
        probe.addTimeout(client._request_timeout, client._reactor)
        probe.addCallbacks(self._answered, self._failed, callbackArgs=(probe,),
                           errbackArgs=(probe,))

    def _answered(self, answer, probe):
        if probe is not self._probe:
            return
        self._probe = None
        code, status = answer
        if not isinstance(status, dict):
            status = {}
        if code != 200:
            self._leave(f"answered a status check with HTTP {code}: "
                        f"{str(status.get('message', ''))[:200]}")
        elif str(status.get("leader", "0")) == "0":
            # the gateway leaves a zero leader out of its answer
            self._leave("has no leader")
        else:
            self._timer = self._client._reactor.callLater(SILENCE_BEFORE_PROBE, self._ask)

    def _failed(self, failure, probe):
        if probe is not self._probe:
            return  # cancelled: the stream ended or its member spoke
        self._probe = None
        if failure.check(defer.TimeoutError):
            self._leave("did not answer a status check within "
                        f"{self._client._request_timeout:g}s")
        else:
            self._leave(f"failed a status check: {describe_failure(failure.value)}")

    def _leave(self, reason):
        self._stream.abort(f"etcd member {self._url} {reason} after "
                           f"{SILENCE_BEFORE_PROBE:g}s of silence on its watch stream")


@implementer(IEtcdWatch)
class ClientWatch:
    """A watch that moves to the next member whenever its stream ends, resuming from the
    revision after the last one it delivered."""

    def __init__(self, client, key, on_events, prefix, start_revision, prev_kv,
                 reconnect_timeout):
        self._client = client
        self._key = key
        self._on_events = on_events
        self._prefix = prefix
        self._prev_kv = prev_kv
        self._reconnect_timeout = reconnect_timeout
        self.next_revision = start_revision
        self._created = Once()
        self._ended = Once()
        self._stopped = False
        self._accepted = False
        self._waiting = None  # the request or pause in progress, cancelled by stop()
        self._stream = None
        self._member = client._preferred

    @property
    def created(self):
        return self._created.wait()

    @property
    def ended(self):
        return self._ended.wait()

    def start(self):
        Deferred.fromCoroutine(self._run()).addBoth(self._end)

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        if self._stream is not None:
            self._stream.abort("stopped")
        if self._waiting is not None:
            self._waiting.cancel()

    def _end(self, result):
        if self._stopped or not isinstance(result, Failure):
            result = None
        self._ended.fire(result)
        self._created.fire(result if result is not None else Failure(
            EtcdError("the watch was stopped before etcd accepted it")))

    async def _pause(self, seconds):
        self._waiting = deferLater(self._client._reactor, seconds, lambda: None)
        try:
            await self._waiting
        finally:
            self._waiting = None

    async def _run(self):
        reactor = self._client._reactor
        urls = self._client.urls
        give_up_at = reactor.seconds() + self._reconnect_timeout
        delay = self._client._backoff
        refused = 0
        while not self._stopped:
            url = urls[self._member % len(urls)]
            try:
                reason = await self._stream_from(url)
            except CancelledError:
                return
            if self._stopped:
                return
            if isinstance(reason, Compacted):
                raise reason
            if self._accepted:
                give_up_at = reactor.seconds() + self._reconnect_timeout
                delay = self._client._backoff
                refused = 0
            else:
                refused += 1
            if reactor.seconds() >= give_up_at:
                raise EtcdUnavailable("watch", urls, f"{url}: {reason}; no member took the "
                                      f"watch back within {self._reconnect_timeout:g}s")
            log.info("etcd watch on {url} ended ({reason}); resuming from revision "
                     "{revision} on the next member", url=url, reason=reason,
                     revision=self.next_revision)
            self._member += 1
            if refused and refused % len(urls) == 0:
                try:
                    await self._pause(delay)
                except CancelledError:
                    return
                delay = min(delay * 2, 2.0)

    def _create_request(self):
        request = dict(self._client._codec.key_range(self._key, self._prefix),
                       progress_notify=True)
        if self._prev_kv:
            request["prev_kv"] = True
        if self.next_revision:
            request["start_revision"] = str(self.next_revision)
        return {"create_request": request}

    async def _stream_from(self, url):
        """Stream events from one member until the stream ends; return why it did."""
        self._accepted = False
        client = self._client
        self._waiting = client._watch_http.request(
            "POST", url + "/v3/watch", data=json.dumps(self._create_request()).encode("utf-8"),
            headers={"Content-Type": ["application/json"],
                     # etcd then cancels the watch when this member loses its leader,
                     # rather than keeping a stream that no longer sees commits
                     "Grpc-Metadata-hasleader": ["true"]},
            unbuffered=True,
        ).addTimeout(client._request_timeout, client._reactor)
        try:
            response = await self._waiting
        except defer.TimeoutError:
            return f"no answer within {client._request_timeout:g}s"
        except CancelledError:
            raise
        except Exception as reason:
            return describe_failure(reason)
        finally:
            self._waiting = None
        if response.code != 200:
            try:
                content = await response.content().addTimeout(client._request_timeout,
                                                              client._reactor)
            except Exception as reason:
                content = describe_failure(reason).encode()
            return f"HTTP {response.code}: {content[:200].decode('utf-8', 'replace')}"

        def on_message(message):
            silence.heard()
            self._message(message, stream)
        stream = _WatchStream(on_message)
        silence = _SilenceProbe(client, url, stream)
        self._stream = stream
        response.deliverBody(stream)

        def not_accepted():
            if not self._accepted:
                stream.abort(f"etcd did not accept the watch within "
                             f"{client._request_timeout:g}s")
        accept_timer = client._reactor.callLater(client._request_timeout, not_accepted)
        try:
            return await stream.closed
        finally:
            if accept_timer.active():
                accept_timer.cancel()
            silence.stop()
            self._stream = None

    def _message(self, message, stream):
        if self._stopped:
            return
        if "error" in message:
            error = message["error"]
            stream.abort(error.get("message") if isinstance(error, dict) else str(error))
            return
        result = message.get("result", {})
        if result.get("canceled"):
            compact_revision = int(result.get("compact_revision", 0))
            if compact_revision:
                stream.abort(Compacted(self.next_revision, compact_revision))
            else:
                stream.abort("etcd cancelled the watch: "
                             f"{result.get('cancel_reason') or 'no reason given'}")
            return
        if result.get("created"):
            self._accepted = True
            if self.next_revision is None:
                # A watch without a start revision begins after the revision etcd
                # reports now: everything up to it counts as seen.
                self.next_revision = revision_of(result) + 1
            self._created.fire(self.next_revision - 1)
            return
        raw_events = result.get("events", ())
        # After a reconnect, a member may repeat what another one delivered: drop it.
        events = [e for e in map(self._client._codec.event, raw_events)
                  if e.revision >= self.next_revision]
        if events:
            self.next_revision = events[-1].revision + 1
            deliver_events(self._on_events, events)
        elif not raw_events and revision_of(result) >= self.next_revision:
            # a progress notification: nothing up to that revision is left to come
            self.next_revision = revision_of(result) + 1
