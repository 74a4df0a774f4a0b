"""auth-rejected: the server refuses the client.

Two forms. SETVOLUME (the handshake that attaches a client to a brick) answered with
op_ret -1 / EACCES and an ERROR text such as "Authentication failed": auth.allow or
auth.reject excludes the client; libgfapi callers like qemu-img then hang in glfs_init.
And RPC-level AUTH_ERROR denials: the client's source port is unprivileged (> 1023) while
server.allow-insecure is off.
"""
from __future__ import annotations

from collections import deque

from correlate import hookimpl
from correlate.detector import Detector, Option, Wants
from correlate.state import GlusterState

from .gluster_facts import find_key, host_of, port_of

LOG_WINDOW_NS = 5_000_000_000


class AuthRejected(Detector):
    id = "auth-rejected"
    options = {"log_window_s": Option(LOG_WINDOW_NS / 1e9, "seconds around a SETVOLUME failure "
                                                           "in which client log lines and glfs_init "
                                                           "calls join its evidence")}
    # Every failed reply: a denial may answer any procedure (or a call that was not
    # captured). The SETVOLUME call a failed reply answers is the shared state's (state.calls).
    wants = Wants(kinds={"probe.call", "probe.return", "rpc.reply"},
                  layers={"log"}, procedures=(), failures=True, details={"SETVOLUME"})

    def __init__(self, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.context: deque[dict] = deque(maxlen=256)   # glfs_init calls, client log lines
        self.init_returned: set[tuple] = set()
        self.reported: deque[dict] = deque(maxlen=64)     # SETVOLUME findings, for log lines after

    def observe(self, ev):
        kind = ev.get("kind")
        if kind == "probe.call" and ev.get("function") == "glfs_init":
            self.context.append(ev)
        elif kind == "probe.return" and ev.get("function") == "glfs_init":
            self.init_returned.add((ev.get("pid"), ev.get("tid")))
        elif ev.get("layer") == "log" and "SETVOLUME" in str(ev.get("message", "")):
            self.context.append(ev)
            return self._log_after_reply(ev)
        elif kind == "rpc.reply" and ev.get("procedure") == "SETVOLUME" and ev.get("op_ret") == -1:
            return [self._setvolume_failed(ev)]
        elif kind == "rpc.reply" and ev.get("reply_status") == "denied":
            return [self._denied(ev)]
        return ()

    def _log_after_reply(self, line: dict) -> list[dict]:
        """The client logs a SETVOLUME failure in its reply callback, so after the reply: the
        line joins the finding already reported (the latest within the window before it)."""
        for f in reversed(self.reported):
            if 0 <= line["time_ns"] - f["time_ns"] <= self.option("log_window_s") * 1e9:
                return [self.finding(line["time_ns"], severity=f["severity"], title=f["title"],
                                     explanation=f["explanation"], remedy=f["remedy"],
                                     evidence=[line], key=f["key"], refines=True)]
        return []

    def _nearby(self, t: int) -> list[dict]:
        out = []
        for e in self.context:
            if abs(t - e["time_ns"]) <= self.option("log_window_s") * 1e9:
                out.append(e)
        return out

    def _setvolume_failed(self, reply: dict) -> dict:
        call = self.state.calls.call_of(reply)
        error = find_key(reply.get("result") or {}, "ERROR") or reply.get("errno_name") or "?"
        volume = find_key((call or {}).get("args") or {}, "remote-subvolume") or "?"
        client = reply.get("dst")
        nearby = self._nearby(reply["time_ns"])
        hanging = [e for e in nearby if e.get("kind") == "probe.call"
                   and (e.get("pid"), e.get("tid")) not in self.init_returned]
        hang = ""
        if hanging:
            p = hanging[0]
            hang = (f" {p.get('comm')} (pid {p.get('pid')}) is in glfs_init, which does not "
                    "return: the hang users see (qemu-img over gluster:// waits forever).")
        explanation = (f"The brick at {reply.get('src')} refused SETVOLUME for {volume} from "
                       f"{client}: op_ret -1, op_errno {reply.get('op_errno')} "
                       f"({reply.get('errno_name')}), ERROR \"{error}\".{hang}")
        remedy = ("Check the volume's access lists: `gluster volume get VOLUME auth.allow` and "
                  "`gluster volume get VOLUME auth.reject`; the address the brick sees is "
                  f"{host_of(client)}. Fix with `gluster volume set VOLUME auth.allow <clients>` "
                  "(or reset auth.reject), then stop and start the volume so the bricks reload "
                  "it. The client log says 'SETVOLUME on remote-host failed'.")
        evidence = [e for e in (call, reply) if e] + nearby
        finding = self.finding(reply["time_ns"], severity="critical",
                               title=f"SETVOLUME rejected: {error}", explanation=explanation,
                               remedy=remedy, evidence=evidence,
                               key=f"setvolume:{host_of(reply.get('src'))}:{error}",
                               error_text=error, server=reply.get("src"), client=client,
                               **self._where(call))
        self.reported.append(finding)
        return finding

    @staticmethod
    def _where(call: dict | None) -> dict:
        """The brick and volume the SETVOLUME asked for (what --suppress matches)."""
        args = (call or {}).get("args") or {}
        host, path = find_key(args, "remote-host"), find_key(args, "remote-subvolume")
        volume = find_key(args, "volfile-key")
        where = {"brick": f"{host}:{path}"} if isinstance(host, str) and isinstance(path, str) else {}
        if isinstance(volume, str):
            where["volume"] = volume.lstrip("/")
        return where

    def _denied(self, reply: dict) -> dict:
        client_port = port_of(reply.get("dst"))
        status = reply.get("auth_status") or reply.get("reject_status")
        unprivileged = client_port is not None and client_port > 1023
        explanation = (f"{reply.get('src')} denied {reply.get('program')} "
                       f"{reply.get('procedure')} from {reply.get('dst')}: MSG_DENIED "
                       f"{reply.get('reject_status')} {status or ''}".rstrip() + ".")
        if unprivileged and reply.get("reject_status") == "AUTH_ERROR":
            explanation += (f" The client's source port {client_port} is unprivileged (> 1023) "
                            "and the server accepts only privileged ports "
                            "(server.allow-insecure off).")
            remedy = ("Either let the client bind a privileged port (run it as root), or allow "
                      "insecure ports: `gluster volume set VOLUME server.allow-insecure on` and "
                      "stop/start the volume (a server reboot alone does not apply it); for "
                      "glusterd itself add `option rpc-auth-allow-insecure on` to "
                      "/etc/glusterfs/glusterd.vol and restart glusterd.")
        else:
            remedy = ("Check the RPC versions and credentials the client sends against what the "
                      "server supports (reject_status and auth_status say which).")
        return self.finding(reply["time_ns"], severity="error",
                            title=f"RPC denied by {host_of(reply.get('src'))}: {status or reply.get('reject_status')}",
                            explanation=explanation, remedy=remedy, evidence=[reply],
                            key=f"denied:{host_of(reply.get('src'))}:{status}",
                            server=reply.get("src"), client=reply.get("dst"))


@hookimpl
def correlate_detectors(state):
    return [AuthRejected(state)]
