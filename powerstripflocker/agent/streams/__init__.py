"""Streams between subprocesses and HTTP bodies, never buffered whole in memory, and
on plain TCP never passing through Python.

A push is an HTTP PUT with a chunked body: the chunks and the terminating zero-length
chunk are what tell the receiver that the stream is complete (a cut connection leaves a
body without its last chunk, which the receiver discards: the source stays intact and the
push can be made again), and the exit status of tar/btrfs on both ends says whether it
was sound.

ProcessBodyProducer (sending): the stdout of tar -c / btrfs send is a pipe this module
makes (1 MiB). On a plain TCP connection each chunk's bytes go from that pipe to the
socket with splice(2): the size line is written with send(), the bytes follow by splice,
so they never enter Python. Over TLS (splice cannot go through it) the pipe is read in
blocks of up to 1 MiB (what it holds) and written to the transport.

ProcessSink (receiving): the stdin of tar -x / btrfs receive is a pipe this module makes.
A push body on a plain TCP connection is decoded by SplicedChunkedDecoder: chunk size
lines and trailers are read through twisted.web as usual, the bytes of each chunk go from
the socket to the pipe with splice(2). Over TLS twisted.web decodes the body and each
piece is written straight to the pipe.

Everything runs on the reactor, driven by readiness: the pipes are registered with
addReader/addWriter, and the socket's own transport keeps its registration (its doRead or
doWrite is taken over for the duration of the body, as the proxy does for hijacked
streams). A thread per transfer would need a second file descriptor of the socket that
outlives Twisted's close of it, and every progress report, fault pause and cancellation
crossing threads; on the reactor a transfer is a few system calls per MiB and cancels
like any other Deferred. Wake-ups are kept few: sending waits a millisecond before taking
a pipe that holds less than COALESCE_BYTES, and receiving, once the pipe was full, waits
for ROOM_BYTES of room the same way, so one wake-up moves hundreds of KiB instead of one
10 KiB read or write of tar's.

Progress counts bytes and logs "done / total, rate" every few seconds.

- kernel.py: pipes, splice(2), a pipe end as the reactor sees it
- processes.py: running tar/btrfs, their exit status and the cause of a failure
- progress.py: counting a transfer's bytes
- sending.py: ProcessBodyProducer
- receiving.py: ProcessSink, DiscardSink
- chunked.py: SplicedChunkedDecoder, splice_request_body
"""
