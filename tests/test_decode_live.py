"""A live pipe from tcpdump: `correlate decode -` prints events while the lab workload still runs."""
import signal
import subprocess
import sys
import threading
import time

from tests.lab import lab as lab_module


def test_events_arrive_while_the_workload_runs(lab):
    tcpdump = subprocess.Popen(["tcpdump", "-i", "any", "-s", "0", "-U", "--immediate-mode",
                                "-B", "262144", "-w", "-", lab_module.DEFAULT_FILTER],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    decode = subprocess.Popen([sys.executable, "-m", "correlate", "decode", "-"],
                              stdin=tcpdump.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tcpdump.stdout.close()
    arrivals: list[tuple[float, str]] = []

    def read():
        for line in iter(decode.stdout.readline, b""):
            arrivals.append((time.monotonic(), line.decode(errors="replace")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for line in iter(tcpdump.stderr.readline, b""):
        if b"listening on" in line:
            break
    workload = subprocess.Popen([sys.executable, "-m", "tests.lab.lab", "scenario", "workload",
                                 "--param", "files=1500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = workload.communicate(timeout=300)
    finished = time.monotonic()
    assert workload.returncode == 0, err.decode()[-2000:]
    time.sleep(1.0)
    tcpdump.send_signal(signal.SIGINT)
    tcpdump.wait(30)
    assert decode.wait(60) == 0, decode.stderr.read().decode()
    reader.join(10)
    during = [line for t, line in arrivals if t < finished and " rpc." in line]
    total = [line for _t, line in arrivals if " rpc." in line]
    print(f"\n{len(during)} of {len(total)} RPC events printed before the workload ended")
    assert len(total) > 1000
    assert len(during) > len(total) // 2   # streamed, not printed at the end of input
