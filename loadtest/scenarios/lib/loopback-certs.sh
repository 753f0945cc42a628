#!/usr/bin/env bash
# Makes a throwaway CA and a server certificate for 127.0.0.1 (P-256, one
# day) in DIR, for a benchmark's or training run's TLS upstream:
#   DIR/ca.pem                      the CA to trust (--upstream-ca-file, SSL_CERT_FILE, curl --cacert)
#   DIR/server.pem, DIR/server.key  the upstream mock's certificate and key
# openssl's output goes to DIR/openssl.log; on failure its last lines go to
# stderr and the exit status is 1.
#
#   bash loadtest/scenarios/lib/loopback-certs.sh "$WORK"
set -euo pipefail
DIR=${1:?usage: loopback-certs.sh DIR}
command -v openssl > /dev/null || { echo "error: making test certificates needs openssl (apt-get install -y openssl)" >&2; exit 1; }
(
  cd "$DIR" &&
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=loopback-test-ca \
    -keyout ca.key -out ca.pem &&
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr &&
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext &&
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile server.ext -out server.pem
) > "$DIR/openssl.log" 2>&1 || { echo "error: making the test certificates failed:" >&2; tail -5 "$DIR/openssl.log" >&2; exit 1; }
