"""deploy/ecs: cfn-lint clean, the task definition is a valid RegisterTaskDefinition input, and
the production rules of issue 6 hold (scoped roles, drain timers, health check, stickiness)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator

from tests.container.cfn import PARAMETERS, TEMPLATE, Resolver, load_template, to_api

ALLOWED_WRITE = {
    "kinesisvideo:CreateStream",
    "kinesisvideo:DescribeStream",
    "kinesisvideo:GetDataEndpoint",
    "kinesisvideo:ListFragments",  # where a continued session's stored audio ends
    "kinesisvideo:PutMedia",
    "kinesisvideo:TagStream",
}
ALLOWED_READ = {
    "kinesisvideo:GetMedia",
    "kinesisvideo:GetMediaForFragmentList",
}
SESSION_STREAMS = "arn:aws:kinesisvideo:eu-west-1:123456789012:stream/session-*"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def resolver(template: dict[str, Any]) -> Resolver:
    return Resolver(template)


def _cfn_lint() -> str:
    beside = Path(sys.executable).parent / "cfn-lint"
    found = str(beside) if beside.exists() else shutil.which("cfn-lint")
    assert found, "cfn-lint is not installed (pip install cfn-lint)"
    return found


def _container(resolver: Resolver) -> dict[str, Any]:
    (container,) = resolver.properties("TaskDefinition")["ContainerDefinitions"]
    return container


def _drain_values(template: dict[str, Any]) -> list[str]:
    return list(template["Parameters"]["DrainTimeoutSeconds"]["AllowedValues"])


def test_cfn_lint_reports_nothing() -> None:
    """cfn-lint finds no error, warning or informational finding in deploy/ecs/."""
    templates = sorted(str(p) for p in TEMPLATE.parent.glob("*.yaml"))
    assert templates == [str(TEMPLATE)]
    result = subprocess.run(
        [_cfn_lint(), "--include-checks", "I", "--format", "parseable", "--", *templates],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (result.returncode, result.stdout.strip()) == (0, ""), result.stdout + result.stderr


@pytest.mark.parametrize("drain", ["15", "30", "60", "90"])
def test_task_definition_is_a_valid_register_task_definition_input(
    template: dict[str, Any], drain: str
) -> None:
    """The TaskDefinition's properties are a valid ECS RegisterTaskDefinition request (botocore)."""
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    resolver = Resolver(template, {**PARAMETERS, "DrainTimeoutSeconds": drain})
    request = to_api(resolver.properties("TaskDefinition"), shape, "TaskDefinition")
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()
    container = request["containerDefinitions"][0]
    assert container["image"].endswith("kvs-ingest:1.0.0")
    assert request["requiresCompatibilities"] == ["FARGATE"]
    assert request["networkMode"] == "awsvpc"


def test_shape_check_refuses_a_misspelt_property() -> None:
    """The shape check itself fails on a property ECS does not know (it can catch mistakes)."""
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    props = Resolver(load_template()).properties("TaskDefinition")
    props["ContainerDefinitions"][0]["StopTimeOutSeconds"] = 60
    with pytest.raises(ValueError, match="StopTimeOutSeconds"):
        to_api(props, shape)
    props["ContainerDefinitions"][0].pop("StopTimeOutSeconds")
    props["ContainerDefinitions"][0]["Ulimits"][0]["SoftLimit"] = "many"
    with pytest.raises(ValueError, match="integer"):
        to_api(props, shape)


@pytest.mark.parametrize("read_back", ["false", "true"])
def test_task_role_touches_only_session_streams(template: dict[str, Any], read_back: str) -> None:
    """The task role may only write (and optionally read) kinesisvideo streams named session-*;
    ListFragments is always allowed there (the sink learns where stored audio ends)."""
    resolver = Resolver(template, {**PARAMETERS, "AllowReadBack": read_back})
    role = resolver.properties("TaskRole")
    assert "ManagedPolicyArns" not in role
    actions: set[str] = set()
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            assert statement["Resource"] == SESSION_STREAMS
            assert "Condition" not in statement and "NotAction" not in statement
            actions.update(statement["Action"])
    expected = ALLOWED_WRITE | (ALLOWED_READ if read_back == "true" else set())
    assert actions == expected
    assert "kinesisvideo:ListFragments" in actions
    principal = role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
    assert principal == {"Service": "ecs-tasks.amazonaws.com"}


def test_execution_role_reads_only_the_auth_secret(resolver: Resolver) -> None:
    """The execution role pulls images and writes logs (managed policy) and reads one secret."""
    role = resolver.properties("ExecutionRole")
    assert role["ManagedPolicyArns"] == [
        "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
    ]
    (policy,) = role["Policies"]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == "secretsmanager:GetSecretValue"
    assert statement["Resource"] == resolver.values["AuthSecretArn"]
    container = _container(resolver)
    assert container["Secrets"] == [
        {"Name": "KVS_INGEST_AUTH_SECRET", "ValueFrom": resolver.values["AuthSecretArn"]}
    ]


