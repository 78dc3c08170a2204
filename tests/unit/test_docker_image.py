"""The GPU image, checked without Docker or a GPU (issue 15).

The image's torch comes from the base image's tag, and pip keeps it (transformers does not declare
torch, and it sits in the package's range), so the tag must give a torch that transformers accepts:
transformers 5 disables torch below its minimum and every model load fails. The bitsandbytes pin must
declare that torch and ship a library for the tag's CUDA; its wheel's metadata is read from the copy
`make docker-checks` (part of `make test`) downloads into the venv, so the tests need no network.
hadolint must find nothing. Under `make test` (STEERHEAL_REQUIRE_DOCKER_CHECKS=1) a missing tool or
wheel is a failure; elsewhere those tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
WHEELS = Path(sys.prefix) / "docker-wheels"  # where `make docker-checks` downloads the bitsandbytes wheel
REQUIRED = os.environ.get("STEERHEAL_REQUIRE_DOCKER_CHECKS") == "1"
BASE_TAG = re.compile(r"pytorch/pytorch:(?P<torch>\d+\.\d+\.\d+)-cuda(?P<cuda>\d+\.\d+)-cudnn\d+-(runtime|devel)")


def missing(what: str) -> None:
    if REQUIRED:  # make test / CI: the check must run
        pytest.fail(f"{what}: `make docker-checks` installs it")
    pytest.skip(f"{what}: run `make docker-checks` (make test does)")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def only(kind: str) -> str:
    found = [args for word, args in instructions() if word == kind]
    assert len(found) == 1, f"the Dockerfile should have one {kind}, found {found}"
    return found[0]


def base_image() -> tuple[Version, str]:
    """The torch version and CUDA version (e.g. "12.6") that the FROM tag names."""
    base = only("FROM").split()[0]
    m = BASE_TAG.fullmatch(base.split("@")[0])
    assert m, f"FROM {base}: expected an official pytorch/pytorch:<torch>-cuda<X.Y>-cudnn<N>-runtime tag"
    return Version(m["torch"]), m["cuda"]


def transformers_torch_spec() -> SpecifierSet:
    from transformers.dependency_versions_table import deps

    return Requirement(deps["torch"]).specifier


def package_requirement(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == name]
    assert len(found) == 1, f"pyproject.toml should name {name} once"
    return found[0]


def bitsandbytes_pin() -> Version:
    pins = re.findall(r"bitsandbytes==([0-9][0-9A-Za-z.]*)", DOCKERFILE.read_text())
    assert len(set(pins)) == 1, f"the Dockerfile should pin one bitsandbytes version, found {pins}"
    return Version(pins[0])


def test_base_image_torch_is_one_transformers_accepts_and_in_the_package_range():
    torch_version, _ = base_image()
    needed = transformers_torch_spec()
    assert needed.contains(torch_version, prereleases=True), (
        f"the base image's torch {torch_version} is outside the installed transformers' torch{needed}: "
        "transformers would disable torch and every model load would fail")
    package = package_requirement("torch").specifier
    assert package.contains(torch_version, prereleases=True), (
        f"the base image's torch {torch_version} is outside pyproject.toml's torch{package}: pip would replace it")


def test_package_torch_range_starts_where_transformers_does():
    package = package_requirement("torch").specifier
    lows = [Version(s.version) for s in package if s.operator in (">=", "==", "~=")]
    assert lows, f"pyproject.toml's torch{package} has no lower bound"
    needed = transformers_torch_spec()
    assert needed.contains(max(lows), prereleases=True), (
        f"pyproject.toml allows torch {max(lows)} but the installed transformers needs torch{needed}")


def test_bitsandbytes_pin_is_new_enough_for_transformers_4bit():
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    assert bitsandbytes_pin() >= Version(BITSANDBYTES_MIN_VERSION), (
        f"transformers' 4-bit loading needs bitsandbytes >= {BITSANDBYTES_MIN_VERSION}")


def bitsandbytes_wheel() -> zipfile.ZipFile:
    pin = bitsandbytes_pin()
    wheels = sorted(p for p in WHEELS.glob("bitsandbytes-*.whl") if Version(p.name.split("-")[1]) == pin)
    if not wheels:
        missing(f"no bitsandbytes {pin} wheel in {WHEELS}")
    return zipfile.ZipFile(wheels[0])


def test_bitsandbytes_pin_declares_the_image_torch():
    torch_version, _ = base_image()
    with bitsandbytes_wheel() as wheel:
        meta_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(wheel.read(meta_name).decode())
    env = {**default_environment(), "extra": ""}
    torch_reqs = [r for r in map(Requirement, meta.get_all("Requires-Dist") or [])
                  if r.name == "torch" and (r.marker is None or r.marker.evaluate(env))]
    assert torch_reqs, "the bitsandbytes wheel declares no torch requirement"
    for req in torch_reqs:
        assert req.specifier.contains(torch_version, prereleases=True), (
            f"bitsandbytes {meta['Version']} declares torch{req.specifier}; the image has torch {torch_version}")


def test_bitsandbytes_pin_ships_a_library_for_the_image_cuda():
    # bitsandbytes loads libbitsandbytes_cuda<XY>.so for torch.version.cuda (the tag's CUDA).
    _, cuda = base_image()
    with bitsandbytes_wheel() as wheel:
        libs = sorted(n for n in wheel.namelist() if re.search(r"libbitsandbytes_cuda\d+\.so$", n))
    assert f"bitsandbytes/libbitsandbytes_cuda{cuda.replace('.', '')}.so" in libs, (
        f"the bitsandbytes wheel has no library for CUDA {cuda}: {libs}")


def test_every_pip_install_in_the_image_is_pinned():
    # hadolint's DL3013 only sees `pip` and `python -m pip`, not `python3 -m pip`: check it here.
    for word, args in instructions():
        if word != "RUN":
            continue
        for part in re.split(r"&&|;", args):
            m = re.search(r"\bpip3? install (.*)|\bpython3? -m pip install (.*)", part)
            if not m:
                continue
            for arg in (m[1] or m[2]).split():
                arg = arg.strip("'\"")
                if arg.startswith("-") or arg in (".", "./"):
                    continue
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[0-9][0-9A-Za-z.+]*", arg), (
                    f"unpinned pip install argument {arg!r} in: {part.strip()}")


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.prefix) / "bin"),
                                                               os.environ.get("PATH", "")]))
    if hadolint is None:
        missing("hadolint is not installed")
    out = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_the_entrypoint_takes_app_flags_and_the_cmd_holds_only_defaults():
    entry = json.loads(only("ENTRYPOINT"))  # exec form, so `docker run IMAGE --flag ...` reaches it as "$@"
    assert entry[-1].endswith("/docker/entrypoint.sh")
    assert any(args.split()[0] == "docker/entrypoint.sh" for word, args in instructions() if word == "COPY")
    cmd = json.loads(only("CMD"))
    assert cmd[0].startswith("--") and "--model" in cmd, f"CMD should be default app flags, got {cmd}"


@pytest.fixture
def run_entrypoint(tmp_path):
    """Run docker/entrypoint.sh with a stand-in python3 that prints the arguments it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "python3"
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    stub.chmod(0o755)

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        base = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HOME": str(tmp_path / "hf")}
        return subprocess.run(["/bin/sh", str(ENTRYPOINT), *args], capture_output=True, text=True, timeout=30,
                              env={**base, **env})

    return run


