"""tls-failure: an encrypted Gluster connection that does not come up, and why.

Evidence, best first: a TLS alert sent in clear (its description names the cause: unknown_ca,
certificate_expired; OpenSSL's client sends one in clear even under TLS 1.3 when it rejects
the server's certificate, while a server's rejection of the client is encrypted under 1.3),
a certificate read from a TLS 1.2 handshake whose validity does not cover the capture, how far
the connection got (a ClientHello the server never answered: it does not speak TLS; RPC sent
to a side that answers in TLS), and the Gluster log lines of the moment (`ssl_dump_error_stack`
with OpenSSL's reason, "wrong MSG-TYPE" on a plaintext brick, "SETVOLUME on remote-host failed"
over TLS: a CN that auth.ssl-allow does not name), and with `--probe tls` the failed
SSL_connect/SSL_accept's own OpenSSL reason (`tls.error`, read by tls_reasons.py). Classes,
each with its remedy: CA mismatch, expired or not yet valid certificate, CN not allowed, one
side plaintext (on glusterd's port 24007: management encryption on one side only), other
handshake failure.
"""
from __future__ import annotations

from collections import OrderedDict, deque

from correlate import hookimpl
from correlate.detector import Detector, Option, Wants

from . import tls_reasons
from .gluster_facts import host_of

WINDOW_NS = 5_000_000_000
TLS_CONTEXT_NS = 300_000_000_000     # a TLS handshake this recent makes a SETVOLUME refusal a CN one
MAX_CONNS = 4096
HOLD_NS = 10_000_000_000     # a loss shows within seconds (ACKs of what the capture missed)
MAX_HELD = 256
SSL = "/usr/lib/ssl"                 # where Debian's Gluster 10.3 reads glusterfs.{pem,key,ca}

CA_ALERTS = {"unknown_ca", "bad_certificate", "certificate_unknown"}
REMEDY = {
    "ca-mismatch": (
        "The rejecting side's CA file does not hold the CA that signed its peer's certificate. "
        f"Compare `openssl x509 -noout -issuer -in {SSL}/glusterfs.pem` on the peer with "
        f"`openssl x509 -noout -subject -in {SSL}/glusterfs.ca` on the rejecting side (upstream "
        "builds use /etc/ssl). Put every signing CA into glusterfs.ca on all servers and clients "
        "(the file may hold several certificates), then stop and start the volume and remount."),
    "expired": (
        f"Check the dates: `openssl x509 -noout -subject -dates -in {SSL}/glusterfs.pem` on the "
        "side named. Issue a new certificate with the same CN from the same CA, replace "
        "glusterfs.pem and glusterfs.key, then stop/start the volume and remount. A notBefore "
        "in the future means a clock is wrong: check NTP on both hosts."),
    "cn-not-allowed": (
        "TLS worked but the brick refused the client's certificate name. Read the client's CN "
        f"with `openssl x509 -noout -subject -in {SSL}/glusterfs.pem` on the client and the "
        "allowed ones with `gluster volume get VOLUME auth.ssl-allow`; add it with `gluster "
        "volume set VOLUME auth.ssl-allow 'cn1,cn2,...'` (comma-separated, or '*' for any "
        "certificate the CA signed) and stop/start the volume."),
    "server-plaintext": (
        "The client speaks TLS (client.ssl on) and the server does not. Make both sides agree: "
        "`gluster volume set VOLUME server.ssl on` (or client.ssl off), then stop/start the "
        "volume and remount. On glusterd's port 24007 the switch is management encryption: "
        "/var/lib/glusterd/secure-access must exist on every server and client, or on none "
        "(restart glusterd after changing it)."),
    "client-plaintext": (
        "The client sends plaintext RPC to a server that expects TLS (server.ssl on, or "
        "/var/lib/glusterd/secure-access on this server only). Turn TLS on for the client "
        "(`gluster volume set VOLUME client.ssl on`, secure-access on the client host) and "
        "remount."),
    "management-plaintext": (
        "Management encryption is on where /var/lib/glusterd/secure-access exists: this client "
        "has it, the glusterd it asks (port 24007) does not. Either create the file on every "
        "server and client (`touch /var/lib/glusterd/secure-access`, each with its "
        f"glusterfs.pem/.key/.ca in {SSL}) and restart glusterd on every server, or remove it "
        "on this client; then remount."),
    "handshake-failed": (
        "TLS 1.3 encrypts the reason. Read the `ssl_dump_error_stack` lines in the brick log "
        "(/var/log/glusterfs/bricks/) and the client log, or test by hand: `openssl s_client "
        f"-connect HOST:PORT -cert {SSL}/glusterfs.pem -key {SSL}/glusterfs.key -CAfile "
        f"{SSL}/glusterfs.ca`; `correlate run --probe tls` shows the calls inside."),
}
TITLES = {"ca-mismatch": "TLS: certificate not signed by a trusted CA",
          "expired": "TLS: certificate expired or not yet valid",
          "cn-not-allowed": "TLS: client certificate CN not in auth.ssl-allow",
          "server-plaintext": "TLS: client speaks TLS, server plaintext",
          "client-plaintext": "TLS: client speaks plaintext, server TLS",
          "management-plaintext": "TLS: management encryption on the client, not on glusterd",
          "handshake-failed": "TLS: handshake failed"}


