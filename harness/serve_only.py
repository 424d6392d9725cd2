"""Python with only the serving dependencies importable: what the serving image holds.

The image installs requirements-serve.txt and nothing else; the dev environment has more (pytest,
tqdm, matplotlib, pytorchvideo...). ``block_all_but`` puts a finder first on ``sys.meta_path`` that
refuses every module whose file belongs to an installed distribution outside the serving closure:
the packages the file names plus their dependencies as declared in the installed metadata. The
standard library and this repo's packages belong to no distribution and import as usual.

``python -m harness.serve_only --pt build/<model>.pt VIDEO`` loads the real handler in-process
(``harness.inproc``) under that finder, answers VIDEO and prints one JSON line: the answer, the
runtime the worker chose and every import that was refused on the way (tests/test_container.py).
Not blocked: ``importlib.metadata`` still lists the dev packages, and native libraries loaded with
ctypes are not imports.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import re
import sys
from importlib import metadata
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from packaging.requirements import Requirement

from harness.paths import REPO

SERVE_REQUIREMENTS = REPO / "requirements-serve.txt"


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``PyYAML`` -> ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> List[str]:
    """The distributions a requirements file pins (``-r`` includes followed), canonical names."""
    names: List[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            names += requirement_names(path.parent / line.split(None, 1)[1])
        elif not line.startswith("-"):
            names.append(canonical(Requirement(line).name))
    return names


def closure(names: Iterable[str]) -> Set[str]:
    """``names`` and everything they require, transitively, as the installed metadata declares it
    (environment markers evaluated here; requirements of extras only where an extra was asked)."""
    wanted = [(canonical(n), frozenset()) for n in names]
    seen: Set[str] = set()
    while wanted:
        name, extras = wanted.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here (e.g. a requirement for another platform)
        seen.add(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in {"", *extras}):
                wanted.append((canonical(requirement.name), frozenset(requirement.extras)))
    return seen


def file_owners() -> Tuple[Dict[Path, str], Dict[Path, Set[str]]]:
    """Every installed distribution's module files (absolute) -> its canonical name, and every
    directory holding them -> the distributions with files there (namespace packages have no file)."""
    files: Dict[Path, str] = {}
    directories: Dict[Path, Set[str]] = {}
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"] or "")
        for file in dist.files or []:
            if file.suffix in (".py", ".so", ".pyd", ".pyc"):
                path = Path(dist.locate_file(file)).resolve()
                files[path] = name
                for part in range(1, len(file.parts)):
                    directories.setdefault(path.parents[part - 1], set()).add(name)
    return files, directories


class ServeOnlyFinder(importlib.abc.MetaPathFinder):
    """Refuses modules whose file belongs to a distribution not in ``allowed``; records each refusal."""

    def __init__(self, allowed: Set[str], files: Dict[Path, str], directories: Dict[Path, Set[str]]) -> None:
        self.allowed = allowed
        self.files = files
        self.directories = directories
        self.refused: Dict[str, str] = {}  # module -> distribution

    def owner(self, spec: ModuleSpec) -> Optional[str]:
        """The distribution a module comes from when that one is not allowed, else None.

        A namespace package (no file) is refused when every distribution with files in its
        directories is; one shared with an allowed distribution imports, its modules are checked
        one by one."""
        if spec.origin in ("built-in", "frozen"):
            return None
        if spec.origin:
            return self.files.get(Path(spec.origin).resolve())
        owners = set().union(*(self.directories.get(Path(d).resolve(), set())
                               for d in spec.submodule_search_locations or []))
        return None if not owners or owners & self.allowed else sorted(owners)[0]

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None, target: object = None) -> Optional[ModuleSpec]:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            owner = self.owner(spec)
            if owner is not None and owner not in self.allowed:
                self.refused.setdefault(fullname, owner)
                raise ModuleNotFoundError(
                    f"{fullname} belongs to {owner}, which is not a serving dependency "
                    f"(requirements-serve.txt and what it requires)", name=fullname)
            return spec
        return None


def block_all_but(requirements: Path = SERVE_REQUIREMENTS) -> ServeOnlyFinder:
    """Install the finder for ``requirements``' closure; fails if a blocked module is already imported."""
    allowed = closure(requirement_names(requirements))
    finder = ServeOnlyFinder(allowed, *file_owners())
    early = {}
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        owner = finder.owner(spec) if spec is not None else None
        if owner is not None and owner not in allowed:
            early[name] = owner
    if early:
        raise RuntimeError(f"already imported before the block, outside {requirements.name}: {early}")
    sys.meta_path.insert(0, finder)
    return finder


def importable(module: str) -> bool:
    """Whether ``module`` imports now (a refused one raises ModuleNotFoundError)."""
    try:
        __import__(module)
    except ModuleNotFoundError:
        return False
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.serve_only", description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--pt", type=Path, required=True, help="the exported model (build/<model>.pt)")
    parser.add_argument("--requirements", type=Path, default=SERVE_REQUIREMENTS)
    parser.add_argument("--probe", action="append", default=[],
                        help="a module that must not import under the block (repeatable)")
    args = parser.parse_args(argv)
    finder = block_all_but(args.requirements)
    # What a worker process imports besides the handler: TorchServe's worker and model loader.
    import ts.model_loader  # noqa: F401
    import ts.model_service_worker  # noqa: F401

    from harness.inproc import InProcessHandler

    handler = InProcessHandler(args.pt)
    answer = handler.handle(args.video.read_bytes())
    refused_while_serving = dict(finder.refused)
    probes = {module: importable(module) for module in args.probe}
    print(json.dumps({
        "runtime": handler.runtime.name,
        "answer": answer,
        "refused_while_serving": refused_while_serving,
        "probes_importable": probes,
        "allowed": sorted(finder.allowed),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
