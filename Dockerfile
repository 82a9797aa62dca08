# carebridge gateway image: build with cargo, run as an unprivileged user.
# FHIR packages are fetched at build time by scripts/fhir-packages.sh (pinned, hash-checked).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip npm openssl && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV CAREBRIDGE_PACKAGE_CACHE=/opt/fhir-packages
RUN scripts/fhir-packages.sh && cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/carebridge carebridge && mkdir -p /var/lib/carebridge && chown carebridge /var/lib/carebridge
COPY --from=build /src/target/release/carebridge /usr/local/bin/carebridge
COPY --from=build /opt/fhir-packages /opt/fhir-packages
COPY --from=build /src/profiles /opt/carebridge/profiles
ENV CAREBRIDGE_PACKAGE_CACHE=/opt/fhir-packages \
    CAREBRIDGE_LISTEN=0.0.0.0:8080
USER carebridge
WORKDIR /var/lib/carebridge
EXPOSE 8080
ENTRYPOINT ["carebridge"]
CMD ["serve"]
