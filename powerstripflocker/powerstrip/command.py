"""powerstrip-flocker proxy: serve the Docker Engine API with Powerstrip hooks."""

import os
import signal

from twisted.internet import defer
from twisted.logger import Logger

from powerstripflocker.powerstrip.config import ConfigurationError, load_configuration
from powerstripflocker.powerstrip.endpoints import AddressError, ListenAddress, client_endpoint
from powerstripflocker.powerstrip.hooks import DEFAULT_TIMEOUT, HookCaller
from powerstripflocker.powerstrip.proxy import DEFAULT_MAX_BODY, ProxyFactory
from powerstripflocker.serving.lifecycle import PartService, run_until_stopped

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
    parser.add_argument(
        "--no-fast-path", dest="fast_path", action="store_false",
        help="relay every byte through Twisted's public transport API: no direct socket "
             "writes, no recv() reads of unix sockets, no splice(2) for attach/exec streams "
             "(slower; independent of Twisted's private attributes)",
    )


def check_options(options):
    """The configuration, or the exit status 2 after saying what is wrong."""
    try:
        configuration = load_configuration(options.config)
    except ConfigurationError as e:
        log.critical("invalid configuration: {error}", error=str(e))
        raise SystemExit(2)
    if options.hook_timeout <= 0 or options.max_body <= 0:
        log.critical("--hook-timeout and --max-body must be positive")
        raise SystemExit(2)
    if options.listen == options.docker:
        log.critical("--listen and --docker are the same address ({address}): the proxy would "
                     "talk to itself", address=options.listen)
        raise SystemExit(2)
    return configuration


def run(options):
    configuration = check_options(options)
    return run_until_stopped(
        lambda reactor: ProxyService(reactor, options, configuration), "proxy")


class ProxyService(PartService):
    """The proxy on its address from start to stop; SIGHUP re-reads the configuration."""

    name = "proxy"

    def __init__(self, reactor, options, configuration):
        self.reactor = reactor
        self.options = options
        self.configuration = configuration
        self._listen = self._port = self._hooks = None

    async def start(self):
        reactor, options, configuration = self.reactor, self.options, self.configuration
        try:
            listen = ListenAddress(reactor, options.listen)
            docker, docker_description = client_endpoint(reactor, options.docker)
            if listen.path is not None and listen.path == docker_description[len("unix://"):]:
                raise AddressError("--listen and --docker name the same socket")
            listen.prepare()
        except AddressError as e:
            log.critical("{error}", error=str(e))
            raise SystemExit(2)
        hooks = HookCaller(reactor, configuration.adapters, timeout=options.hook_timeout)
        factory = ProxyFactory(reactor, configuration, hooks, docker, docker_description,
                               max_body=options.max_body, fast_path=options.fast_path)
        try:
            self._port = await listen.endpoint.listen(factory)
        except Exception as e:
            log.critical("cannot listen on {listen}: {error}", listen=listen.description,
                         error=e)
            raise SystemExit(1)
        self._listen, self._hooks = listen, hooks
        group = listen.secure(options.socket_group)
        log.info(
            "powerstrip proxy listening on {listen}{group}, Docker at {docker}, "
            "{endpoints} endpoint(s), {adapters} adapter(s)",
            listen=listen.description, docker=docker_description,
            group=f" (group {group})" if group else "",
            endpoints=len(configuration.endpoints), adapters=len(configuration.adapters),
        )
        signal.signal(signal.SIGHUP,
                      lambda signum, frame: reactor.callFromThread(self.reload, factory))

    def reload(self, factory):
        try:
            new = load_configuration(self.options.config)
        except ConfigurationError as e:
            log.error("SIGHUP: kept the previous configuration: {error}", error=str(e))
            return
        factory.reconfigure(new)
        log.info("SIGHUP: reloaded {config}: {endpoints} endpoint(s), {adapters} adapter(s)",
                 config=self.options.config, endpoints=len(new.endpoints),
                 adapters=len(new.adapters))

    async def stop(self):
        log.info("powerstrip proxy stopping")
        try:
            await self._port.stopListening()
        finally:
            self._listen.cleanup()
            await defer.maybeDeferred(self._hooks.close)
