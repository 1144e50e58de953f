# alpaca-proxy: a small non-root image, configured entirely by environment
# (APCA_API_KEY_ID, APCA_API_SECRET_KEY, IS_PRO, ALPACA_PROXY_*; see README.md).
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
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin alpaca-proxy

USER 10001
WORKDIR /tmp
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=4).status != 200)"]
CMD ["twistd", "--nodaemon", "--pidfile=", "alpaca-proxy"]
