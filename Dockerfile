# The invoker base image: `invoker serve` on a small glibc runtime (musl cannot dlopen the
# function libraries), and the invoker-sdk sources a function image's build stage compiles
# the function against (see invoker.yaml's Dockerfile and README, "Packaging").
#
#   docker build -t projectriff/rust-function-invoker:0.1.0 .
#
# tests/author.rs reads this file: the_runtime_image_files_are_enough (the final stage's base
# image, COPY, USER, ENV and ENTRYPOINT, and runs the daemon from just those files), and
# a_function_image_builds_from_its_own_directory (runs the `cargo package` RUN below and the
# final stage's COPY of /sdk, then a function image's build stage against that).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p invoker
# The SDK as self-contained crates: `cargo package` writes each one's Cargo.toml without the
# workspace's inheritance, its path dependencies on the others turned into version ones.
# Each is unpacked into /sdk/NAME, and /sdk/.cargo/config.toml patches crates.io's NAME to it
# (relative paths in a --config file resolve from the directory holding its .cargo).
RUN cargo package --locked --no-verify --exclude-lockfile \
        -p invoker-abi -p invoker-sdk-macros -p invoker-sdk \
    && mkdir -p /sdk/.cargo \
    && printf '[patch.crates-io]\n' > /sdk/.cargo/config.toml \
    && for crate in target/package/*.crate; do \
        name=$(basename "$crate" .crate) \
        && name=${name%-*} \
        && mkdir /sdk/"$name" \
        && tar -xzf "$crate" -C /sdk/"$name" --strip-components=1 \
        && printf '%s = { path = "%s" }\n' "$name" "$name" >> /sdk/.cargo/config.toml; \
    done

FROM debian:bookworm-slim
# CA certificates, for a function that calls TLS services (unpinned, so that each build takes
# Debian's security updates of them). A fixed non-root user and its group; /tmp (an emptyDir
# under a read-only root) holds the copies of function libraries made at each load.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 invoker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin invoker
COPY --from=build /src/target/release/invoker /usr/local/bin/invoker
# The SDK, for a function image's build stage: `cargo build --config
# /usr/local/share/invoker/sdk/.cargo/config.toml` builds a crate depending on
# `invoker-sdk = "0.1.0"` against it.
COPY --from=build /sdk /usr/local/share/invoker/sdk
USER 10001:10001
ENV HOST=0.0.0.0 \
    GRPC_PORT=10382 \
    METRICS_PORT=9090 \
    GRACE_PERIOD=10
# gRPC, then Prometheus /metrics.
EXPOSE 10382 9090
ENTRYPOINT ["invoker", "serve"]
