# The RemoteMedia server: `remotemedia serve` with the models inside (nothing downloads when a
# container starts), running as a non-root user, health-checked on /healthz (docs/deploy.md).
#
# From source (Rust from the official image; packages from Debian, crates.io and PyPI):
#   docker build -t remotemedia .
# From artifacts built on the host by scripts/image-artifacts.sh — what the container tests do
# here, where no image can be pulled and Rust cannot be fetched inside a container. Only the
# build stage differs (it copies the artifacts instead of building them); the runtime stage is
# the same:
#   ./scripts/image-artifacts.sh && docker build -t remotemedia \
#       --build-arg BASE=remotemedia-base:bookworm --build-arg BUILDER=remotemedia-base:bookworm \
#       --build-arg PREBUILT=target/docker .
#
# Run it with API tokens (it listens on every address and refuses to start without them):
#   docker run -p 127.0.0.1:50051:50051 -p 127.0.0.1:9090:9090 -e REMOTEMEDIA_TOKENS=... remotemedia
ARG BASE=debian:bookworm-slim
ARG BUILDER=rust:1.95-bookworm

FROM ${BUILDER} AS build
ARG PREBUILT=
WORKDIR /src
COPY . .
RUN if [ -n "$PREBUILT" ]; then cp -a "$PREBUILT" /out; else \
        apt-get update && apt-get install -y --no-install-recommends libopus-dev python3-venv \
        && ./scripts/setup-system.sh && ./scripts/image-artifacts.sh /out; \
    fi

FROM ${BASE}
# Run time: espeak-ng (phonemes for Piper), Opus (WebRTC), Python with numpy and PyYAML for
# Python nodes (the `remotemedia` package comes from the build stage).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libespeak-ng1 espeak-ng-data libopus0 \
        libstdc++6 python3 python3-numpy python3-yaml \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/remotemedia remotemedia
COPY --from=build /out/bin/remotemedia /usr/local/bin/remotemedia
COPY --from=build /out/models /opt/remotemedia/models
COPY --from=build /out/python/remotemedia /usr/local/lib/python3.11/dist-packages/remotemedia
COPY --from=build /out/examples /opt/remotemedia/examples
COPY --from=build /out/server.toml /etc/remotemedia/server.toml
ENV REMOTEMEDIA_MODELS=/opt/remotemedia/models \
    REMOTEMEDIA_PYTHON=/usr/bin/python3 \
    RUST_LOG=info
USER remotemedia
WORKDIR /var/lib/remotemedia
EXPOSE 50051 9090
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["remotemedia"]
CMD ["serve", "--config", "/etc/remotemedia/server.toml"]
