"""The set-up contract: pinned requirements, a Dockerfile that parses and mirrors `make app`, CI = `make test`."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER_INSTRUCTIONS = {"FROM", "ARG", "ENV", "WORKDIR", "RUN", "COPY", "ADD", "VOLUME", "EXPOSE", "HEALTHCHECK",
                       "CMD", "ENTRYPOINT", "LABEL", "USER", "SHELL", "STOPSIGNAL", "ONBUILD"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """Join continuation lines and split into (INSTRUCTION, arguments), refusing unknown instructions."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    assert not current, "Dockerfile ends inside a line continuation"
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        assert word.upper() in DOCKER_INSTRUCTIONS, f"unknown Dockerfile instruction {word!r}"
        out.append((word.upper(), rest))
    return out


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-nodeps.txt"])
def test_requirements_are_pinned_exactly(name):
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.+\-]*", line), f"not pinned: {line}"


def test_the_cluster_extra_is_pinned_and_tested_in_ci():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements-cluster.txt").read_text().splitlines()]
    for line in filter(None, lines):
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[0-9][0-9A-Za-z.+\-]*", line), f"not pinned: {line}"
    assert "-r requirements-cluster.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "ray" not in (ROOT / "requirements.txt").read_text()  # `make app` does not need it


def test_no_deps_packages_are_installed_by_make_app_and_the_dockerfile():
    make = (ROOT / "Makefile").read_text()
    assert "--no-deps -r requirements-nodeps.txt" in make
    assert re.search(r"^\$\(VENV\)/\.req-app: .*requirements-nodeps\.txt$", make, re.M)  # an edit reinstalls
    runs = " ".join(args for kind, args in dockerfile_instructions((ROOT / "Dockerfile").read_text()) if kind == "RUN")
    assert "--no-deps -r requirements-nodeps.txt" in runs


def test_dockerfile_parses_and_serves_a_team_with_sign_in():
    steps = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    assert steps[0][0] == "FROM" or (steps[0][0] == "ARG" and any(s[0] == "FROM" for s in steps))
    runs = " ".join(args for kind, args in steps if kind == "RUN")
    assert "python -m venv .venv" in runs and "-r requirements.txt" in runs
    assert "TORCH_VARIANT" in runs, "the build argument must select the torch (CPU/CUDA) wheels"
    cmd = [args for kind, args in steps if kind == "CMD"][-1]
    assert '"make", "serve", "HOST=0.0.0.0"' in cmd  # team mode: `serve` refuses 0.0.0.0 without sign-in
    assert "--insecure-no-auth" not in (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "-m lora_core serve --host $(HOST)" in makefile


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci
    assert "make test" in readme and "make app" in readme
