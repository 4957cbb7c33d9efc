#!/usr/bin/env bash
# `openssl s_client` as an independent TLS client of ternd.
#
# usage: tls_s_client.sh TERND ENGINE
#
# Starts TERND (`--io-engine ENGINE`) in development TLS mode on loopback, then, over TLS 1.3 and
# TLS 1.2 in turn, trusting only the certificate ternd wrote to its data directory and checking the
# host name, sends three frames taken from the spec's vectors: Hello, Ping, and a frame whose
# length field is 0. ternd must answer Welcome, then exactly the Pong of the vector file, then a
# FRAME_TOO_SMALL error, and close. A client that does not trust the certificate must fail the
# handshake. Exits 0 when all of that holds.
set -euo pipefail

ternd=$1
engine=$2
here=$(cd "$(dirname "$0")" && pwd)
vectors="$here/../../spec/vectors"
work=$(mktemp -d)
pid=
cleanup() {
    if [[ -n $pid ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "tls_s_client.sh ($engine): $*" >&2
    exit 1
}

mkfifo "$work/out"
RUST_LOG=warn "$ternd" --data-dir "$work/data" --cores 2 --io-engine "$engine" \
    --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 --tls-self-signed \
    --metrics-listen 127.0.0.1:0 --ws-listen 127.0.0.1:0 --password-iterations 1000 >"$work/out" 2>"$work/ternd.log" &
pid=$!
read -r -t 30 line <"$work/out" || fail "ternd printed no listening line"
tls=$(tr ' ' '\n' <<<"$line" | sed -n 's/^tls=//p')
[[ -n $tls ]] || fail "no tls= address in: $line"
ca="$work/data/tls/self-signed.pem"
[[ -s $ca ]] || fail "no certificate at $ca"

cat "$vectors/valid/hello.bin" "$vectors/valid/ping.bin" "$vectors/invalid/length_zero.bin" \
    >"$work/request.bin"
welcome_head=$(xxd -p -l 6 "$vectors/valid/welcome.bin" | cut -c 9-12) # the Welcome type
pong=$(xxd -p "$vectors/valid/pong.bin" | tr -d '\n')

for version in -tls1_3 -tls1_2; do
    timeout 20 openssl s_client -connect "$tls" "$version" -quiet \
        -CAfile "$ca" -verify_return_error -verify_hostname localhost -servername localhost \
        <"$work/request.bin" >"$work/reply.bin" 2>"$work/s_client.log" ||
        fail "s_client $version failed: $(cat "$work/s_client.log")"
    reply=$(xxd -p "$work/reply.bin" | tr -d '\n')
    # Frame 1: Welcome (4-byte length, then the type).
    [[ ${reply:8:4} == "$welcome_head" ]] || fail "$version: first frame is not Welcome: $reply"
    welcome_len=$((16#${reply:0:8}))
    rest=${reply:$(((4 + welcome_len) * 2))}
    # Frame 2: the vector's Pong, byte for byte.
    [[ ${rest:0:${#pong}} == "$pong" ]] || fail "$version: no Pong after Welcome: $rest"
    rest=${rest:${#pong}}
    # Frame 3: Error (type 0x4000), request id 0, code 3 FRAME_TOO_SMALL; then the close.
    [[ ${rest:8:4} == 4000 && ${rest:12:8} == 00000000 && ${rest:20:4} == 0003 ]] ||
        fail "$version: no FRAME_TOO_SMALL error: $rest"
    echo "s_client $version: Welcome, Pong, FRAME_TOO_SMALL, closed"
done

# Trusting nothing but the system's roots, the handshake must fail.
if timeout 20 openssl s_client -connect "$tls" -quiet -verify_return_error \
    -CAfile /dev/null -CApath /nonexistent -servername localhost \
    <"$work/request.bin" >/dev/null 2>"$work/s_client.log"; then
    fail "an untrusted certificate was accepted"
fi
echo "s_client with an untrusted certificate: refused"
