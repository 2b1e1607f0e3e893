# The powerstrip-flocker adapter as a container, deployed next to the proxy:
#   docker build -t powerstrip-flocker .
#   docker run -d --network host powerstrip-flocker adapter \
#       --control-url http://CONTROL:4523 --node-address NODE_IP
# BASE_IMAGE: any Debian-like image with python3 (>= 3.11) and its venv module.
# Behind a TLS-intercepting proxy, put its CA bundle in the build context as
# ca-bundle.crt: pip uses it in the build stage only; it never reaches the image.
ARG BASE_IMAGE=python:3.13-slim

FROM ${BASE_IMAGE} AS build
COPY . /src
RUN if [ -f /src/ca-bundle.crt ]; then export PIP_CERT=/src/ca-bundle.crt; fi \
    && python3 -m venv /opt/powerstrip-flocker \
    && /opt/powerstrip-flocker/bin/pip install --no-cache-dir --disable-pip-version-check /src

FROM ${BASE_IMAGE}
COPY --from=build /opt/powerstrip-flocker /opt/powerstrip-flocker
# The adapter needs no privileges: it only talks HTTP to the proxy and the control service.
RUN useradd --system --no-create-home --shell /usr/sbin/nologin powerstrip-flocker
USER powerstrip-flocker
ENV PATH=/opt/powerstrip-flocker/bin:$PATH
EXPOSE 9999
ENTRYPOINT ["powerstrip-flocker"]
CMD ["adapter", "--listen", "tcp:9999:interface=127.0.0.1"]
