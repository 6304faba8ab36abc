#!/usr/bin/env bash
# Creates development certificates for the shipped config: a throwaway CA (dev-ca/ca.crt, dev-ca/ca.key) and,
# signed by it, one <host>.crt/<host>.key pair per host of config/hosts/*.toml plus default.crt
# (localhost, 127.0.0.1) for clients without SNI. The CA lives in dev-ca/, out of the served set. For development only: never use these keys in
# production, never commit them (.gitignore keeps *.key and *.crt out of git).
#
#   bash certs/make-dev-certs.sh            # writes into certs/
#   CERTS_DIR=/tmp/c bash certs/make-dev-certs.sh
#
# The shipped config/gateway.toml serves plain HTTP only and has no TLS lines to uncomment: add
# `https = "0.0.0.0:8443"` under [listen] and a [tls] section with certs_dir = "../certs" and
# default_cert = "default" (certs/README.md shows the lines), then trust certs/dev-ca/ca.crt in your
# client, e.g. curl --cacert certs/dev-ca/ca.crt --resolve dashboard.paris:8443:127.0.0.1 https://dashboard.paris:8443/
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${CERTS_DIR:-certs}"
days="${DAYS:-90}"
mkdir -p "$out/dev-ca"
command -v openssl >/dev/null || { echo "openssl is needed (apt-get install openssl)" >&2; exit 1; }

if [[ ! -f "$out/dev-ca/ca.key" ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
        -subj "/CN=consent-gateway development CA" \
        -keyout "$out/dev-ca/ca.key" -out "$out/dev-ca/ca.crt" 2>/dev/null
    echo "created $out/dev-ca/ca.crt (trust it in your browser or curl --cacert)"
fi

issue() { # name san
    local name=$1 san=$2 tmp
    tmp=$(mktemp -d)
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
        -keyout "$tmp/key" -out "$tmp/csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$san" > "$tmp/ext"
    openssl x509 -req -in "$tmp/csr" -CA "$out/dev-ca/ca.crt" -CAkey "$out/dev-ca/ca.key" -CAcreateserial \
        -days "$days" -extfile "$tmp/ext" -out "$tmp/crt" 2>/dev/null
    mv "$tmp/key" "$out/$name.key"
    mv "$tmp/crt" "$out/$name.crt"
    chmod 600 "$out/$name.key"
    rm -rf "$tmp"
    echo "issued $out/$name.crt ($san, $days days)"
}

# Every host pattern of the shipped registry; a *.suffix pattern gets a wildcard certificate.
grep -h '^hosts' config/hosts/*.toml | grep -o '"[^"]*"' | tr -d '"' | sort -u | while read -r host; do
    issue "$host" "DNS:$host"
done
issue default "DNS:localhost,IP:127.0.0.1"
echo "next: add https = \"0.0.0.0:8443\" under [listen] and [tls] certs_dir = \"../certs\", default_cert = \"default\" to config/gateway.toml (see certs/README.md)"
