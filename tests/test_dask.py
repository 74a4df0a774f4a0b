"""`--scheduler ADDRESS`: the decode tasks run on a real Dask distributed cluster (a
LocalCluster of two worker processes); the detectors run once here; the output is what one
local process gives."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CAPTURES = sorted((Path(__file__).parent / "captures").glob("*.pcap"))


@pytest.fixture(scope="module")
def cluster():
    try:
        from distributed import LocalCluster
    except ImportError as exc:
        print(f"skipping: Dask distributed does not import ({exc})")
        pytest.skip(f"Dask distributed is not installed ({exc}): pip install -e '.[test]'")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as c:
        yield c


def correlate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "correlate", *args], capture_output=True,
                          timeout=300)


def test_analyze_on_a_dask_cluster_gives_the_local_output(cluster, tmp_path):
    from distributed import Client
    paths = []
    for p in CAPTURES:            # on a path the workers share (and that the test may write)
        shutil.copy(p, tmp_path / p.name)
        paths.append(str(tmp_path / p.name))
    local = correlate("analyze", "--jobs", "1", "--json", "--events", *paths)
    remote = correlate("analyze", "--scheduler", cluster.scheduler_address, "--json", "--events",
                       *paths)
    assert local.returncode == 0 and b"brick-unreachable" in local.stdout
    assert (remote.returncode, remote.stdout, remote.stderr) == (0, local.stdout, local.stderr)
    with Client(cluster.scheduler_address) as client:      # the workers did the decoding
        done = client.run(lambda dask_worker: len(dask_worker.data) + dask_worker.state.transition_counter)
    assert len(done) == 2 and all(n > 0 for n in done.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in CAPTURES)


def test_decode_on_a_dask_cluster_shards_one_capture(cluster, tmp_path):
    path = tmp_path / "healthy.pcap"
    shutil.copy(CAPTURES[[p.name for p in CAPTURES].index("healthy.pcap")], path)
    local = correlate("decode", "--json", str(path))
    remote = correlate("decode", "--scheduler", cluster.scheduler_address, "--jobs", "2", "--json",
                       str(path))
    assert (remote.returncode, remote.stdout) == (0, local.stdout) and local.stdout


def test_an_unreachable_scheduler_is_a_clear_error():
    res = correlate("decode", "--scheduler", "tcp://127.0.0.1:9", str(CAPTURES[0]))
    assert res.returncode == 2 and b"--scheduler" in res.stderr
