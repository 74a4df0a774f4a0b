# The two commands a newcomer needs: `make run` and `make test`.
# Both install what they need (Debian packages and a venv) on a fresh Debian machine as root.

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
APT_PKGS := glusterfs-server glusterfs-client libgfapi0 tcpdump tshark python3-bpfcc \
            linux-headers-amd64 samba samba-vfs-modules smbclient qemu-utils qemu-block-extra \
            iptables systemtap gcc python3-dev iproute2 procps python3-venv wireshark-common chromium
PYTEST_ARGS ?=

.PHONY: deps venv test fuzz run bench lab-up lab-down clean
FUZZ_SECONDS ?= 300

# Debian packages for the lab, the probes and the cross-checks. Skipped when all are present
# or when not root (the tests then skip what the machine lacks, saying why).
deps:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing: $$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else echo "not root: cannot install $$missing (lab tests will skip)"; fi; \
	fi
	@if [ "$$(id -u)" = 0 ]; then bash tests/lab/host-setup.sh; fi

# The venv sees the system site packages so that Debian's bcc (python3-bpfcc) imports.
# The editable install compiles the hot path (gcc, python3-dev); it is rebuilt when setup.py,
# a .pxd or a compiled module's .py changes (each compiled module has its .pxd beside it).
# Between builds an edited module runs from its .py (correlate/hotpath.py), and
# `correlate --version` says which modules do.
PXDS := $(wildcard correlate/*.pxd correlate/*/*.pxd)
$(STAMP): pyproject.toml setup.py $(PXDS) $(PXDS:.pxd=.py)
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# the distribution was called "correlate" before it became gluster-correlate
	$(PY) -m pip uninstall -q -y correlate 2>/dev/null || true
	rm -rf correlate.egg-info
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The suite runs on the compiled hot path (when built); the decoder tests then run again on
# the plain Python modules (tests/test_hotpath.py compares the two on every capture).
PLAIN_TESTS := tests/test_xdr.py tests/test_packet.py tests/test_capture.py tests/test_tcp.py \
               tests/test_rpc.py tests/test_gluster_fops.py tests/test_gluster_dicts.py \
               tests/test_gluster_handshake.py tests/test_gluster_captures.py

test: deps venv
	$(PY) -m pytest -ra $(PYTEST_ARGS)
	CORRELATE_NO_EXTENSIONS=1 $(PY) -m pytest -q $(PLAIN_TESTS)

# Mutates the real captures, logs and saved timelines (tests/fuzz) through every command and
# renderer for FUZZ_SECONDS; a failing input is shrunk and saved in tests/fuzz/regressions/,
# which `make test` replays. `make test` runs a short pass of the same harness.
fuzz: venv
	$(PY) -m tests.fuzz.campaign --seconds $(FUZZ_SECONDS)

run: deps venv
	$(PY) -m tests.lab.demo

bench: deps venv
	$(PY) bench/run.py

lab-up: deps venv
	$(PY) -m tests.lab.lab up

lab-down:
	$(PY) -m tests.lab.lab down

clean:
	rm -rf $(VENV) build *.egg-info
