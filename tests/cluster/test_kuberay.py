"""cluster/kuberay/rayservice.yaml is a valid KubeRay RayService (against the CRD's OpenAPI schema of KubeRay v1.7.0,
with unknown fields refused as `kubectl apply --validate=strict` refuses them) and the same deployment as
ray_cluster.yaml plus serving/serve_config.yaml: node types, resources, autoscaling bounds, environment, the Serve
app, and the fleet bus's Redis."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from serving.config import AppConfig

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "cluster" / "kuberay" / "rayservice.yaml"
CRD = ROOT / "tests" / "data" / "kuberay" / "ray.io_rayservices.yaml"
INSTANCES = {"m6i.xlarge": (4, 0), "g5.xlarge": (4, 1), "c6i.2xlarge": (8, 0)}
"""(vCPUs, GPUs) of ray_cluster.yaml's AWS instance types: what Ray advertises on those nodes."""
UPSCALING = {1.0: "Conservative"}
"""ray_cluster.yaml's upscaling_speed as KubeRay's upscalingMode (Conservative: pending pods at most the cluster's
size at a time)."""
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 1 MB: libyaml reads it in a fraction of a second


def _docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return _docs()


@pytest.fixture(scope="module")
def service(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return docs["RayService"]


@pytest.fixture(scope="module")
def ray_cluster() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its properties and does not
    keep unknown fields: the API server's strict field validation, so a misspelt field fails here too."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.Validator:
    crd = yaml.load(CRD.read_text(), Loader=_LOADER)
    assert crd["spec"]["names"]["kind"] == "RayService" and crd["spec"]["group"] == "ray.io"
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"] and v["served"]]
    assert version["name"] == "v1"
    schema = strict(version["schema"]["openAPIV3Schema"])
    # A structural schema is OpenAPI 3.0's subset of JSON Schema draft 4; the x-kubernetes-* keys are ignored.
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def test_the_rayservice_validates_against_kuberays_crd(service: dict[str, Any],
                                                       validator: jsonschema.Validator) -> None:
    assert service["apiVersion"] == "ray.io/v1"
    errors = sorted(validator.iter_errors(service), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("path, value, message", [
    (["rayClusterConfig", "workerGroupSpecs", 0, "maxReplicas"], "four", "'four' is not of type 'integer'"),
    (["rayClusterConfig", "autoscalerOptions", "upscalingMode"], "Fast", "'Fast' is not one of"),
    (["rayClusterConfig", "workerGroupSpecs", 1, "minReplica"], 1, "'minReplica' was unexpected"),
    (["rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0, "resources", "limits", "memory"],
     "12 GB", "does not match"),
])
def test_the_schema_refuses_a_broken_manifest(service: dict[str, Any], validator: jsonschema.Validator,
                                              path: list[Any], value: Any, message: str) -> None:
    broken = copy.deepcopy(service)
    node = broken["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert any(message in e.message for e in validator.iter_errors(broken))


def _apps(serve: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {app["name"]: app for app in serve["applications"]}


def test_the_serve_config_is_serve_config_yamls_app(service: dict[str, Any], docs: dict[str, dict[str, Any]]) -> None:
    ours = yaml.safe_load(service["spec"]["serveConfigV2"])
    theirs = yaml.safe_load((ROOT / "serving" / "serve_config.yaml").read_text())
    for key in ("proxy_location", "http_options"):
        assert ours[key] == theirs[key], key
    assert _apps(ours).keys() == _apps(theirs).keys() == {"fleetwm"}
    app, reference = _apps(ours)["fleetwm"], _apps(theirs)["fleetwm"]
    for key in ("route_prefix", "import_path", "logging_config", "deployments", "runtime_env"):
        assert app.get(key) == reference.get(key), key
    args, reference_args = dict(app["args"]), dict(reference["args"])
    AppConfig.from_dict(args)  # settings the app knows, with valid values
    url, reference_url = urlsplit(args.pop("redis_url")), urlsplit(reference_args.pop("redis_url"))
    assert args == reference_args
    # The same bus, reached at the Redis Service instead of the head's private address.
    assert (url.scheme, url.password, url.port, url.path) == (reference_url.scheme, reference_url.password,
                                                              reference_url.port, reference_url.path)
    redis = docs["Service"]
    assert url.hostname == redis["metadata"]["name"] and url.port == redis["spec"]["ports"][0]["port"]


def _instance(group: dict[str, Any]) -> str:
    return group["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = spec["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_node_types_resources_and_autoscaling_are_ray_cluster_yamls(service: dict[str, Any],
                                                                    ray_cluster: dict[str, Any]) -> None:
    cluster, types = service["spec"]["rayClusterConfig"], ray_cluster["available_node_types"]
    head, head_type = cluster["headGroupSpec"], types[ray_cluster["head_node_type"]]
    assert head_type["resources"] == {"CPU": 0} and head["rayStartParams"]["num-cpus"] == "0"
    assert _instance(head) == head_type["node_config"]["InstanceType"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    workers = {name.replace("_", "-"): t for name, t in types.items() if name != ray_cluster["head_node_type"]}
    assert groups.keys() == workers.keys()
    for name, group in groups.items():
        node = workers[name]
        assert (group["minReplicas"], group["maxReplicas"]) == (node["min_workers"], node["max_workers"]), name
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert _instance(group) == node["node_config"]["InstanceType"], name
        cpus, gpus = INSTANCES[_instance(group)]
        assert group["rayStartParams"]["num-cpus"] == str(cpus), name
        (container,) = group["template"]["spec"]["containers"]
        assert int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0)) == gpus, name
        assert float(container["resources"]["requests"]["cpu"]) < cpus  # fits what the kubelet leaves
    assert sum(g["maxReplicas"] for g in groups.values()) == ray_cluster["max_workers"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 60 * ray_cluster["idle_timeout_minutes"]
    assert cluster["autoscalerOptions"]["upscalingMode"] == UPSCALING[ray_cluster["upscaling_speed"]]


def test_every_ray_pod_has_ray_cluster_yamls_environment(service: dict[str, Any], ray_cluster: dict[str, Any]) -> None:
    starts = " ".join(ray_cluster["head_start_ray_commands"] + ray_cluster["worker_start_ray_commands"])
    flags = dict(re.findall(r"\b(RAY_[A-Z_]+)=(\S+)", starts))
    assert flags.pop("RAY_AUTH_MODE") == "token"
    assert service["spec"]["rayClusterConfig"]["authOptions"]["mode"] == "token"
    args = _apps(yaml.safe_load(service["spec"]["serveConfigV2"]))["fleetwm"]["args"]
    expected = flags | {"FLEETWM_REGISTRY_URI": args["registry_uri"], "FLEETWM_LOG_URI": args["log_uri"]}
    containers = _containers(service["spec"])
    assert len(containers) == 3
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        assert {k: env[k].get("value") for k in expected} == expected, container["name"]
        # The API token comes from a Secret, never a literal in the manifest.
        assert "value" not in env["FLEETWM_API_TOKEN"] and env["FLEETWM_API_TOKEN"]["valueFrom"]["secretKeyRef"]
        ports = {p["containerPort"] for p in container["ports"]}
        assert {8000, 8404, 9101} <= ports, container["name"]  # Serve, HAProxy's stats, Serve's metrics


def test_the_image_runs_the_rayservices_ray_version(service: dict[str, Any]) -> None:
    images = {c["image"] for c in _containers(service["spec"])}
    assert len(images) == 1
    base = re.search(r"^FROM rayproject/ray:(\S+?)-", (ROOT / "cluster" / "kuberay" / "Dockerfile").read_text(), re.M)
    assert base and base.group(1) == service["spec"]["rayClusterConfig"]["rayVersion"]


def test_the_fleet_bus_is_ray_cluster_yamls_redis(docs: dict[str, dict[str, Any]], ray_cluster: dict[str, Any]) -> None:
    head = " ".join(ray_cluster["head_start_ray_commands"])
    port = int(re.search(r"redis-server \S+ --port (\d+)", head).group(1))
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    command = " ".join(container["command"] + container["args"])
    for option in ("--appendonly yes", "--appendfsync everysec", '--save ""', "--maxmemory-policy noeviction",
                   f"--port {port}"):
        assert option in command and option in head, option
    # The password reaches redis through a config file made from the Secret, never through its arguments.
    assert "requirepass" in command and "YOUR-REDIS-PASSWORD" not in command
    secret = {v["name"]: v for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"]}["password"]["secret"]
    assert secret["secretName"] == "fleetwm-redis"
    assert container["ports"][0]["containerPort"] == port == docs["Service"]["spec"]["ports"][0]["port"]
    assert docs["Service"]["spec"]["type"] == "ClusterIP"  # never a public load balancer
    assert docs["Deployment"]["spec"]["strategy"]["type"] == "Recreate" and docs["PersistentVolumeClaim"]
