# alpaca-proxy: a small non-root image, configured entirely by environment.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ALPACA_PROXY_LISTEN=tcp:8765:interface=0.0.0.0

COPY . /tmp/src
# Install, then write twisted's plugin cache as root (the runtime user cannot).
RUN pip install --no-cache-dir /tmp/src \
 && rm -rf /tmp/src \
 && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && useradd --system --no-create-home --shell /usr/sbin/nologin alpaca-proxy

USER alpaca-proxy
WORKDIR /tmp
EXPOSE 8765
CMD ["twistd", "--nodaemon", "--pidfile=", "alpaca-proxy"]
