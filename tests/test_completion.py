"""Shell completion of `-o DETECTOR.OPTION=` and `--fields`, through click's own machinery:
the environment a shell's completion script sets, in a real `correlate` process."""
import os
import subprocess
import sys
from pathlib import Path

from click.shell_completion import ShellComplete

from correlate.cli import main
from correlate.outputs.fields import EVENT_KEYS

# the installed command: the variable's name comes from the program's name
CORRELATE = str(Path(sys.executable).parent / "correlate")


def complete(*words, shell="bash"):
    """What `correlate WORDS...<TAB>` offers (the last word is the one being completed)."""
    env = {**os.environ, "_CORRELATE_COMPLETE": f"{shell}_complete",
           "COMP_WORDS": " ".join(("correlate", *words)), "COMP_CWORD": str(len(words))}
    res = subprocess.run([CORRELATE], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    lines = [line for line in res.stdout.splitlines() if line]    # none: one empty line
    assert all(line.startswith("plain,") for line in lines), res.stdout
    return [line.split(",", 1)[1] for line in lines]


def test_detector_options_complete_from_the_loaded_detectors():
    assert complete("analyze", "-o", "rpc-un") == ["rpc-unanswered.after_s=", "rpc-unanswered.enabled="]
    offered = complete("run", "--option", "")
    assert "app-latency.after_s=" in offered and "lock-wait.enabled=" in offered
    assert all(o.endswith("=") and "." in o for o in offered)
    assert complete("timeline", "x.pcap", "-o", "lock-wait.enabled=") == \
        ["lock-wait.enabled=true", "lock-wait.enabled=false"]
    assert complete("analyze", "-o", "nosuch") == []


def test_a_plugin_turned_off_offers_no_options():
    assert complete("analyze", "--no-plugin", "lock_wait", "-o", "lock") == []
    assert complete("analyze", "--no-plugin", "slow_brick", "-o", "lock") == ["lock-wait.enabled="]


def test_fields_complete_each_name_after_the_last_comma():
    assert complete("decode", "--fields", "xid,proc") == ["xid,procedure", "xid,procedure_num"]
    assert complete("decode", "--fields", "args.pa") == ["args.path", "args.pargfid"]
    offered = complete("decode", "--fields", "")
    assert set(EVENT_KEYS) - {"args", "result", "cred", "mismatch"} <= set(offered)
    assert "args." in offered


def test_zsh_gets_the_option_help_too():
    out = subprocess.run([CORRELATE], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "_CORRELATE_COMPLETE": "zsh_complete",
                                          "COMP_WORDS": "correlate analyze -o rpc-unanswered.af",
                                          "COMP_CWORD": "3"}).stdout.splitlines()
    assert out[:2] == ["plain", "rpc-unanswered.after_s="] and "default" in out[2]


def test_in_process_completion_matches():
    comp = ShellComplete(main, {}, "correlate", "_CORRELATE_COMPLETE")
    values = [c.value for c in comp.get_completions(["decode", "--fields"], "time_n")]
    assert values == ["time_ns"]