class TlsFailure(Detector):
    id = "tls-failure"
    options = {"log_window_s": Option(WINDOW_NS / 1e9, "seconds around a failed TLS connection "
                                                       "in which log lines join its evidence")}
    wants = Wants(kinds={"tls.handshake", "tls.certificate", "tls.connection", "rpc.reply",
                         "tcp.close", "tcp.gap", "tls.error"},
                  layers={"log"}, procedures={"SETVOLUME"}, details=())

    def __init__(self):
        self.certs: OrderedDict[tuple, list[dict]] = OrderedDict()    # (source, conn) -> certs
        self.logs: deque[dict] = deque(maxlen=256)       # TLS-related log lines, recent first out
        self.tls_seen_ns: int | None = None              # last sign of TLS (handshake, ssl log)
        self.wire_failures: deque[int] = deque(maxlen=256)
        self.log_only: list[dict] = []                   # verify failures with no wire behind
        self.encrypted_ok = 0
        self.resets: deque[dict] = deque(maxlen=64)      # connections a server reset
        self.plaintext_lines: deque[dict] = deque(maxlen=64)  # bricks' "wrong version number"
        self.plaintext_resets = 0
        self.first_encrypted: dict | None = None         # a tls.connection that came up
        self.inside_seen = False                         # RPC decoded from --probe tls
        self.held: deque[tuple[int, dict]] = deque()     # (judge at, finding), MAX_HELD
        self.closed: OrderedDict[tuple, None] = OrderedDict()   # connections seen ending
        self.first_gap: dict = {}        # capture (source) -> when it first lost packets

    # -- events ------------------------------------------------------------------------------
    def observe(self, ev):
        # held findings leave at the first event past their time, as a tick would send them
        # (a runtime without subscriptions never ticks)
        released = self.tick(ev["time_ns"]) if self.held else []
        found = self._observe(ev)
        return [*released, *found] if released else found

    def _observe(self, ev):
        kind = ev.get("kind")
        if kind == "tls.handshake":
            self.tls_seen_ns = ev["time_ns"]
        elif kind == "tls.certificate":
            key = (ev.get("source"), ev.get("conn"))
            self.certs.setdefault(key, []).append(ev)
            if len(self.certs) > MAX_CONNS:
                self.certs.popitem(last=False)
        elif kind == "tls.connection":
            return self._connection(ev)
        elif kind == "tls.error":
            return [self._process_error(ev)]
        elif kind == "tcp.gap":
            if len(self.first_gap) < MAX_CONNS:
                self.first_gap.setdefault(ev.get("source"), ev["time_ns"])
        elif kind == "tcp.close":
            self.closed[(ev.get("source"), ev.get("conn"))] = None
            if len(self.closed) > MAX_CONNS:
                self.closed.popitem(last=False)
            if ev.get("reason") == "rst" and ev.get("by") == "server":
                self.resets.append(ev)
                return self._reset_after_plaintext(ev)
        elif kind == "rpc.reply":
            self.inside_seen = self.inside_seen or ev.get("source") == "tls"
            if ev.get("source") == "tls" and ev.get("op_ret") == -1 \
                    and ev.get("op_errno") == 13:
                return [self._cn_refused(ev, [ev])]
        elif ev.get("layer") == "log":
            return self._log(ev)
        return ()

    def _log(self, ev):
        msg, fn = str(ev.get("message", "")), ev.get("function")
        if fn == "ssl_setup_connection_params" and "IO path is ENABLED" in msg:
            self.tls_seen_ns = ev["time_ns"]
            return ()
        if fn == "ssl_dump_error_stack" and "wrong version number" in msg \
                and str(ev.get("xlator", "")).endswith("-server"):
            return [self._plaintext_client(ev)]
        if fn == "ssl_dump_error_stack" or "wrong MSG-TYPE" in msg:
            self.logs.append(ev)
            if "certificate verify failed" in msg or "alert unknown ca" in msg:
                self.log_only.append(ev)
                del self.log_only[:-64]
            return ()
        refused = (msg.startswith("SETVOLUME on remote-host failed")
                   and (ev.get("fields") or {}).get("remote-error") == "Authentication failed")
        if (refused or msg.startswith("Cannot authenticate client")) and self._tls_recent(ev):
            return [self._cn_refused(ev, [ev])]
        return ()

    def _tls_recent(self, ev) -> bool:
        return self.tls_seen_ns is not None and 0 <= ev["time_ns"] - self.tls_seen_ns \
            <= TLS_CONTEXT_NS

    # -- a connection that did not come up ----------------------------------------------------
    def _connection(self, ev):
        certs = self.certs.pop((ev.get("source"), ev.get("conn")), [])
        if ev.get("stage") == "encrypted data" and not ev.get("plaintext_side"):
            if ev.get("decrypted_records"):     # a key log opened it: its RPC was decoded
                return ()
            self.encrypted_ok += 1
            self.first_encrypted = self.first_encrypted or ev
            return ()
        self.wire_failures.append(ev["time_ns"])
        nearby = [e for e in self.logs
                  if abs(e["time_ns"] - ev["time_ns"]) <= self.option("log_window_s") * 1e9]
        cause, why = self._classify(ev, certs, nearby)
        server = ev.get("dst")
        cause = _management(cause, server)
        explanation = (f"The TLS connection from {ev.get('src')} to {server} "
                       f"({ev.get('tls_version') or 'no version agreed'}) ended at stage "
                       f"'{ev.get('stage')}': {why}")
        finding = self.finding(ev["time_ns"], severity="error", title=TITLES[cause],
                               explanation=explanation, remedy=REMEDY[cause],
                               evidence=[ev, *certs, *nearby], key=f"{cause}:{host_of(server)}",
                               cause=cause, server=server, client=ev.get("src"))
        named = any(a.get("description") for a in ev.get("alerts") or ()) or nearby or \
            any(c.get("valid_at_capture") is False for c in certs)
        if named:
            return [finding]
        if self.closed.pop((ev.get("source"), ev.get("conn")), False) is False \
                or ev.get("stage") == "no ClientHello":
            # no FIN or RST: the capture ended (or was cut) mid-handshake; no ClientHello:
            # the capture began (or lost) past the start of the connection
            return ()
        # Told from what the capture did not show (no ServerHello, a side that looked like
        # plaintext, no alert): a packet the capture lost does the same, and the loss may
        # show only later (a receiver's ACK), so judged once HOLD_NS of capture time passed
        self.held.append((ev["time_ns"] + HOLD_NS, finding))
        if len(self.held) > MAX_HELD:      # bounded: the oldest is judged now
            return [self._judged(*self.held.popleft())]
        return ()

    def _judged(self, at: int, finding: dict) -> dict:
        """Info when its capture had lost packets by `at` (the same verdict whether a tick or
        the end of input judges it)."""
        first = self.first_gap.get(finding["evidence"][0].get("source"))
        if first is not None and first <= at:
            finding["severity"] = "info"
            finding["explanation"] += (" The capture lost packets (see capture-loss): what it "
                                       "did not show may be among them, so this is no evidence "
                                       "of a failure.")
        return finding

    def due(self) -> int | None:
        return self.held[0][0] if self.held else None

    def tick(self, now: int) -> list[dict]:
        out = []
        while self.held and self.held[0][0] <= now:
            out.append(self._judged(*self.held.popleft()))
        return out

    def _classify(self, ev, certs, nearby) -> tuple[str, str]:
        alerts = [a for a in ev.get("alerts") or () if a.get("description")]
        for a in alerts:
            side, other = a["sent_by"], "server" if a["sent_by"] == "client" else "client"
            if a["description"] == "certificate_expired":
                return "expired", (f"the {side} rejected the {other}'s certificate as expired or "
                                   "not yet valid (fatal alert certificate_expired, in clear)."
                                   + _dates(certs, other))
            if a["description"] in CA_ALERTS:
                return "ca-mismatch", (f"the {side} does not trust the CA of the {other}'s "
                                       f"certificate (fatal alert {a['description']}, in clear).")
        for c in certs:
            if c.get("chain_index") == 0 and c.get("valid_at_capture") is False:
                return "expired", (f"the {c.get('sent_by')}'s certificate ({c.get('subject')}) "
                                   "is not valid at the time of the capture." + _dates([c], c.get("sent_by")))
        if ev.get("plaintext_side") == "client":
            return "client-plaintext", ("the client sent plaintext RPC and the server answered "
                                        "in TLS.")
        if ev.get("plaintext_side") == "server":
            return "server-plaintext", ("the client sent TLS and the server answered with "
                                        "plaintext RPC.")
        texts = " ".join(str(e.get("message", "")) for e in nearby)
        if ev.get("stage") == "no ServerHello" and not ev.get("server_bytes"):
            log = " (the brick logs 'wrong MSG-TYPE': it read the ClientHello as RPC)" \
                if "wrong MSG-TYPE" in texts else ""
            return "server-plaintext", ("the client sent a ClientHello and the server closed "
                                        f"without a byte of TLS: it does not speak TLS here{log}.")
        if "alert unknown ca" in texts:
            return "ca-mismatch", ("the log says the peer sent 'unknown ca': it does not trust "
                                   "the CA of this side's certificate.")
        if "certificate verify failed" in texts:
            who = "; ".join(sorted({_side_of_log(e) for e in nearby
                                    if "certificate verify failed" in str(e.get("message"))}))
            return "handshake-failed", (
                f"OpenSSL's 'certificate verify failed' ({who}): the certificate is not "
                "signed by a CA in glusterfs.ca or is outside its validity. Under TLS 1.3 the "
                "alert that would tell which is encrypted; check both with `openssl x509 "
                "-noout -issuer -dates`.")
        return "handshake-failed", ("no clear alert and no log line tell why (TLS 1.3 "
                                    "encrypts the alert).")

    def _process_error(self, ev):
        """A handshake the process itself saw fail (--probe tls): OpenSSL's own reason."""
        cause, why = tls_reasons.classify(ev)
        cause = _management(cause, ev.get("dst"))
        self.wire_failures.append(ev["time_ns"])    # the log's verify failure is this one
        where = f" to {ev['dst']}" if ev.get("dst") else ""
        client = ev.get("src") if ev.get("function") == "SSL_accept" else None
        if client:      # the server's side: the socket named the client that failed
            where = f" from the client {client}{where} (the server's SSL_accept)"
        return self.finding(ev["time_ns"], severity="error", title=TITLES[cause],
                            explanation=f"A TLS handshake{where} failed: {why}",
                            remedy=REMEDY[cause], evidence=[ev],
                            key=tls_reasons.key(ev, cause), cause=cause, server=ev.get("dst"),
                            **({"client": client} if client else {}))

    def _cn_refused(self, ev, evidence):
        where = ev.get("xlator") or ev.get("src") or "the brick"
        explanation = (f"{where}: the brick refused SETVOLUME with 'Authentication failed' "
                       "(errno 13) over a TLS connection that came up: the client's certificate "
                       "is trusted but its CN is not in the volume's auth.ssl-allow (or the "
                       "client's address is excluded by auth.allow/auth.reject).")
        return self.finding(ev["time_ns"], severity="error", title=TITLES["cn-not-allowed"],
                            explanation=explanation, remedy=REMEDY["cn-not-allowed"],
                            evidence=evidence, key="cn-not-allowed", cause="cn-not-allowed")

    def _reset_after_plaintext(self, ev):
        """The brick logs before its RST reaches the capture: the reset joins the finding."""
        window = self.option("log_window_s") * 1e9
        if not any(0 <= ev["time_ns"] - l["time_ns"] <= window for l in self.plaintext_lines):
            return ()
        self.plaintext_resets += 1
        return [self.finding(ev["time_ns"], severity="error", title=TITLES["client-plaintext"],
                             explanation=self._plaintext_text(self.plaintext_lines[-1]),
                             remedy=REMEDY["client-plaintext"], evidence=[ev],
                             key="client-plaintext", refines=True, cause="client-plaintext")]

    def _plaintext_text(self, line) -> str:
        wire = (f" The capture shows {self.plaintext_resets} connection(s) to bricks reset by "
                "the server right after the client's first RPC." if self.plaintext_resets else "")
        return (f"{line.get('xlator')}: OpenSSL on the brick read a record that is not TLS "
                "('wrong version number'): the client sent plaintext RPC to a brick with "
                "server.ssl on." + wire)

    def _plaintext_client(self, line):
        """A TLS brick read something that is not TLS ("wrong version number"): on the wire the
        client's RPC (DUMP, PING) to the brick, which resets the connection unanswered (those
        resets join by _reset_after_plaintext)."""
        window = self.option("log_window_s") * 1e9
        self.plaintext_lines.append(line)
        resets = [e for e in self.resets if 0 <= line["time_ns"] - e["time_ns"] <= window]
        self.plaintext_resets += len(resets)
        return self.finding(line["time_ns"], severity="error", title=TITLES["client-plaintext"],
                            explanation=self._plaintext_text(line),
                            remedy=REMEDY["client-plaintext"], evidence=[line, *resets],
                            key="client-plaintext", cause="client-plaintext")

    def finish(self):
        out = [self._judged(at, finding) for at, finding in self.held]
        self.held.clear()
        if self.first_encrypted is not None and not self.inside_seen:
            # not a problem, but what the run could not see: said once, as info
            ev = self.first_encrypted
            out.append(self.finding(ev["time_ns"], severity="info",
                                    title="encrypted Gluster connections: RPC not visible",
                                    explanation=f"{self.encrypted_ok} TLS connection(s) to Gluster "
                                                f"ports ({ev.get('tls_version')}) carried data the "
                                                "capture cannot decode; findings that need their "
                                                "RPC (latency, errors, hangs) cannot see them.",
                                    remedy="Run `correlate run --probe tls` on the client or "
                                           "server host to decode the RPC inside, or capture "
                                           "with `--probe tls-keys` and give the key log to "
                                           "--tls-keylog (docs/probes.md).",
                                    evidence=[ev], key="encrypted", cause="encrypted"))
        # verify failures from logs alone (no capture of that moment)
        window = self.option("log_window_s") * 1e9
        for e in self.log_only:
            if any(abs(t - e["time_ns"]) <= window for t in self.wire_failures):
                continue
            msg = str(e.get("message", ""))
            cause = "ca-mismatch" if "alert unknown ca" in msg else "handshake-failed"
            why = ("the peer sent 'unknown ca'" if cause == "ca-mismatch"
                   else f"OpenSSL's 'certificate verify failed' ({_side_of_log(e)}): the peer's "
                        "certificate is not signed by a trusted CA, or is expired or not yet "
                        "valid (a capture under TLS 1.2 or the peer's log tells which)")
            out.append(self.finding(e["time_ns"], severity="error", title=TITLES[cause],
                                    explanation=f"{e.get('xlator')}: {why}.",
                                    remedy=REMEDY[cause] if cause == "ca-mismatch"
                                    else REMEDY["ca-mismatch"] + " " + REMEDY["expired"],
                                    evidence=[e], key=f"{cause}:log", cause=cause))
        return out


def _management(cause: str, server) -> str:
    """A server that answers TLS with plaintext on glusterd's port: management encryption
    (secure-access) on one side only."""
    if cause == "server-plaintext" and str(server or "").endswith(f":{tls_reasons.GLUSTERD_PORT}"):
        return "management-plaintext"
    return cause


def _side_of_log(e: dict) -> str:
    xl = str(e.get("xlator", ""))
    if "-client-" in xl:
        return f"the client ({xl}) rejected the brick's certificate"
    if xl.endswith("-server"):
        return f"the brick ({xl}) rejected the client's certificate"
    return xl


def _dates(certs: list[dict], side: str) -> str:
    import datetime as dt
    for c in certs:
        if c.get("sent_by") == side and c.get("chain_index") == 0:
            def day(ns):
                return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            return (f" Its certificate {c.get('subject')} (issuer {c.get('issuer')}) is valid "
                    f"from {day(c['not_before_ns'])} to {day(c['not_after_ns'])}.")
    return ""


@hookimpl
def correlate_detectors(config):
    return [TlsFailure()]
