"""capture-loss: how much of the traffic the capture missed, so that absence is read for
what it is worth (Zeek's capture-loss notice is the model).

A TCP gap is bytes the receiver acknowledged that the capture never showed: tcpdump (or the
kernel under it) dropped packets, or the snap length cut them. Any call or reply can lie in
a gap, so a detector that rests on something not being seen (a reply that never came) asks
the shared state whether loss explains it; this finding says how much was lost, where, and
what the other detectors did about it. It is an INFO: the cluster is not at fault.
"""
from __future__ import annotations

from correlate import hookimpl
from correlate.detector import Detector, Wants
from correlate.state import GlusterState

MAX_SHOWN = 5


class CaptureLoss(Detector):
    id = "capture-loss"
    wants = Wants(kinds={"tcp.gap"}, details=())

    def __init__(self, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.examples: list[dict] = []     # the first gaps, as evidence

    def observe(self, ev):
        if len(self.examples) < MAX_SHOWN:
            self.examples.append(ev)
        if self.state.loss.gaps == 1:      # say it as soon as it starts; finish() refines
            return [self._finding(ev["time_ns"], refines=False)]
        return ()

    def finish(self):
        if not self.state.loss:
            return ()
        return [self._finding(self.state.loss.last_ns or 0, refines=True)]

    def _finding(self, time_ns: int, refines: bool) -> dict:
        loss = self.state.loss
        span = ""
        if loss.first_ns is not None and loss.last_ns is not None and loss.last_ns > loss.first_ns:
            span = f" over {(loss.last_ns - loss.first_ns) / 1e9:.1f} s"
        return self.finding(
            time_ns, severity="info",
            title="the capture missed packets: absence means less",
            explanation=(f"On {_n(loss.connections, 'connection')} receivers acknowledged "
                         f"{_n(loss.missing_bytes, 'byte')} that the capture never showed "
                         f"({_n(loss.gaps, 'TCP gap')}{span}): tcpdump or the kernel "
                         "dropped packets, or the snap length cut them. Calls and replies in "
                         "those bytes are missing from every output. A call whose reply could "
                         "lie in a gap is not reported as unanswered, and findings that rest on "
                         "something not being seen say when loss could explain them."),
            remedy=("Capture with a larger kernel buffer (`tcpdump -B 262144` or more), no "
                    "snap length cut (`-s 0`), a narrower filter (only the Gluster ports and "
                    "ICMP), and write to a fast local disk; tcpdump's exit line says how many "
                    "packets the kernel dropped."),
            evidence=self.examples, key="capture-loss", refines=refines,
            missing_bytes=loss.missing_bytes, gaps=loss.gaps, connections=loss.connections)


def _n(count: int, what: str) -> str:
    return f"{count:,} {what}{'' if count == 1 else 's'}"


@hookimpl
def correlate_detectors(state):
    return [CaptureLoss(state)]
