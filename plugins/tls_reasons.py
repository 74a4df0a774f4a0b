"""What a failed SSL_connect/SSL_accept says of itself (`tls.error`, from `--probe tls`):
OpenSSL's first reason of libssl's own and the certificate check's X509_V_ERR_*, turned into
tls-failure's causes. The reasons are OpenSSL 3's texts (ERR_reason_error_string)."""
from __future__ import annotations

from .gluster_facts import host_of

GLUSTERD_PORT = 24007
VERIFY_DATES = {9, 10}              # X509_V_ERR_CERT_NOT_YET_VALID, _HAS_EXPIRED
VERIFY_CA = {2, 18, 19, 20, 21}     # no trusted CA signed it (issuer unknown, self-signed)
PEER_REJECTED_CA = ("alert unknown ca", "alert bad certificate", "alert certificate unknown")
NOT_TLS = ("wrong version number", "packet length too long", "unexpected eof while reading",
           "record layer failure", "the peer closed the connection", "http request")


def who(ev: dict) -> tuple[str, str]:
    """(this side, its peer) as the process saw it: SSL_accept runs in the server."""
    proc = f"{ev.get('comm') or 'process'} pid {ev.get('pid')}"
    if ev.get("function") == "SSL_accept":
        return f"the server ({proc})", "client"
    return f"the client ({proc})", "server"


def classify(ev: dict) -> tuple[str, str]:
    """(cause, why) for one tls.error event; cause is a key of tls_failure.REMEDY."""
    reason = str(ev.get("reason") or "")
    verify = ev.get("verify_result")
    side, peer = who(ev)
    said = f"OpenSSL in {side} failed {ev.get('function')} with '{reason}'"
    if ev.get("ssl_function"):
        said += f" (in {ev['ssl_function']})"
    if "certificate verify failed" in reason:
        detail = f"{said}: the {peer}'s certificate did not pass: {ev.get('verify_error')}"
        if verify in VERIFY_DATES:
            return "expired", detail + f" (X509 verify error {verify})."
        if verify in VERIFY_CA:
            return "ca-mismatch", detail + (f" (X509 verify error {verify}): its CA is not in "
                                            "this side's glusterfs.ca.")
        return "handshake-failed", detail + "."
    if "alert certificate expired" in reason:
        return "expired", (f"{said}: the {peer} rejected this side's certificate as expired "
                           "or not yet valid.")
    if any(a in reason for a in PEER_REJECTED_CA):
        return "ca-mismatch", (f"{said}: the {peer} does not trust the CA of this side's "
                               "certificate.")
    if any(t in reason for t in NOT_TLS):
        if ev.get("function") == "SSL_accept":
            return "client-plaintext", f"{said}: the client did not speak TLS."
        dst = ev.get("dst") or ""
        text = f"{said}: the server {dst} did not answer the ClientHello in TLS."
        if dst.endswith(f":{GLUSTERD_PORT}"):
            text += (f" Port {GLUSTERD_PORT} is glusterd: management encryption is on for "
                     f"this client (/var/lib/glusterd/secure-access exists here) and off on "
                     f"{host_of(dst)}.")
        return "server-plaintext", text
    return "handshake-failed", said + "."


def key(ev: dict, cause: str) -> str:
    """Folded with the capture's finding for the same server where the process knew it."""
    if ev.get("dst") and ev.get("function") == "SSL_connect":
        return f"{cause}:{host_of(ev['dst'])}"
    if ev.get("src") and ev.get("function") == "SSL_accept":     # one per refused client host
        return f"{cause}:client:{host_of(ev['src'])}"
    return f"{cause}:{ev.get('host')}:{ev.get('comm')}"
