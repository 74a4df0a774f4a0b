"""Built-in output formats offered through the correlate_outputs hook: `--output html=FILE`,
`--output perfetto=FILE` on `correlate run` and `correlate analyze`."""
from correlate import hookimpl
from correlate.outputs.html import write_html
from correlate.outputs.perfetto import write_perfetto


@hookimpl
def correlate_outputs():
    return {"html": write_html, "perfetto": write_perfetto}
