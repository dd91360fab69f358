# flotilla container image.
#   docker build -t flotilla:0.1.0 --build-arg FLOTILLA_COMMIT=$(git rev-parse --short HEAD) .
# Stage 1 builds the release binary; stage 2 is a small non-root runtime with CA certificates,
# the TLS library git2 links against, kubectl (for kustomize apps) and helm (for charts). Git itself is not needed:
# flotilla speaks Git through libgit2.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests integration \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs tests/main.rs integration/main.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src ./src
ARG FLOTILLA_COMMIT=unknown
ENV FLOTILLA_COMMIT=${FLOTILLA_COMMIT}
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && strip target/release/flotilla \
 && ./target/release/flotilla version

# kubectl runs `kubectl kustomize` for kustomize apps; pinned and checked against its published sha256.
FROM debian:bookworm-slim AS kubectl
ARG KUBECTL_VERSION=v1.33.4
ARG TARGETARCH=amd64
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && curl -fsSLo /kubectl "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/${TARGETARCH}/kubectl" \
 && echo "$(curl -fsSL "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/${TARGETARCH}/kubectl.sha256")  /kubectl" | sha256sum -c - \
 && chmod 0755 /kubectl

# helm runs `helm template` for chart apps (flotilla fetches the charts itself); pinned and
# checked against its published sha256.
FROM debian:bookworm-slim AS helm
ARG HELM_VERSION=v4.0.0
ARG TARGETARCH=amd64
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && curl -fsSLo /helm.tgz "https://get.helm.sh/helm-${HELM_VERSION}-linux-${TARGETARCH}.tar.gz" \
 && echo "$(curl -fsSL "https://get.helm.sh/helm-${HELM_VERSION}-linux-${TARGETARCH}.tar.gz.sha256sum" | cut -d' ' -f1)  /helm.tgz" | sha256sum -c - \
 && tar -xzf /helm.tgz -C / "linux-${TARGETARCH}/helm" \
 && install -m 0755 "/linux-${TARGETARCH}/helm" /helm

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 flotilla \
 && useradd --system --uid 65532 --gid flotilla --home-dir /var/lib/flotilla --shell /usr/sbin/nologin flotilla \
 && install -d -o flotilla -g flotilla -m 0750 /var/lib/flotilla /run/flotilla
COPY --from=kubectl /kubectl /usr/local/bin/kubectl
COPY --from=helm /helm /usr/local/bin/helm
COPY --from=build /src/target/release/flotilla /usr/local/bin/flotilla
USER 65532:65532
ENV STATE_DIRECTORY=/var/lib/flotilla
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/flotilla"]
CMD ["run", "--config", "/etc/flotilla/config/flotilla.yaml"]
