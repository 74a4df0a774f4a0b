"""The folders show the data flow, and imports follow it one way: decoders (gluster, wire,
probe) -> sources -> state -> outputs -> engine -> cli. A module may import its own stage and
the stages before it, never one after (a decoder that imported the engine, or the engine the
command line, would tie the early stages to the late ones). Every module says its job."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "correlate"

# rank of each stage; a module imports only ranks <= its own
STAGES = {"gluster": 1, "wire": 2, "probe": 3, "sources": 4, "state": 5, "outputs": 6,
          "engine": 7, "cli": 8}
# the top-level modules: the shared basics, and the plugin API at the stage it builds on
TOP = {"__init__": 0, "xdr": 0, "errors": 0, "exit_codes": 0, "text": 0, "diagnostics": 0,
       "events": 0, "validate": 0, "hotpath": 0, "sketch": 0, "hookspecs": 0,
       "plugin_manager": 0, "profile": 5, "detector": 5, "testing": 8, "__main__": 9}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return TOP["__init__"]
    if parts[1] in STAGES:
        return STAGES[parts[1]]
    assert parts[1] in TOP, f"{module}: a new top-level module: give it a stage (a folder)"
    return TOP[parts[1]]


def imports(path: Path):
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "correlate":     # `from correlate import x`: x may be a module
                yield from (f"correlate.{a.name}" for a in node.names
                            if (PACKAGE / f"{a.name}.py").exists() or (PACKAGE / a.name).is_dir())
            elif target.startswith("correlate."):
                yield target
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("correlate."))


def test_imports_follow_the_flow():
    against = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for target in imports(path):
            if rank(target) > rank(module):
                against.append(f"{module} imports {target}")
    assert against == []


def test_the_top_level_holds_the_basics_and_the_plugin_api_only():
    loose = {p.stem for p in PACKAGE.glob("*.py")}
    assert loose == set(TOP), f"new: {loose - set(TOP)}, gone: {set(TOP) - loose}"
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(STAGES)


def test_every_module_says_its_job():
    silent = [module_name(p) for p in PACKAGE.rglob("*.py")
              if p.name != "__main__.py" and not ast.get_docstring(ast.parse(p.read_text()))]
    assert silent == []