def test_stop_timeout_exceeds_drain_and_deregistration_fits_in_it(
    template: dict[str, Any],
) -> None:
    """For every drain timeout: ECS stop timeout > drain ≥ target deregistration delay."""
    values = _drain_values(template)
    assert template["Parameters"]["DrainTimeoutSeconds"]["Default"] in values
    for drain in values:
        resolver = Resolver(template, {**PARAMETERS, "DrainTimeoutSeconds": drain})
        container = _container(resolver)
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert env["KVS_INGEST_DRAIN_TIMEOUT_SECONDS"] == drain
        stop = int(container["StopTimeout"])
        assert int(drain) < stop <= 120  # Fargate's maximum stop timeout
        attrs = _attributes(resolver.properties("TargetGroup")["TargetGroupAttributes"])
        assert 0 < int(attrs["deregistration_delay.timeout_seconds"]) <= int(drain)


def _attributes(items: list[dict[str, Any]]) -> dict[str, str]:
    return {item["Key"]: str(item["Value"]) for item in items}


def test_load_balancer_serves_wss_with_readiness_stickiness_and_long_idle(
    resolver: Resolver, template: dict[str, Any]
) -> None:
    """HTTPS listener with the ACM certificate, HTTP redirects, /readyz check, sticky, long idle."""
    group = resolver.properties("TargetGroup")
    assert group["HealthCheckPath"] == "/readyz"
    assert group["TargetType"] == "ip" and int(group["Port"]) == 8080
    attrs = _attributes(group["TargetGroupAttributes"])
    assert attrs["stickiness.enabled"] == "true"
    assert attrs["stickiness.type"] == "lb_cookie"
    assert int(attrs["stickiness.lb_cookie.duration_seconds"]) >= 3600

    lb_attrs = _attributes(resolver.properties("LoadBalancer")["LoadBalancerAttributes"])
    idle = int(lb_attrs["idle_timeout.timeout_seconds"])
    assert idle >= 3600  # the default; the parameter refuses less than 300 s
    assert int(template["Parameters"]["IdleTimeoutSeconds"]["MinValue"]) >= 300

    https = resolver.properties("HttpsListener")
    assert (https["Protocol"], int(https["Port"])) == ("HTTPS", 443)
    assert https["Certificates"] == [{"CertificateArn": resolver.values["CertificateArn"]}]
    assert https["DefaultActions"][0]["TargetGroupArn"] == "TargetGroup.Ref"
    http = resolver.properties("HttpListener")
    redirect = http["DefaultActions"][0]
    assert redirect["Type"] == "redirect"
    assert redirect["RedirectConfig"]["Protocol"] == "HTTPS"
    assert redirect["RedirectConfig"]["StatusCode"] == "HTTP_301"


def test_container_has_health_check_init_nofile_awslogs_and_read_only_root(
    resolver: Resolver,
) -> None:
    """The container probes /healthz, runs an init, raises nofile, logs JSON to awslogs."""
    container = _container(resolver)
    assert container["HealthCheck"]["Command"] == [
        "CMD",
        "python",
        "/usr/local/bin/kvs-ingest-healthcheck",
    ]
    assert container["LinuxParameters"]["InitProcessEnabled"] is True
    (nofile,) = [u for u in container["Ulimits"] if u["Name"] == "nofile"]
    assert int(nofile["SoftLimit"]) >= 65536 and int(nofile["HardLimit"]) >= 65536
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["KVS_INGEST_LOG_FORMAT"] == "json"
    assert env["KVS_INGEST_KVS_BACKEND"] == "aws"
    assert env["KVS_INGEST_AUTH_MODE"] == "hs256"
    assert container["ReadonlyRootFilesystem"] is True
    assert {m["ContainerPath"] for m in container["MountPoints"]} == {"/tmp"}


def test_service_rolls_back_and_scales_on_connections_and_cpu(resolver: Resolver) -> None:
    """Circuit breaker with rollback; target tracking on connections per task and on CPU."""
    service = resolver.properties("Service")
    breaker = service["DeploymentConfiguration"]["DeploymentCircuitBreaker"]
    assert breaker == {"Enable": True, "Rollback": True}
    assert service["LoadBalancers"][0]["ContainerPort"] == 8080
    cpu = resolver.properties("CpuScalingPolicy")["TargetTrackingScalingPolicyConfiguration"]
    assert cpu["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "ECSServiceAverageCPUUtilization"
    )
    conns = resolver.properties("ConnectionsScalingPolicy")
    metrics = conns["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    names = {
        m["MetricStat"]["Metric"]["MetricName"] for m in metrics["Metrics"] if "MetricStat" in m
    }
    assert names == {"ActiveConnectionCount", "RunningTaskCount"}
    returned = [m for m in metrics["Metrics"] if m["ReturnData"] is True]
    assert len(returned) == 1 and "/" in returned[0]["Expression"]


def test_outputs_give_the_wss_url(resolver: Resolver) -> None:
    """The stack's output is the wss:// URL speakers use, on the certificate's domain."""
    outputs = resolver.resolve(resolver.template["Outputs"])
    assert outputs["SpeakerUrl"]["Value"] == (
        "wss://ingest.example.com/v1/sessions/{session_id}/speaker"
    )
