#!/bin/sh
# Start Prometheus on BIND, scraping the replicas in DIGITGRAD_TARGETS (host:port, separated by
# spaces) and HAProxy's metrics at HAPROXY_TARGET. Prometheus reads no environment variables in
# its configuration, so the targets go into the file_sd lists prometheus.yml names.
set -eu

targets() {  # a file_sd list: [{"targets": ["a:1", "b:2"]}]
    printf '[{"targets": ['
    separator=""
    for target in $1; do
        printf '%s"%s"' "$separator" "$target"
        separator=", "
    done
    printf ']}]\n'
}

mkdir -p /tmp/targets
targets "$DIGITGRAD_TARGETS" >/tmp/targets/digitgrad.json
targets "$HAPROXY_TARGET" >/tmp/targets/haproxy.json
exec prometheus --config.file=/etc/prometheus/prometheus.yml \
    --storage.tsdb.path=/var/lib/prometheus/metrics2 \
    --web.listen-address="$BIND" "$@"
