"""Write requirements/api.lock: the pins of requirements/main.lock that requirements/api.in needs,
its packages and their dependencies (with the extras asked for), as the main environment
(.venv, installed from main.lock) declares them. The main image installs it instead of main.lock,
so the serving API's image carries no test tools.

    .venv/bin/python -m infra.images.api_lock
"""
import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
API_IN, MAIN_LOCK, API_LOCK = (ROOT / "requirements" / n for n in ("api.in", "main.lock", "api.lock"))
HEADER = ("# The main image's pins (infra/images/main.Dockerfile): requirements/api.in and its dependencies, at\n"
          "# requirements/main.lock's versions. Regenerate: .venv/bin/python -m infra.images.api_lock\n")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock_text: str) -> dict[str, str]:
    return {canonical(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)$", lock_text, re.M)}


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the roots need in this environment, extras followed."""
    seen: set[tuple[str, frozenset]] = set()
    names: set[str] = set()
    todo = [(r.name, frozenset(r.extras)) for r in roots]
    while todo:
        name, extras = todo.pop()
        if (canonical(name), extras) in seen:
            continue
        seen.add((canonical(name), extras))
        names.add(canonical(name))
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return names


def render() -> str:
    roots = [Requirement(line.split("#")[0].strip()) for line in API_IN.read_text().splitlines()
             if line.split("#")[0].strip()]
    locked = pins(MAIN_LOCK.read_text())
    needed = closure(roots)
    missing = sorted(n for n in needed if n not in locked)
    if missing:
        raise SystemExit(f"requirements/api.in needs {missing}, which main.lock does not pin: add them to main.in, make lock")
    lines = [f"{name}=={locked[name]}" for name in sorted(needed)]
    return HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    API_LOCK.write_text(render())
    print(f"wrote {API_LOCK.relative_to(ROOT)}")
