"""The Helm chart renders valid, production-shaped manifests (no cluster needed).

helm lint + template (default and production values), every core resource against the
Kubernetes schemas (kubernetes-validate, strict), KEDA resources against KEDA's CRD schemas,
Strimzi KafkaTopics against the topic registry and the fields Strimzi's KafkaTopicSpec has
(Strimzi publishes no CRD file in a registry reachable here), and the NetworkPolicy rules.
"""

from __future__ import annotations

import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from email_channels.topics import SPECS, manifest_json

from .conftest import CHART, KUBE_VERSION, render

CORE_KINDS = {
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "Ingress",
    "HorizontalPodAutoscaler",
}
MAIL_PORTS = {993, 995, 143, 110, 465, 587, 25, 443}
INTERNAL = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests if doc["kind"] == kind]


def named(manifests: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    [doc] = [d for d in of_kind(manifests, kind) if d["metadata"]["name"].endswith(suffix)]
    return doc


@pytest.mark.parametrize("values", [None, "values-production.yaml"])
def test_helm_lint_passes(helm, values):
    """helm lint finds no error with the default values nor the production example."""
    args = [str(helm), "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
    if values:
        args += ["-f", str(CHART / values)]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_core_resource_is_valid_kubernetes(default_manifests, production_manifests, helm):
    """Each rendered core resource validates against the Kubernetes schemas (strict)."""
    hpa = render(
        helm,
        "--set",
        "autoscaling.mode=hpa",
        "--set",
        "secrets.existingSecret=",
        "--set",
        "secrets.secretKeys=k1:x",
        "--set",
        "secrets.kafkaSaslPassword=p",
    )
    seen = set()
    for doc in [*default_manifests, *production_manifests, *hpa]:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            seen.add(doc["kind"])
    assert seen == CORE_KINDS


def test_keda_resources_match_kedas_crd_schemas(production_manifests, default_manifests, keda_crds):
    """ScaledObjects and the TriggerAuthentication validate against KEDA's released CRDs."""
    checked = 0
    for doc in [*default_manifests, *production_manifests]:
        if doc["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(doc, keda_crds[doc["kind"]])
            checked += 1
    assert checked == 6


def test_monitoring_resources_match_the_prometheus_operators_crds(
    production_manifests, monitoring_crds
):
    """ServiceMonitors and the PrometheusRule validate against the operator's released CRDs;
    the rule alerts on channel failures, unowned mailboxes, dead letters and consumer lag."""
    monitors = of_kind(production_manifests, "ServiceMonitor")
    [rule] = of_kind(production_manifests, "PrometheusRule")
    assert len(monitors) == 4
    for doc in [*monitors, rule]:
        # The CRD's patterns are Go regexps (e.g. a mid-pattern "(?i)"): no metaschema check.
        jsonschema.Draft7Validator(monitoring_crds[doc["kind"]]).validate(doc)
    alerts = {r["alert"]: r["expr"] for r in rule["spec"]["groups"][0]["rules"]}
    assert 'consumergroup="email-router"' in alerts["EmailChannelsRouterLag"]
    assert 'consumergroup="email-sender"' in alerts["EmailChannelsSenderLag"]
    assert alerts["EmailChannelsMailboxesUnowned"].endswith("< 12")
    assert 'outcome="dead_lettered"' in alerts["EmailChannelsDeadLetters"]
    assert 'kind="ChannelMisconfigured"' in alerts["EmailChannelFailing"]


def test_keda_scales_router_and_sender_on_their_groups_lag(production_manifests):
    """Router scales on email.raw / email-router, sender on email.outbound / email-sender."""
    router = named(production_manifests, "ScaledObject", "-router")
    sender = named(production_manifests, "ScaledObject", "-sender")
    for scaled, topic, group in [
        (router, "email.raw", "email-router"),
        (sender, "email.outbound", "email-sender"),
    ]:
        [trigger] = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert (trigger["metadata"]["topic"], trigger["metadata"]["consumerGroup"]) == (
            topic,
            group,
        )
        assert trigger["metadata"]["sasl"] == "scram_sha512"
        assert trigger["authenticationRef"]["name"].endswith("-kafka")
        assert scaled["spec"]["maxReplicaCount"] <= 12
    deployments = {d["metadata"]["name"]: d for d in of_kind(production_manifests, "Deployment")}
    assert "replicas" not in deployments[router["spec"]["scaleTargetRef"]["name"]]["spec"]


def test_hpa_switch_replaces_keda(helm):
    """autoscaling.mode=hpa renders CPU HPAs for router and sender and no KEDA resource."""
    manifests = render(helm, "--set", "autoscaling.mode=hpa")
    assert not [d for d in manifests if d["apiVersion"].startswith("keda.sh/")]
    targets = sorted(
        h["spec"]["scaleTargetRef"]["name"] for h in of_kind(manifests, "HorizontalPodAutoscaler")
    )
    assert targets == ["ec-email-channels-router", "ec-email-channels-sender"]


def test_fetcher_replicas_above_partitions_are_refused(helm):
    """More fetchers than email.channels partitions fails rendering with a message saying why."""
    result = subprocess.run(
        [
            str(helm),
            "template",
            "ec",
            str(CHART),
            "--kube-version",
            KUBE_VERSION,
            "--set",
            "fetcher.replicas=7",
            "--set",
            "kafka.partitions=6",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0
    assert "fetcher.replicas (7) must not exceed kafka.partitions (6)" in result.stderr


def test_committed_topic_file_matches_the_registry():
    """files/topics.json is what email_channels.topics generates (make schemas): no drift."""
    committed = (CHART / "files" / "topics.json").read_text()
    assert committed == manifest_json(), "run `make schemas` and commit files/topics.json"


def test_kafkatopics_are_the_registry_with_production_settings(production_manifests):
    """One KafkaTopic per registry topic: its cleanup policy, replicas 3, min ISR 2, label."""
    topics = {t["spec"]["topicName"]: t for t in of_kind(production_manifests, "KafkaTopic")}
    assert set(topics) == {spec.topic.value for spec in SPECS}
    allowed_spec_fields = {"topicName", "partitions", "replicas", "config"}  # KafkaTopicSpec
    for spec in SPECS:
        topic = topics[spec.topic.value]
        assert topic["apiVersion"] == "kafka.strimzi.io/v1"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "prod"
        assert topic["metadata"]["namespace"] == "kafka"
        assert set(topic["spec"]) <= allowed_spec_fields
        assert (topic["spec"]["replicas"], topic["spec"]["partitions"]) == (3, 12)
        config = topic["spec"]["config"]
        assert config["min.insync.replicas"] == "2"
        assert config["cleanup.policy"] == spec.cleanup
        assert {k: config[k] for k in spec.configs} == spec.configs
        assert all(isinstance(value, str) for value in config.values())


def _egress_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}


def test_network_policies_limit_egress_and_ingress(default_manifests):
    """Fetcher/sender egress: DNS, Kafka, mail ports outside internal ranges; router: Kafka and
    the blob store; config-api ingress only from the ingress controller (and Prometheus)."""
    policies = {
        p["metadata"]["name"].removeprefix("ec-email-channels-"): p
        for p in of_kind(default_manifests, "NetworkPolicy")
    }
    assert set(policies) == {"fetcher", "router", "sender", "config-api"}
    for name in ("fetcher", "sender"):
        policy = policies[name]
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert _egress_ports(policy) == {53, 9092, 9093} | MAIL_PORTS
        mail_rules = [r for r in policy["spec"]["egress"] if r["to"][0].get("ipBlock")]
        for rule in mail_rules:
            assert set(rule["to"][0]["ipBlock"]["except"]) >= INTERNAL
    router = policies["router"]
    assert _egress_ports(router) == {53, 9092, 9093, 443}
    [blob_rule] = [r for r in router["spec"]["egress"] if r["to"][0].get("ipBlock")]
    assert set(blob_rule["to"][0]["ipBlock"]["except"]) >= INTERNAL
    [ingress] = policies["config-api"]["spec"]["ingress"]
    controller = ingress["from"][0]
    assert controller["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "ingress-nginx"}
    assert [p["port"] for p in ingress["ports"]] == [8080]


def test_deployments_are_hardened_and_probe_every_service(default_manifests):
    """Non-root, read-only root filesystem, no token, limits, and all three probes everywhere."""
    deployments = of_kind(default_manifests, "Deployment")
    assert sorted(d["metadata"]["name"] for d in deployments) == [
        "ec-email-channels-config-api",
        "ec-email-channels-fetcher",
        "ec-email-channels-router",
        "ec-email-channels-sender",
    ]
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        [container] = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["resources"]["limits"]["memory"]
        ports = {p["name"] for p in container["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in ports
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        env = {e["name"]: e for e in container["env"]}
        assert (
            env["EMAIL_CHANNELS_SECRET_KEYS"]["valueFrom"]["secretKeyRef"]["key"] == "secret-keys"
        )