def app_flags() -> set[str]:
    return set(re.findall(r"add_argument\(\"(--[\w-]+)\"", (ROOT / "app.py").read_text()))


def test_entrypoint_starts_the_app_on_the_volume_with_the_cmd_defaults(run_entrypoint):
    out = run_entrypoint(*json.loads(only("CMD")))
    assert out.returncode == 0, out.stderr
    argv = out.stdout.splitlines()
    assert argv[0] == "/app/app.py"
    assert argv[1:7] == ["--host", "0.0.0.0", "--port", "7860", "--db", "/data/runs.db"]
    assert argv[7:] == json.loads(only("CMD"))
    assert {a for a in argv[1:] if a.startswith("--")} <= app_flags()
    assert "HF_TOKEN" not in out.stderr  # the bundled model needs no token


def test_entrypoint_passes_flags_after_the_image_name_to_the_app(run_entrypoint):
    out = run_entrypoint("--model", "google/gemma-3-4b-it", "--4bit", HF_TOKEN="hf_test")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[7:] == ["--model", "google/gemma-3-4b-it", "--4bit"]
    assert "--4bit" in app_flags()
    assert "HF_TOKEN" not in out.stderr


def test_entrypoint_warns_when_a_hub_model_is_asked_for_without_a_token(run_entrypoint):
    out = run_entrypoint("--model=google/gemma-3-4b-it")
    assert out.returncode == 0 and "--model=google/gemma-3-4b-it" in out.stdout
    assert "HF_TOKEN is not set" in out.stderr and "-e HF_TOKEN" in out.stderr


def test_entrypoint_runs_a_command_instead_of_the_app(run_entrypoint):
    out = run_entrypoint("echo", "a command")
    assert out.returncode == 0 and out.stdout == "a command\n"


def test_hf_token_is_read_at_run_time_and_the_hub_cache_is_on_the_volume():
    for word, args in instructions():
        if word in ("ARG", "ENV"):
            assert "HF_TOKEN" not in args, "a token in ARG/ENV would be baked into the image"
    env = " ".join(args for word, args in instructions() if word == "ENV")
    assert re.search(r"\bHF_HOME=/data/", env), "the Hugging Face cache (downloaded models) belongs on /data"
    assert "/data" in only("VOLUME")


def readme_docker_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Docker (GPU box)")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_shows_the_gemma3_line_with_token_volume_and_auth():
    section = readme_docker_section().replace("\\\n", " ")
    runs = [line for line in section.splitlines() if line.lstrip().startswith("docker run")]
    gemma = [line for line in runs if re.search(r"\ssteerheal\s+--model\s+google/gemma-3-4b-it", line)]
    assert gemma, f"no `docker run ... steerheal --model google/gemma-3-4b-it` line in {runs}"
    for part in ("--gpus all", "-e HF_TOKEN", "-v ./data:/data", "-e STEERHEAL_AUTH="):
        assert part in gemma[0], f"{part!r} missing from {gemma[0]!r}"
    assert "bench/gpu_check.sh" in section


def test_every_copied_path_is_in_the_build_context():
    ignored = [line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for word, args in instructions():
        if word != "COPY" or "--from" in args:
            continue
        for src in [a for a in args.split() if not a.startswith("--")][:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the checkout"
            assert not any(Path(src).match(pattern) or src.startswith(pattern + "/") for pattern in ignored), (
                f"COPY {src}: excluded by .dockerignore")
