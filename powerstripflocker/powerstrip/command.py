"""powerstrip-flocker proxy: serve the Docker Engine API with Powerstrip hooks."""

import os
import signal

from twisted.internet import defer
from twisted.internet.task import react
from twisted.logger import Logger

from powerstripflocker.powerstrip.config import ConfigurationError, load_configuration
from powerstripflocker.powerstrip.endpoints import AddressError, ListenAddress, client_endpoint
from powerstripflocker.powerstrip.hooks import DEFAULT_TIMEOUT, HookCaller
from powerstripflocker.powerstrip.proxy import DEFAULT_MAX_BODY, ProxyFactory

HELP = "Docker API proxy that runs Powerstrip adapters (pre/post hooks) from adapters.yml"
DEFAULT_CONFIG = "/etc/powerstrip/adapters.yml"
DEFAULT_LISTEN = "unix:///var/run/powerstrip.sock"
DEFAULT_DOCKER = "unix:///var/run/docker.real.sock"

log = Logger()


def configure(parser):
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG,
        help=f"adapters.yml (Powerstrip version 1), validated at start and re-read on SIGHUP "
             f"(an invalid file keeps the previous one) (default {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN,
        help=f"where docker clients connect: unix:///path, tcp://host:port or a Twisted "
             f"endpoint string (default {DEFAULT_LISTEN}; a unix socket gets mode 0660 and "
             f"group docker when that group exists)",
    )
    parser.add_argument(
        "--docker", default=os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER,
        help=f"the real Docker daemon: unix:///path or tcp://host:port "
             f"(default $DOCKER_HOST, else {DEFAULT_DOCKER})",
    )
    parser.add_argument(
        "--hook-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"give up on an adapter after this long (default {DEFAULT_TIMEOUT:g}, longer "
             f"than the flocker adapter's own 120 s deadline)",
    )
    parser.add_argument(
        "--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="BYTES",
        help=f"largest request body read for pre-hooks and response body read for "
             f"post-hooks; larger ones get 413/502 (default {DEFAULT_MAX_BODY})",
    )
    parser.add_argument(
        "--socket-group", default="docker",
        help="group of the unix socket when it exists (default docker)",
    )


def run(options):
    try:
        configuration = load_configuration(options.config)
    except ConfigurationError as e:
        log.critical("invalid configuration: {error}", error=str(e))
        return 2
    if options.hook_timeout <= 0 or options.max_body <= 0:
        log.critical("--hook-timeout and --max-body must be positive")
        return 2
    if options.listen == options.docker:
        log.critical("--listen and --docker are the same address ({address}): the proxy would "
                     "talk to itself", address=options.listen)
        return 2
    status = []

    def main(reactor):
        return defer.ensureDeferred(_serve(reactor, options, configuration, status))

    try:
        react(main)
    except SystemExit as e:
        return status[0] if status else (e.code or 0)
    return status[0] if status else 0


async def _serve(reactor, options, configuration, status):
    try:
        listen = ListenAddress(reactor, options.listen)
        docker, docker_description = client_endpoint(reactor, options.docker)
        if listen.path is not None and listen.path == docker_description[len("unix://"):]:
            raise AddressError("--listen and --docker name the same socket")
        listen.prepare()
    except AddressError as e:
        log.critical("{error}", error=str(e))
        status.append(2)
        return
    hooks = HookCaller(reactor, configuration.adapters, timeout=options.hook_timeout)
    factory = ProxyFactory(reactor, configuration, hooks, docker, docker_description,
                           max_body=options.max_body)
    try:
        port = await listen.endpoint.listen(factory)
    except Exception as e:
        log.critical("cannot listen on {listen}: {error}", listen=listen.description, error=e)
        status.append(1)
        return
    group = listen.secure(options.socket_group)
    log.info(
        "powerstrip proxy listening on {listen}{group}, Docker at {docker}, "
        "{endpoints} endpoint(s), {adapters} adapter(s)",
        listen=listen.description, docker=docker_description,
        group=f" (group {group})" if group else "",
        endpoints=len(configuration.endpoints), adapters=len(configuration.adapters),
    )
    stopped = defer.Deferred()

    def shutdown():
        log.info("powerstrip proxy stopping")
        d = defer.maybeDeferred(port.stopListening)
        d.addBoth(lambda _: listen.cleanup())
        d.addBoth(lambda _: hooks.close())
        return d

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)

    def reload():
        try:
            new = load_configuration(options.config)
        except ConfigurationError as e:
            log.error("SIGHUP: kept the previous configuration: {error}", error=str(e))
            return
        factory.reconfigure(new)
        log.info("SIGHUP: reloaded {config}: {endpoints} endpoint(s), {adapters} adapter(s)",
                 config=options.config, endpoints=len(new.endpoints),
                 adapters=len(new.adapters))

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))
    await stopped  # never fires: the reactor stops on SIGTERM/SIGINT
