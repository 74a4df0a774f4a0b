#!/usr/bin/env bash
# One-time host preparation for the lab and the probes (idempotent, root only).
set -u
# bcc compiles its programs against kernel headers; this kernel has no package of its own,
# but Debian's generic headers work for uprobe programs.
kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build" ]; then
  hb=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  hc=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -n "$hb" ] && [ -n "$hc" ]; then
    mkdir -p "$kdir"
    ln -sfn "$hb" "$kdir/build"
    ln -sfn "$hc" "$kdir/source"
  fi
fi
# glusterd refuses bricks on 127.0.0.1: the lab's brick host is 127.0.0.2 on loopback.
ip addr show dev lo | grep -q 'inet 127.0.0.2/' || ip addr add 127.0.0.2/8 dev lo 2>/dev/null || true
exit 0
