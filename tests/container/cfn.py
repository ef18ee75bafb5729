"""Reading deploy/ecs's CloudFormation template the way CloudFormation would, for the tests.

`resolve` evaluates the intrinsic functions the template uses (Ref, Sub, FindInMap, GetAtt, If,
Select, Join) against chosen parameter values, so a resource's properties can be compared with an
AWS API's input shape. `to_api` turns CloudFormation's PascalCase properties into the API's
members guided by a botocore shape, converting "10" to 10 where the API wants an integer
(CloudFormation does the same), and refuses any property the API does not have.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from botocore.model import Shape

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "ecs" / "kvs-ingest.yaml"

# Example values for the template's required parameters (defaults fill the rest).
PARAMETERS = {
    "VpcId": "vpc-0123456789abcdef0",
    "PublicSubnetIds": ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"],
    "TaskSubnetIds": ["subnet-0bbbbbbbbbbbbbbb1", "subnet-0bbbbbbbbbbbbbbb2"],
    "DomainName": "ingest.example.com",
    "CertificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/abcd-1234",
    "ImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/kvs-ingest:1.0.0",
    "AuthSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:kvs-ingest-auth-AbCdEf",
}
PSEUDO = {
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::StackName": "kvs-ingest",
    "AWS::URLSuffix": "amazonaws.com",
}
NO_VALUE = object()


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    template: dict[str, Any] = cfn_yaml.load(str(path))
    return template


class Resolver:
    """Evaluates intrinsic functions for one set of parameter values."""

    def __init__(self, template: dict[str, Any], parameters: dict[str, Any] | None = None) -> None:
        self.template = template
        values: dict[str, Any] = {}
        for name, spec in template.get("Parameters", {}).items():
            if "Default" in spec:
                values[name] = spec["Default"]
        values.update(PARAMETERS if parameters is None else parameters)
        self.values = {**values, **PSEUDO}
        self.conditions = {
            name: self.condition(expr) for name, expr in template.get("Conditions", {}).items()
        }

    def condition(self, expr: Any) -> bool:
        if isinstance(expr, dict) and len(expr) == 1:
            ((fn, args),) = expr.items()
            if fn == "Fn::Equals":
                return bool(self.resolve(args[0]) == self.resolve(args[1]))
            if fn == "Fn::Not":
                return not self.condition(args[0])
            if fn == "Fn::And":
                return all(self.condition(a) for a in args)
            if fn == "Fn::Or":
                return any(self.condition(a) for a in args)
            if fn == "Condition":
                return self.conditions[args]
        raise ValueError(f"unsupported condition {expr!r}")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, args),) = value.items()
            if key == "Ref":
                return self._ref(args)
            if key == "Fn::Sub":
                return self._sub(args)
            if key == "Fn::FindInMap":
                name, top, second = (self.resolve(a) for a in args)
                return self.template["Mappings"][name][str(top)][second]
            if key == "Fn::GetAtt":
                resource, attribute = args if isinstance(args, list) else args.split(".", 1)
                return f"{resource}.{attribute}"
            if key == "Fn::If":
                name, then, otherwise = args
                return self.resolve(then if self.conditions[name] else otherwise)
            if key == "Fn::Select":
                return self.resolve(args[1])[int(self.resolve(args[0]))]
            if key == "Fn::Join":
                return str(args[0]).join(str(v) for v in self.resolve(args[1]))
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.values:
            return self.values[name]
        if name in self.template["Resources"]:
            return f"{name}.Ref"
        raise KeyError(f"Ref to unknown {name}")

    def _sub(self, args: Any) -> str:
        text, extra = (args, {}) if isinstance(args, str) else (args[0], args[1])
        extra = {k: self.resolve(v) for k, v in extra.items()}

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in extra:
                return str(extra[name])
            if "." in name and name.split(".", 1)[0] in self.template["Resources"]:
                return name
            return str(self._ref(name))

        return re.sub(r"\$\{([^!}][^}]*)\}", one, text)

    def properties(self, logical_id: str) -> dict[str, Any]:
        resource = self.template["Resources"][logical_id]
        props: dict[str, Any] = self.resolve(resource.get("Properties", {}))
        return props


def to_api(value: Any, shape: Shape, path: str = "") -> Any:
    """CloudFormation properties → API parameters for `shape`; ValueError on any mismatch."""
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a structure, got {value!r}")
        members = {name.lower(): name for name in shape.members}
        out = {}
        for key, item in value.items():
            member = members.get(key.lower())
            if member is None:
                raise ValueError(f"{path}.{key}: not a member of {shape.name}")
            out[member] = to_api(item, shape.members[member], f"{path}.{key}")
        return out
    if kind == "list":
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        return [to_api(v, shape.member, f"{path}[{i}]") for i, v in enumerate(value)]  # type: ignore[attr-defined]
    if kind == "map":
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a map, got {value!r}")
        return {k: to_api(v, shape.value, f"{path}.{k}") for k, v in value.items()}  # type: ignore[attr-defined]
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not re.fullmatch(r"-?[0-9]+", str(value)):
            raise ValueError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ValueError(f"{path}: expected a boolean, got {value!r}")
    if kind == "string":
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"{path}: expected a string, got {value!r}")
        text = str(value)
        enum = shape.enum
        if enum and text not in enum:
            raise ValueError(f"{path}: {text!r} is not one of {enum}")
        return text
    return value
